"""Methods from the user's own code: a policy loss and an advantage estimator registered in a file outside the
package, listed under ``imports:``, are selected by name from YAML and used by a real fit through ``cli.py``;
an unknown name fails before any model loads, naming the key and the known names.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from echorl_lightning.cli import main
from echorl_lightning.config_checks import ConfigError
from tests.helpers.cli_runs import demo_args, run_cli

pytestmark = pytest.mark.usefixtures("plain_argv")  # main(args=...) sees no pytest arguments

USER_FILE = '''
"""A user's own methods: each call appends one line to a marker file beside this file."""

import json
from pathlib import Path

from echorl_lightning.algorithms import register_advantage, register_policy_loss
from echorl_lightning.algorithms.advantages import grpo_advantage
from echorl_lightning.algorithms.policy_loss import ppo_clip_loss

MARKS = Path(__file__).with_name("marks.jsonl")


def _mark(name, shape):
    with MARKS.open("a") as f:
        f.write(json.dumps({"name": name, "shape": list(shape)}) + "\\n")


@register_advantage("my_adv")
def my_adv(rewards):
    _mark("my_adv", rewards.shape)
    return grpo_advantage(rewards)


@register_policy_loss("my_loss")
def my_loss(logp, old_logp, advantages, response_mask, clip_low, clip_high, **kw):
    _mark("my_loss", logp.shape)
    return ppo_clip_loss(logp, old_logp, advantages, response_mask, clip_low, clip_high, **kw)
'''


@pytest.mark.slow
def test_user_methods_are_selected_from_yaml_and_used(tmp_path: Path) -> None:
    (tmp_path / "my_methods.py").write_text(USER_FILE)
    (tmp_path / "mine.yaml").write_text(
        textwrap.dedent(f"""\
        imports: [{tmp_path / "my_methods.py"}]
        model:
          init_args:
            algorithm:
              adv_estimator: my_adv
              policy_loss: my_loss
        """)
    )
    run_cli(
        "fit",
        "--config",
        "configs/demo.yaml",
        "--config",
        str(tmp_path / "mine.yaml"),
        "--trainer.max_epochs=1",
        "--rollout.prompts_per_epoch=8",
        "--rollout.group_size=2",
        "--rollout.max_new_tokens=16",
        "--trainer.accumulate_grad_batches=1",  # one micro-batch: the loss sees all N rows at once
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
        "--trainer.callbacks=[]",
    )
    marks = [json.loads(line) for line in (tmp_path / "marks.jsonl").read_text().splitlines()]
    assert {"name": "my_adv", "shape": [8, 2]} in marks  # B = 8 prompts, G = 2
    assert any(m["name"] == "my_loss" and m["shape"][0] == 16 for m in marks)  # N = 16 rows


@pytest.mark.usefixtures("no_weights")
def test_unknown_name_fails_before_loading_naming_key_and_known_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        main(demo_args(tmp_path, "--model.init_args.algorithm.policy_loss=my_loss"), run=True)
    assert (
        "model.init_args.algorithm.policy_loss='my_loss': unknown policy loss; known: gspo, luffy, ppo_clip"
        in (str(err.value))
    )


@pytest.mark.usefixtures("no_weights")
def test_a_missing_import_names_the_entry(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"imports\[0\]='.*nothing\.py': no such file"):
        main(demo_args(tmp_path, f"--imports=[{tmp_path / 'nothing.py'}]"), run=True)
