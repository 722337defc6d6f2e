"""Config checks before any model is loaded (issue 11 item 3), and the ``rollout`` config group (issue 13).

The table-driven test runs each bad value through ``echorl_lightning.cli.main`` in-process, with
``echorl_lightning.module.load_policy`` replaced by a function that fails the test: the error must name the
full key and the accepted values, and come before any weight is loaded.
"""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import pytest
from echorl_lightning.callbacks.failure_report import FailureReport
from echorl_lightning.callbacks.rollout import RolloutCallback
from lightning.pytorch.callbacks import ModelCheckpoint

from echorl_lightning.bounds import number_problem
from echorl_lightning.cli import main, resumed_version
from echorl_lightning.config_checks import ConfigError, check_rollout, model_path_problem, world_size
from echorl_lightning.training.config import AlgorithmOverrides, EchoConfig, EvalConfig
from tests.helpers.cli_runs import demo_args
from tests.helpers.paths import ROOT

pytestmark = pytest.mark.usefixtures("plain_argv")  # main(args=...) sees no pytest arguments


BAD = [
    # (override, the key the message must name, text naming the accepted values)
    ("--model.init_args.echo.coef=.nan", "model.init_args.echo.coef=nan", "finite number >= 0"),
    ("--model.init_args.echo.coef=.inf", "model.init_args.echo.coef=inf", "finite number >= 0"),
    ("--model.init_args.echo.coef=-0.1", "model.init_args.echo.coef=-0.1", "finite number >= 0"),
    ("--model.init_args.lr=-1", "model.init_args.lr=-1.0", "finite number > 0"),
    ("--model.init_args.lr=.nan", "model.init_args.lr=nan", "finite number > 0"),
    ("--model.init_args.weight_decay=-0.01", "model.init_args.weight_decay=-0.01", ">= 0"),
    ("--model.init_args.algorithm.kl_coef=-1", "model.init_args.algorithm.kl_coef=-1.0", ">= 0"),
    ("--model.init_args.algorithm.clip_high=-0.1", "model.init_args.algorithm.clip_high=-0.1", ">= 0"),
    ("--model.init_args.algorithm.clip_low=1", "model.init_args.algorithm.clip_low=1.0", ">= 0 and < 1"),
    ("--model.init_args.method=nope", "model.init_args.method='nope'", "known: dapo, dr_grpo, grpo"),
    ("--model.init_args.eval.n=0", "model.init_args.eval.n=0", "integer >= 1"),
    ("--model.init_args.eval.top_p=1.5", "model.init_args.eval.top_p=1.5", "> 0 and <= 1"),
    ("--model.init_args.eval.temperature=.nan", "model.init_args.eval.temperature=nan", ">= 0"),
    ("--rollout.temperature=0", "rollout.temperature=0.0", "> 0"),
    ("--rollout.top_p=0", "rollout.top_p=0.0", "> 0 and <= 1"),
    ("--rollout.group_size=1", "rollout.group_size=1", "integer >= 2"),
    ("--trainer.max_epochs=0", "trainer.max_epochs=0", "must be >= 1 for fit"),
    (
        "--model.init_args.model=no/such/folder",
        "model.init_args.model='no/such/folder'",
        "hub id of the form",
    ),
    (
        "--model.init_args.model=./missing-model",
        "model.init_args.model='./missing-model'",
        "existing model folder",
    ),
    (
        "--model.init_args.model=nobody-xyz/not-cached",
        "model.init_args.model='nobody-xyz/not-cached'",
        "local hub cache",
    ),
    ("--rollout.num_minibatches=3", "rollout.num_minibatches=3", "must divide the 512 rollout rows"),
    (
        "--trainer.accumulate_grad_batches=3",
        "trainer.accumulate_grad_batches=3",
        "must divide the 512 rollout",
    ),
]


@pytest.mark.parametrize(("override", "key", "accepted"), BAD, ids=[row[1] for row in BAD])
def test_bad_value_fails_before_loading(
    override: str, key: str, accepted: str, tmp_path: Path, no_weights: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError) as err:
        main(demo_args(tmp_path, override), run=True)
    assert key in str(err.value) and accepted in str(err.value), str(err.value)


def test_nan_from_a_yaml_file_and_several_problems_at_once(tmp_path: Path, no_weights: None) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    echo:\n      coef: .nan\n    lr: .inf\n")
    with pytest.raises(ConfigError) as err:
        main(demo_args(tmp_path, "--config", str(bad), "--rollout.group_size=1"), run=True)
    lines = str(err.value).splitlines()
    assert lines[0] == "invalid config:"
    assert len(lines) == 4, lines  # echo.coef, lr, group_size: each on its own line
    assert "model.init_args.echo.coef=nan" in str(err.value) and "model.init_args.lr=inf" in str(err.value)


def test_devices_must_divide_prompts(tmp_path: Path, no_weights: None) -> None:
    with pytest.raises(ConfigError, match=r"rollout.prompts_per_epoch=6: must be divisible by .* = 4"):
        main(demo_args(tmp_path, "--rollout.prompts_per_epoch=6", "--trainer.devices=4"), run=True)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_missing_engine_package_names_the_install_command(tmp_path: Path, no_weights: None) -> None:
    engine = "--model.init_args.engine=echorl_lightning.rollout.vllm_engine.VLLMEngine"
    with pytest.raises(
        ConfigError, match=r"model.init_args.engine=.*VLLMEngine: needs the .vllm. package.*\.\[vllm\]"
    ):
        main(demo_args(tmp_path, engine), run=True)


