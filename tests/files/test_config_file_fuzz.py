"""Broken YAML configs fail clearly: the fuzz table of the config-file input kind.

Each case breaks a valid run config (tabs, truncation, another encoding, a wrong class path, ...); ``cli.main`` up
to its parse must fail with a last line naming the config file, the line where there is one, and what is wrong,
and change nothing. A config in JSON under a YAML name and a UTF-8 byte-order mark are read; mistakes on the
command line are one line naming the command line. The other input kinds: ``tests/data/test_data_file_fuzz.py``,
``tests/files/test_model_folder_fuzz.py``; through ``cli.py``: ``tests/e2e/test_input_fuzz.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from echorl_lightning.cli import main
from echorl_lightning.config_checks import ConfigError
from echorl_lightning.tiny import TINY_MODEL_PATH
from tests.helpers.input_files import GARBAGE, base_yaml, jsonl_text, line_of, snapshot

pytestmark = pytest.mark.usefixtures("plain_argv")  # main(args=...) sees no pytest arguments


# ---- YAML configs ---------------------------------------------------------------------------------------------
def replaced(old: str, new: str) -> Callable[[str], str]:
    return lambda text: text.replace(old, new, 1)


# breakage -> (the broken config's text from the valid one, as bytes; the line named (None: no line); the text)
YAML_FAILS: dict[str, tuple[Callable[[str], bytes], str | None, str]] = {
    "truncated inside a flow mapping": (
        lambda t: t[: t.index("rollout:") + 30].encode(),
        "rollout:",
        "not YAML: expected ',' or '}', but got '<stream end>'",
    ),
    "truncated after the trainer": (
        lambda t: t[: t.index("rollout:")].encode(),
        None,
        "no data, model given; required for fit",
    ),
    "a tab in the indentation": (
        lambda t: replaced("  accelerator: cpu", "\taccelerator: cpu")(t).encode(),
        "accelerator: cpu",
        "column 1: a tab character; YAML indents with spaces, never tabs",
    ),
    "a string where a float belongs": (
        lambda t: replaced("lr: 1.0e-5", "lr: fast")(t).encode(),
        "lr: fast",
        "model.init_args.lr='fast': expected float",
    ),
    "a string where an int belongs": (
        lambda t: replaced("group_size: 2", "group_size: two")(t).encode(),
        "rollout:",
        "rollout.group_size='two': expected int",
    ),
    "a method that does not exist": (
        lambda t: replaced("    lr: 1.0e-5", "    lr: 1.0e-5\n    method: grpoo")(t).encode(),
        "method: grpoo",
        "model.init_args.method='grpoo': unknown method preset; known: dapo, dr_grpo, grpo, gspo, luffy, "
        "reinforce_pp, rloo (did you mean 'grpo'?)",
    ),
    "a value out of range": (
        lambda t: replaced("group_size: 2", "group_size: 1")(t).encode(),
        "rollout:",
        "rollout.group_size=1: must be an integer >= 2",
    ),
    "a misspelt key": (
        lambda t: replaced("prompts_per_epoch: 4", "prompt_per_epoch: 4")(t).encode(),
        "rollout:",
        "rollout.prompt_per_epoch is not a config key (did you mean 'rollout.prompts_per_epoch'?)",
    ),
    "a key the class does not take": (
        lambda t: replaced("    lr: 1.0e-5", "    learning_rate: 1.0e-5")(t).encode(),
        "learning_rate:",
        "model.init_args.learning_rate is not a config key (accepted: model, tokenizer, dtype",
    ),
    "a misspelt group": (
        lambda t: replaced("\nmodel:\n", "\nmodle:\n")(t).encode(),
        "eval: {n: 1",  # jsonargparse names the first key under it
        "modle.init_args.eval.n is not a config key (did you mean 'model'?)",
    ),
    "a class_path that does not import": (
        lambda t: replaced("module.EchoRLModule", "module.EchoRLModul")(t).encode(),
        "class_path: echorl_lightning.module.EchoRLModul",
        "model.class_path='echorl_lightning.module.EchoRLModul': module 'echorl_lightning.module' has no attribute",
    ),
    "an instruction without its placeholder": (
        lambda t: replaced('"Q: {prompt}"', '"Q: {question}"')(t).encode(),
        "data:",
        "data: HubPromptDataModule could not be built: ValueError: instruction must contain the '{prompt}' "
        "placeholder, got 'Q: {question}'",
    ),
    "binary garbage": (lambda t: GARBAGE, None, "binary data, not text"),
    "Latin-1": (
        lambda t: replaced('"Q: {prompt}"', '"Qué: {prompt}"')(t).encode("latin-1"),
        "Qu",
        "column 21: byte 0xe9 is not UTF-8",
    ),
    "UTF-16": (
        lambda t: t.encode("utf-16"),
        None,
        "UTF-16 or UTF-32 text (it starts with a byte-order mark)",
    ),
    "empty": (lambda t: b"# nothing yet\n", None, "is empty: a config is a YAML mapping of keys"),
    "a list at the top": (lambda t: b"- trainer\n- model\n", None, "a YAML list at the top level"),
    "a model's config.json under .yaml": (
        lambda t: (Path(TINY_MODEL_PATH) / "config.json").read_bytes(),
        None,
        "is not a config key (the keys at the top are ckpt_path, data,",
    ),
}


@pytest.mark.usefixtures("no_weights")
@pytest.mark.parametrize("breakage", list(YAML_FAILS))
def test_yaml_config_breakage_is_named(tmp_path: Path, breakage: str) -> None:
    make, needle, expected = YAML_FAILS[breakage]
    data = tmp_path / "train.jsonl"
    data.write_text(jsonl_text())
    text = base_yaml(tmp_path, data)
    config = tmp_path / "run.yaml"
    config.write_bytes(make(text))
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError) as info:
        main(["fit", "--config", str(config)])
    last = str(info.value).splitlines()[-1]
    broken = config.read_bytes().decode("utf-8", errors="replace")
    where = f"config file {str(config)!r}" + (f", line {line_of(broken, needle)}" if needle else "")
    assert where in last and expected in last, last
    assert snapshot(tmp_path) == before


def test_a_config_in_json_under_yaml_and_a_utf8_bom_are_read(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import yaml

    data = tmp_path / "train.jsonl"
    data.write_text(jsonl_text())
    text = base_yaml(tmp_path, data)
    for name, content in (
        ("as_json.yaml", json.dumps(yaml.safe_load(text), indent=2).encode()),
        ("bom.yaml", b"\xef\xbb\xbf" + text.encode()),
    ):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(SystemExit) as done:
            main(["fit", "--config", str(tmp_path / name), "--print_config"])
        assert done.value.code in (0, None)
        assert "EchoRLModule" in capsys.readouterr().out


def test_command_line_mistakes_are_one_line_naming_the_command_line(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(jsonl_text())
    (tmp_path / "run.yaml").write_text(base_yaml(tmp_path, data))
    cases = [
        (["fit"], "the command line: no data, model given; required for fit: give --config <file>.yaml"),
        (
            ["fit", "--config", str(tmp_path / "run.yaml"), "--nonsense=1"],
            "the command line: unrecognized arguments: --nonsense=1 (--help lists the options)",
        ),
        (
            ["fit", "--config", str(tmp_path / "run.yaml"), "--rollout.group_size=x"],
            "the command line: rollout.group_size='x': expected int",
        ),
    ]
    for args, expected in cases:
        with pytest.raises(ConfigError) as info:
            main(args)
        assert str(info.value) == expected
