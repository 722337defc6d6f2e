"""``PromptDataModule.check_data``: every set loaded before a model is, prompts over the token limit dropped,
counted (``data/skipped_rows``) and logged, and unusable data rejected with the file or set named.

The tokenizer is the project's byte-level one (one token per UTF-8 byte, no chat template), so a prompt's
token count is its byte length: the limits below are checked by counting characters. Rows are made up.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402

import datasets  # noqa: E402
import pytest  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from echorl_lightning.data.base import prompt_token_counts, skip_counts  # noqa: E402
from echorl_lightning.data.hub import HubEvalOptions, HubPromptDataModule, HubSplit  # noqa: E402
from echorl_lightning.data.tables import DataSourceError  # noqa: E402
from echorl_lightning.tasks import ProceduralDataModule  # noqa: E402
from echorl_lightning.tasks.arithmetic import ArithmeticTask  # noqa: E402

LONG = "What is " + "1+" * 20 + "1?"  # 8 + 40 + 2 = 50 bytes
TRAIN_ROWS = [
    {"question": "What is 2+3?", "answer": "5"},  # 12 bytes: kept
    {"answer": "7"},  # no question field: a counted skip
    {"question": LONG, "answer": "21"},  # 50 bytes > 20: too long
    {"question": "Half of 8?", "answer": 4},  # 10 bytes: kept, answer 4 -> "4"
]
MATH500_ROWS = [  # MATH-500 schema: problem / answer / solution
    {"problem": "What is 9-7?", "answer": "2", "solution": "9-7=2"},  # kept
    {"problem": "No answer here?", "answer": "", "solution": "none"},  # no reference
    {"problem": LONG, "answer": "21", "solution": "count"},  # too long
]


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _parquet(path: Path, rows: list[dict]) -> str:
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return str(path)


def _hub(tmp_path: Path, **kwargs: object) -> HubPromptDataModule:
    train = _jsonl(tmp_path / "train.jsonl", TRAIN_ROWS)
    math500 = _parquet(tmp_path / "math500.parquet", MATH500_ROWS)
    options = dict(
        path=train,
        prompt_column="question",
        answer_column="answer",
        instruction="{prompt}",  # the prompt is the problem text: tokens == bytes
        use_chat_template=False,
        eval=HubEvalOptions(sets=["math500"], paths={"math500": math500}),
        cache_dir=str(tmp_path / "cache"),
    )
    options.update(kwargs)
    return HubPromptDataModule(**options)  # type: ignore[arg-type]


def test_prompt_token_counts_are_byte_counts(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    # "é" is two UTF-8 bytes; no special tokens are added
    assert prompt_token_counts(tiny_tokenizer, ["abc", "é", ""], batch_size=2) == [3, 2, 0]


def test_skip_counts_hand_computed() -> None:
    counts = skip_counts({"train": {"no_prompt": 1, "too_long": 2}, "math500": {"no_reference": 1}}, 5, 3)
    # 1 + 2 + 1 = 4 rows left out, 2 of them over the limit
    assert counts == {
        "data/skipped_rows": 4,
        "data/skipped_too_long": 2,
        "data/train_prompts": 5,
        "data/eval_prompts": 3,
        "data/skipped_rows/math500": 1,
        "data/skipped_rows/train": 3,
    }


def test_check_data_drops_long_prompts_counts_and_logs(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast, caplog: pytest.LogCaptureFixture
) -> None:
    dm = _hub(tmp_path)
    dm.connect(tiny_tokenizer)
    with caplog.at_level(logging.WARNING, logger="echorl_lightning.data.rows"):
        counts = dm.check_data(max_prompt_tokens=20)
    # train: 4 rows -> 1 no prompt, 1 too long (50 > 20), 2 kept; math500: 3 rows -> 1 no reference,
    # 1 too long, 1 kept. Left out: 2 + 2 = 4, of which 2 too long.
    assert counts == {
        "data/skipped_rows": 4,
        "data/skipped_too_long": 2,
        "data/train_prompts": 2,
        "data/eval_prompts": 1,
        "data/skipped_rows/math500": 2,
        "data/skipped_rows/train": 2,
    }
    assert dm.skipped_counts == counts
    assert [p.prompt for p in dm.train_prompts] == ["What is 2+3?", "Half of 8?"]
    assert [p.reference for p in dm.train_prompts] == ["5", "4"]
    (math500,) = dm.eval_sets()
    assert [p.uid for p in math500.prompts] == ["math500/0"]
    long_lines = [m for m in caplog.messages if "over the limit" in m]
    assert long_lines == [
        f"train from file '{tmp_path / 'train.jsonl'}' (split 'train'): skipped 1 of 3 rows: 1 with a prompt "
        "over the limit (rows ['train/2']) [max_prompt_tokens=20]",
        f"eval set 'math500' from '{tmp_path / 'math500.parquet'}': skipped 1 of 2 rows: 1 with a "
        "prompt over the limit (rows ['math500/2']) [max_prompt_tokens=20]",
    ]
    # a limit of exactly the longest prompt (50 bytes) keeps it: the bound is inclusive
    assert dm.check_data(max_prompt_tokens=50)["data/skipped_too_long"] == 0
    dm.check_data(max_prompt_tokens=20)
    assert dm.check_data()["data/skipped_too_long"] == 0 and len(dm.train_prompts) == 3  # no limit: all kept


def test_init_arg_overrides_the_argument_and_no_limit_keeps_all(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    dm = _hub(tmp_path, max_prompt_tokens=100)
    dm.connect(tiny_tokenizer)
    assert dm.check_data(max_prompt_tokens=20)["data/skipped_too_long"] == 0  # 100 wins over 20
    assert len(dm.train_prompts) == 3
    unlimited = _hub(tmp_path)
    counts = unlimited.check_data()  # no limit, no tokenizer needed
    assert counts["data/skipped_too_long"] == 0 and counts["data/skipped_rows"] == 2  # 1 no prompt + 1 no ref
    with pytest.raises(ValueError, match="max_prompt_tokens must be >= 1"):
        _hub(tmp_path, max_prompt_tokens=0)


def test_a_limit_without_a_tokenizer_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"max_prompt_tokens=20 needs the tokenizer: call connect"):
        _hub(tmp_path).check_data(max_prompt_tokens=20)


def test_nothing_within_the_limit_names_the_source_and_the_limit(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    dm = _hub(tmp_path)
    dm.connect(tiny_tokenizer)
    with pytest.raises(
        ValueError,
        match=r"file '.*train.jsonl' \(split 'train'\): all 3 prompts are longer than "
        r"max_prompt_tokens=5 tokens \(shortest 10\)",
    ):
        dm.check_data(max_prompt_tokens=5)


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_bad_training_files_fail_at_check_data(tmp_path: Path, kind: str) -> None:
    empty = tmp_path / f"empty.{kind}"
    empty.write_bytes(b"")
    with pytest.raises(
        DataSourceError, match=rf"^train: data file '.*empty.{kind}' \(data.init_args.path\) is empty$"
    ):
        _hub(tmp_path, path=str(empty)).check_data()
    writer = _jsonl if kind == "jsonl" else _parquet
    no_column = writer(tmp_path / f"cols.{kind}", [{"problem": "1+1?", "answer": "2"}])
    with pytest.raises(
        DataSourceError,
        match=r"prompt_column='question': no column 'question' .* available "
        r"columns: \['answer', 'problem'\]",
    ):
        _hub(tmp_path, path=no_column).check_data()
    unusable = writer(
        tmp_path / f"none.{kind}", [{"question": None, "answer": "2"}, {"question": "x", "answer": ""}]
    )
    with pytest.raises(
        DataSourceError, match=rf"train: no usable row in file '.*none.{kind}' \(split 'train'\)"
    ):
        _hub(tmp_path, path=unusable).check_data()


def test_a_non_json_line_in_an_eval_file_fails_at_check_data(tmp_path: Path) -> None:
    bad = tmp_path / "aime.jsonl"
    bad.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?", answer: 4}\n')
    dm = _hub(tmp_path, eval=HubEvalOptions(sets=["aime25"], paths={"aime25": str(bad)}))
    with pytest.raises(
        DataSourceError,
        match=r"^eval set 'aime25': data file '.*aime.jsonl' \(data.init_args.eval.paths.aime25\), line 2: not JSON",
    ):
        dm.check_data()


def test_unreachable_hub_eval_set_names_the_set_and_the_key(tmp_path: Path) -> None:
    dm = _hub(
        tmp_path,
        eval=HubEvalOptions(sets=["math500", "aime24"], paths={"math500": str(tmp_path / "m.jsonl")}),
    )
    _jsonl(tmp_path / "m.jsonl", MATH500_ROWS[:1])
    with pytest.raises(DataSourceError) as info:
        dm.check_data()
    message = str(info.value)
    assert message.startswith(
        "eval set 'aime24': cannot load hub dataset 'HuggingFaceH4/aime_2024' (name=None, split='train'), offline"
    )
    assert message.endswith("; set data.init_args.eval.paths.aime24 to a local file in its schema")


def test_unreachable_hub_training_sets_name_their_keys(tmp_path: Path) -> None:
    with pytest.raises(
        DataSourceError,
        match=r"^train: cannot load hub dataset 'Elliott/Openr1-Math-46k-8192'.*offline.*; set data.init_args.path "
        r"to a local file$",
    ):
        HubPromptDataModule(cache_dir=str(tmp_path / "c")).check_data()
    named = HubPromptDataModule(train_set="gsm8k_train", cache_dir=str(tmp_path / "c"))
    with pytest.raises(
        DataSourceError,
        match=r"^train_set 'gsm8k_train': cannot load hub dataset 'openai/gsm8k'.*; set "
        r"data.init_args.train_set_path to a local file in 'gsm8k_train''s schema$",
    ):
        named.check_data()


def test_validation_split_in_user_columns_is_checked_too(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    val = _jsonl(
        tmp_path / "val.jsonl",
        [{"problem": "3*3?", "solution": "\\boxed{9}"}, {"problem": LONG, "solution": "\\boxed{21}"}],
    )
    dm = _hub(
        tmp_path,
        eval=HubEvalOptions(
            val=HubSplit(
                split="test",
                path=val,
                prompt_column="problem",
                answer_column="solution",
                answer_format="boxed",
            )
        ),
    )
    dm.connect(tiny_tokenizer)
    counts = dm.check_data(max_prompt_tokens=20)
    # val: 2 rows, the 50-byte one too long; train as above (1 no prompt + 1 too long)
    assert counts["data/skipped_rows/val"] == 1 and counts["data/skipped_rows/train"] == 2
    assert [(p.prompt, p.reference) for p in dm.eval_sets()[0].prompts] == [("3*3?", "9")]


def test_base_class_check_runs_for_the_arithmetic_task(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    dm = ProceduralDataModule(ArithmeticTask(), num_train=16, num_val=4)
    dm.connect(tiny_tokenizer)
    longest = max(len(p.prompt.encode()) for p in dm.train_prompts)
    counts = dm.check_data(max_prompt_tokens=longest)  # every procedural prompt fits
    assert counts == {
        "data/skipped_rows": 0,
        "data/skipped_too_long": 0,
        "data/train_prompts": 16,
        "data/eval_prompts": 4,
        "data/skipped_rows/train": 0,
        "data/skipped_rows/val": 0,
    }
    with pytest.raises(
        ValueError,
        match=r"ProceduralDataModule 'train' prompts: all 16 prompts are longer than "
        r"max_prompt_tokens=3 tokens",
    ):
        dm.check_data(max_prompt_tokens=3)


def test_evaluation_stages_do_not_load_training_data(tmp_path: Path) -> None:
    math500 = _jsonl(tmp_path / "m.jsonl", MATH500_ROWS[:1])
    options = HubEvalOptions(sets=["math500"], paths={"math500": math500})
    # the default training source is a hub id, unreachable offline: validate/test never touch it
    on_hub = HubPromptDataModule(eval=options, use_chat_template=False, cache_dir=str(tmp_path / "c"))
    assert on_hub.check_data(stage="validate") == {
        "data/skipped_rows": 0,
        "data/skipped_too_long": 0,
        "data/eval_prompts": 1,
        "data/skipped_rows/math500": 0,
    }
    with pytest.raises(DataSourceError, match="^train: cannot load hub dataset"):
        on_hub.check_data(stage="fit")
    # an evaluation-only datamodule (configs/eval_math.yaml): no training source at all
    eval_only = HubPromptDataModule(path=None, eval=options, use_chat_template=False)
    assert not eval_only.has_train_source() and on_hub.has_train_source()
    assert eval_only.check_data(stage="test")["data/eval_prompts"] == 1
    assert "data/train_prompts" not in eval_only.check_data()  # no stage: what the datamodule has
    with pytest.raises(
        ValueError, match=r"no training prompts: data.init_args.path is null and train_set is not set"
    ):
        eval_only.check_data(stage="fit")
    with pytest.raises(ValueError, match="eval.val.path must be set when path is null"):
        HubPromptDataModule(path=None, eval=HubEvalOptions(val=HubSplit(split="test")))