def test_old_style_rollout_callback_is_refused(tmp_path: Path, no_weights: None) -> None:
    old = '[{"class_path": "echorl_lightning.callbacks.rollout.RolloutCallback", "init_args": {"prompts_per_epoch": 8}}]'
    with pytest.raises(
        ConfigError, match=r"trainer.callbacks\[0\]: the RolloutCallback is the `rollout:` config group"
    ):
        main(demo_args(tmp_path, f"--trainer.callbacks={old}"), run=True)


def test_rollout_group_overrides_and_callback_lists(tmp_path: Path) -> None:
    cli = main(demo_args(tmp_path, "--rollout.prompts_per_epoch=8", "--rollout.group_size=4")[1:], run=False)
    rollout = [cb for cb in cli.trainer.callbacks if isinstance(cb, RolloutCallback)]
    assert len(rollout) == 1 and (rollout[0].settings.prompts_per_epoch, rollout[0].settings.group_size) == (
        8,
        4,
    )
    assert sum(isinstance(cb, FailureReport) for cb in cli.trainer.callbacks) == 1
    ckpt = [cb for cb in cli.trainer.callbacks if isinstance(cb, ModelCheckpoint)]
    assert [cb.dirpath for cb in ckpt] == [str(tmp_path / "ckpt")]  # the config's, not Lightning's default
    # the SFT warm-start takes no rollouts: no rollout callback is added
    sft = main(
        [
            "--config",
            str(ROOT / "configs/warmstart_sft.yaml"),
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        run=False,
    )
    assert not any(isinstance(cb, RolloutCallback) for cb in sft.trainer.callbacks)


def test_number_problem_bounds() -> None:
    assert number_problem("k", 0.0, low=0) is None  # 0 >= 0
    assert number_problem("k", 0.0, low=0, low_open=True) == "k=0.0: must be a finite number > 0"
    assert number_problem("k", 1.0, low=0, low_open=True, high=1) is None  # top_p = 1 allowed
    assert number_problem("k", math.nan, low=0) == "k=nan: must be a finite number >= 0"  # nan < 0 is False
    assert number_problem("k", -math.inf) == "k=-inf: must be a finite number"
    assert number_problem("k", True, low=0) == "k=True: must be a finite number >= 0"
    assert number_problem("k", None, low=0, optional=True) is None


def test_world_size_and_row_division() -> None:
    assert world_size({"devices": 2, "num_nodes": 3}) == 6
    assert world_size({"devices": [0, 1, 2]}) == 3
    assert world_size({"devices": "0,1"}) == 2
    assert world_size({"devices": "auto"}) is None and world_size({"devices": -1}) is None
    # 8 prompts / 2 ranks x 4 rollouts = 16 rows per rank; 2 mini-batches x 4 accumulation = 8 divides 16
    ok = check_rollout(
        {"prompts_per_epoch": 8, "group_size": 4, "num_minibatches": 2},
        {"method": "grpo"},
        {"devices": 2, "accumulate_grad_batches": 4},
    )
    assert ok == []
    # LUFFY adds the expert row: 4 prompts x (4 + 1) = 20 rows; 8 micro-batches do not divide 20
    bad = check_rollout(
        {"prompts_per_epoch": 4, "group_size": 4, "num_minibatches": 2},
        {"method": "luffy"},
        {"devices": 1, "accumulate_grad_batches": 4},
    )
    assert len(bad) == 1 and "= 8 micro-batches must divide the 20 rollout rows" in bad[0]


def test_model_path_problem(tmp_path: Path) -> None:
    assert model_path_problem("m", str(tmp_path)) is None  # an existing folder
    assert "no such folder" in str(model_path_problem("m", str(tmp_path / "gone")))
    assert model_path_problem("m", None) is None


def test_resumed_version_from_record_or_path(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    assert resumed_version("last", [ckpt_dir]) is None  # no record yet: a new version
    (ckpt_dir / "run.json").write_text('{"version": 3}')
    assert resumed_version("last", [ckpt_dir]) == 3
    assert resumed_version(str(ckpt_dir / "epoch=4.ckpt"), []) == 3
    inferred = tmp_path / "tb" / "version_7" / "checkpoints" / "last.ckpt"
    assert resumed_version(str(inferred), []) == 7  # Lightning's default checkpoint folder


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: EchoConfig(coef=math.nan), "model.init_args.echo.coef=nan: must be a finite number >= 0"),
        (
            lambda: EchoConfig(min_step_tokens=0),
            "model.init_args.echo.min_step_tokens=0: must be an integer >= 1",
        ),
        (lambda: EvalConfig(n=0), "model.init_args.eval.n=0: must be an integer >= 1"),
        (
            lambda: EvalConfig(top_p=0.0),
            "model.init_args.eval.top_p=0.0: must be a finite number > 0 and <= 1",
        ),
        (lambda: AlgorithmOverrides(kl_coef=math.inf).apply("grpo"), "model.init_args.algorithm.kl_coef=inf"),
        (
            lambda: AlgorithmOverrides(clip_low=-0.1).apply("grpo"),
            "model.init_args.algorithm.clip_low=-0.1: must be a finite number >= 0 and < 1",
        ),
    ],
)
def test_dataclasses_refuse_bad_values_in_python(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build()  # type: ignore[operator]


def test_dataclass_defaults_and_edges_are_accepted() -> None:
    EchoConfig(coef=0.0)  # coef 0 is allowed (no echo term)
    EvalConfig(temperature=0.0, top_p=1.0)  # greedy evaluation
    AlgorithmOverrides(kl_coef=0.0, max_resample_rounds=0).apply("grpo")
    AlgorithmOverrides(clip_low=0.0, clip_high=0.0).apply(
        "grpo"
    )  # eps 0: the ratio clipped at 1 (as verl allows)
