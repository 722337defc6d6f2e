"""The data layer through a real LightningCLI parse (``echorl_lightning.cli.main(args=..., run=False)``):
a verifier written as a plain function, grouped evaluation options from YAML, and ``check_data`` run after
``connect`` the way the CLI is meant to call it. Rows are made up.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from echorl_lightning.cli import main  # noqa: E402
from echorl_lightning.config_checks import ConfigError  # noqa: E402
from echorl_lightning.data.hub import HubEvalOptions, HubPromptDataModule, HubSplit  # noqa: E402
from echorl_lightning.rewards.multiple_choice import MultipleChoiceVerifier  # noqa: E402
from echorl_lightning.tiny import TINY_MODEL_PATH  # noqa: E402


def plain_verifier(completions, references):  # no type hints on purpose: README promises any callable works
    """1.0 where the completion ends with its reference."""
    return [1.0 if c.strip().endswith(r) else 0.0 for c, r in zip(completions, references, strict=True)]


class LooseVerifier:
    """A verifier class whose ``__call__`` has no type hints either."""

    def __init__(self, score: float = 0.5) -> None:
        self.score = score

    def __call__(self, completions, references):
        return [self.score] * len(completions)


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _config(tmp_path: Path, verifier: str) -> str:
    train = _jsonl(
        tmp_path / "train.jsonl",
        [{"question": "What is 2+3?", "answer": "5"}, {"question": "x" * 80, "answer": "1"}],
    )
    val = _jsonl(tmp_path / "val.jsonl", [{"problem": "What is 3*3?", "solution": "so \\boxed{9}"}])
    math500 = _jsonl(
        tmp_path / "m.jsonl",
        [{"problem": f"What is {i}+{i}?", "answer": str(2 * i), "solution": "add"} for i in range(4)],
    )
    config = tmp_path / "data.yaml"
    config.write_text(
        f"""
trainer:
  accelerator: cpu
  devices: 1
  logger: false
  enable_checkpointing: false
  default_root_dir: {tmp_path}
model:
  class_path: echorl_lightning.module.EchoRLModule
  init_args:
    model: {TINY_MODEL_PATH}
data:
  class_path: echorl_lightning.data.hub.HubPromptDataModule
  init_args:
    path: {train}
    prompt_column: question
    answer_column: answer
    instruction: "Q: {{prompt}}"
    use_chat_template: false
    cache_dir: {tmp_path / "cache"}
    verifier: {verifier}
    max_prompt_tokens: 40
    eval:
      sets: [math500]
      paths: {{math500: {math500}}}
      max_samples: 2
      val:
        split: test
        path: {val}
        prompt_column: problem
        answer_column: solution
        answer_format: boxed
"""
    )
    return str(config)


def test_plain_function_verifier_and_grouped_eval_options_from_yaml(tmp_path: Path) -> None:
    cli = main(args=["--config", _config(tmp_path, "tests.e2e.test_data_cli.plain_verifier")], run=False)
    dm = cli.datamodule
    assert isinstance(dm, HubPromptDataModule)
    # the plain function itself (pytest may import this file under another module name: compare by name)
    assert dm.verifier.__name__ == "plain_verifier" and not isinstance(dm.verifier, type)
    assert dm.verifier(["... 5", "... 6"], ["5", "5"]) == [1.0, 0.0]
    assert dm.eval_options == HubEvalOptions(
        sets=["math500"],
        paths={"math500": str(tmp_path / "m.jsonl")},
        max_samples=2,
        val=HubSplit(
            split="test",
            path=str(tmp_path / "val.jsonl"),
            prompt_column="problem",
            answer_column="solution",
            answer_format="boxed",
        ),
    )
    dm.connect(cli.model.tokenizer)  # what the CLI does, then check_data before any weights are needed
    counts = dm.check_data(max_prompt_tokens=1000)  # the init arg (40) wins
    # train: "Q: " + 80 x's = 83 byte tokens > 40: skipped; val 1 row, math500 first 2 rows (max_samples)
    assert counts["data/skipped_too_long"] == 1 and counts["data/train_prompts"] == 1
    assert counts["data/eval_prompts"] == 1 + 2
    assert [s.name for s in dm.eval_sets()] == ["val", "math500"]
    assert dm.eval_sets()[0].prompts[0].reference == "9"


@pytest.mark.parametrize(
    "verifier, expected",
    [
        ("tests.e2e.test_data_cli.LooseVerifier", 0.5),  # a class path alone: instantiated with defaults
        ("{class_path: tests.e2e.test_data_cli.LooseVerifier, init_args: {score: 0.25}}", 0.25),
    ],
)
def test_loose_verifier_classes_are_accepted(tmp_path: Path, verifier: str, expected: float) -> None:
    dm = main(args=["--config", _config(tmp_path, verifier)], run=False).datamodule
    assert type(dm.verifier).__name__ == "LooseVerifier" and dm.verifier(["a"], ["b"]) == [expected]


def test_typed_verifier_class_and_unknown_paths(tmp_path: Path) -> None:
    config = _config(tmp_path, "echorl_lightning.rewards.multiple_choice.MultipleChoiceVerifier")
    assert isinstance(main(args=["--config", config], run=False).datamodule.verifier, MultipleChoiceVerifier)
    with pytest.raises(
        ConfigError, match=r"data.yaml', line \d+: data.init_args.verifier: .*no_such_verifier"
    ):
        main(args=["--config", _config(tmp_path, "tests.e2e.test_data_cli.no_such_verifier")], run=False)
