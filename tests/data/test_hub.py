"""HubPromptDataModule on small local files in the schemas it targets, and the answer extractors.

Every problem below is made up for these tests; the files follow the column layout of LUFFY's
``Elliott/Openr1-Math-46k-8192`` (verl RL schema), of GSM8K, and of a MATH-like CSV.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
from pathlib import Path  # noqa: E402

import datasets  # noqa: E402
import pytest  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from echorl_lightning.data.answers import extract_boxed, extract_gsm8k  # noqa: E402
from echorl_lightning.data.hub import HubEvalOptions, HubPromptDataModule, HubSplit  # noqa: E402
from echorl_lightning.data.tables import DataSourceError  # noqa: E402
from echorl_lightning.rewards.math_verify import MathVerifier  # noqa: E402

SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."
SYSTEM = "You are a careful solver."  # the file's own system message, which must be dropped


def _openr1_row(problem: str, answer: str, solution: str | None, index: int) -> dict:
    return {
        "data_source": "made_up",
        "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": problem}],
        "target": [] if solution is None else [{"role": "assistant", "content": solution}],
        "ability": "math",
        "reward_model": {"ground_truth": answer, "style": "rule"},
        "extra_info": {"index": index, "split": "train"},
    }


OPENR1_ROWS = [
    _openr1_row(
        "A box holds 3 red and 4 blue pens. How many pens?", "7", "<think>\n3+4=7\n</think>\n\\boxed{7}", 0
    ),
    _openr1_row("   ", "5", "unused", 1),  # empty problem: skipped
    _openr1_row("Half of one is?", "\\frac{1}{2}", "<think>\n1/2\n</think>\n\\boxed{\\frac{1}{2}}", 2),
    _openr1_row("Twice 21 is?", "", "42", 3),  # no answer: skipped
    _openr1_row("Square of 6?", "36", None, 4),  # no expert: kept with expert=None
]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def openr1_files(tmp_path: Path) -> dict[str, Path]:
    jsonl = _write_jsonl(tmp_path / "openr1.jsonl", OPENR1_ROWS)
    parquet = tmp_path / "openr1.parquet"
    datasets.Dataset.from_list(OPENR1_ROWS).to_parquet(str(parquet))
    return {"jsonl": jsonl, "parquet": parquet}


def _tokenizer() -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE with a Jinja chat template, built locally."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(["Half of one is? Please reason step by step."], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<eos>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    return tokenizer


# ---- answers.py -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{7}.", "7"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
        ("first \\boxed{2}, finally \\boxed{ 3 }", "3"),  # the last box, stripped
        ("\\fbox{x^{2}}", "x^{2}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not count
        ("\\boxed{\\left\\{ x \\right.}", "\\left\\{ x \\right."),  # a lone escaped brace either
        ("\\boxed{4} and then \\boxed{\\frac{1}{2}", "4"),  # the last box never closes: the one before
        ("\\boxed{\\frac{1}{2}", None),  # unbalanced
        ("no box here", None),
        ("\\boxed{\\boxed{9}}", "9"),  # the innermost opens last
    ],
)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("She has 1,000 + 234 = 1,234 stickers.\n#### 1,234", "1234"),
        ("#### 42\n", "42"),
        ("#### -3.5", "-3.5"),
        ("a #### 1 b\n#### 2", "2"),  # the last marker
        ("no marker 42", None),
        ("####   ", None),
    ],
)
def test_extract_gsm8k(text: str, expected: str | None) -> None:
    assert extract_gsm8k(text) == expected


# ---- the OpenR1-Math (LUFFY) schema ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_openr1_schema(openr1_files: dict[str, Path], tmp_path: Path, kind: str) -> None:
    dm = HubPromptDataModule(
        path=str(openr1_files[kind]),
        prompt_column="prompt",
        answer_column="reward_model.ground_truth",
        expert_column="target",
        cache_dir=str(tmp_path / "cache"),
    )
    prompts = dm.train_prompts
    assert [p.prompt for p in prompts] == [
        "A box holds 3 red and 4 blue pens. How many pens?" + SUFFIX,
        "Half of one is?" + SUFFIX,
        "Square of 6?" + SUFFIX,
    ]
    assert [p.reference for p in prompts] == ["7", "\\frac{1}{2}", "36"]
    assert [p.expert for p in prompts] == [
        "<think>\n3+4=7\n</think>\n\\boxed{7}",
        "<think>\n1/2\n</think>\n\\boxed{\\frac{1}{2}}",
        None,
    ]
    assert [p.uid for p in prompts] == ["train/0", "train/2", "train/4"]
    assert dm.skipped["train"] == {"no_prompt": 1, "no_reference": 1}
    assert dm.no_expert["train"] == 1  # kept, counted
    assert dm.val_prompts == []  # eval.val is None


def test_defaults_load_the_openr1_mapping(openr1_files: dict[str, Path], tmp_path: Path) -> None:
    dm = HubPromptDataModule(path=str(openr1_files["jsonl"]), cache_dir=str(tmp_path / "cache"))
    assert [p.reference for p in dm.train_prompts] == ["7", "\\frac{1}{2}", "36"]
    assert all(p.expert is None for p in dm.train_prompts)  # expert_column defaults to None
    assert dm.skipped["train"] == {"no_prompt": 1, "no_reference": 1}
    assert dm.no_expert["train"] == 0  # no expert column: nothing expected


def test_skipped_rows_are_logged_once(
    openr1_files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dm = HubPromptDataModule(path=str(openr1_files["jsonl"]), cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger="echorl_lightning.data.rows"):
        _ = dm.train_prompts
        dm.connect(None)  # rebuilding the prompts does not reload or re-log the rows
        _ = dm.train_prompts
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1
    assert (
        "skipped 2 of 5 rows: 1 with no prompt text (rows ['train/1']); 1 with no reference (rows ['train/3'])"
        in skipped[0]
    )
    assert str(openr1_files["jsonl"]) in skipped[0]


def test_chat_template_with_real_tokenizer(openr1_files: dict[str, Path], tmp_path: Path) -> None:
    dm = HubPromptDataModule(path=str(openr1_files["jsonl"]), cache_dir=str(tmp_path / "cache"))
    assert dm.train_prompts[1].prompt == "Half of one is?" + SUFFIX  # before connect: no template
    dm.connect(_tokenizer())
    assert dm.train_prompts[1].prompt == (
        "<|user|>\nHalf of one is?" + SUFFIX + "<eos>\n<|assistant|>\n"
    )  # rebuilt after connect

    with_system = HubPromptDataModule(
        path=str(openr1_files["parquet"]),
        system_prompt="Be brief.",
        instruction="Q: {prompt}",
        cache_dir=str(tmp_path / "cache"),
    )
    with_system.connect(_tokenizer())
    assert with_system.train_prompts[0].prompt == (
        "<|system|>\nBe brief.<eos>\n<|user|>\nQ: A box holds 3 red and 4 blue pens. How many pens?<eos>\n"
        "<|assistant|>\n"
    )

    raw = HubPromptDataModule(
        path=str(openr1_files["jsonl"]), use_chat_template=False, cache_dir=str(tmp_path / "cache")
    )
    raw.connect(_tokenizer())
    assert raw.train_prompts[0].prompt == "A box holds 3 red and 4 blue pens. How many pens?" + SUFFIX


# ---- other schemas ----------------------------------------------------------------------------------------
def test_gsm8k_schema(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "gsm.jsonl",
        [
            {
                "question": "Ann has 1,000 beads and buys 234 more. How many?",
                "answer": "1,000+234=1,234\n#### 1,234",
            },
            {"question": "Bo has 2 cats.", "answer": "no final line"},  # no '####': skipped
            {"question": "Cy eats 3 of 10 plums. How many left?", "answer": "10-3=7\n#### 7"},
        ],
    )
    dm = HubPromptDataModule(
        path=str(path),
        prompt_column="question",
        answer_column="answer",
        answer_format="gsm8k",
        instruction="{prompt} Answer after ####.",
        cache_dir=str(tmp_path / "cache"),
    )
    assert [(p.prompt, p.reference, p.uid) for p in dm.train_prompts] == [
        ("Ann has 1,000 beads and buys 234 more. How many? Answer after ####.", "1234", "train/0"),
        ("Cy eats 3 of 10 plums. How many left? Answer after ####.", "7", "train/2"),
    ]
    assert dm.skipped["train"]["no_reference"] == 1


def test_boxed_csv_and_validation_with_its_own_mapping(openr1_files: dict[str, Path], tmp_path: Path) -> None:
    val = tmp_path / "val.csv"
    datasets.Dataset.from_list(
        [
            {"problem": "What is one third of 3/2?", "solution": "It is $\\boxed{\\frac{1}{2}}$."},
            {"problem": "What is 2^3?", "solution": "$2^3 = \\boxed{8}$"},
            {"problem": "Unboxed?", "solution": "The answer is 5."},  # skipped
        ]
    ).to_csv(str(val), index=False)
    dm = HubPromptDataModule(
        path=str(openr1_files["jsonl"]),
        eval=HubEvalOptions(
            val=HubSplit(
                split="test",
                path=str(val),
                prompt_column="problem",
                answer_column="solution",
                answer_format="boxed",
            )
        ),
        val_batch_size=2,
        cache_dir=str(tmp_path / "cache"),
    )
    assert [(p.prompt, p.reference, p.expert, p.uid) for p in dm.val_prompts] == [
        ("What is one third of 3/2?" + SUFFIX, "\\frac{1}{2}", None, "val/0"),
        ("What is 2^3?" + SUFFIX, "8", None, "val/1"),
    ]
    assert dm.skipped["val"] == {"no_prompt": 0, "no_reference": 1}
    batches = list(dm.val_dataloader())
    assert [len(b) for b in batches] == [2] and batches[0][1].reference == "8"
    assert len(dm.train_prompts) == 3  # the training mapping is unchanged


def test_max_samples_after_seeded_shuffle(tmp_path: Path) -> None:
    rows = [{"q": f"Problem {i}?", "a": str(i)} for i in range(12)]
    rows[5]["q"] = ""  # an unusable row does not count towards the limit
    path = _write_jsonl(tmp_path / "many.jsonl", rows)

    def build(seed: int | None) -> list[str]:
        dm = HubPromptDataModule(
            path=str(path),
            prompt_column="q",
            answer_column="a",
            max_train_samples=4,
            shuffle_seed=seed,
            cache_dir=str(tmp_path / "cache"),
        )
        return [p.uid for p in dm.train_prompts]

    assert build(None) == ["train/0", "train/1", "train/2", "train/3"]
    # slow reference: shuffle the row indices with the same seed, keep the first 4 usable rows
    order = list(range(12))
    random.Random(3).shuffle(order)
    expected = [f"train/{i}" for i in order if i != 5][:4]
    assert build(3) == expected == build(3)
    assert expected != build(None)


# ---- bad input --------------------------------------------------------------------------------------------
def test_missing_column_error_names_column_file_and_columns(
    openr1_files: dict[str, Path], tmp_path: Path
) -> None:
    dm = HubPromptDataModule(
        path=str(openr1_files["jsonl"]), prompt_column="problem", cache_dir=str(tmp_path / "cache")
    )
    with pytest.raises(ValueError) as info:
        _ = dm.train_prompts
    message = str(info.value)
    assert "prompt_column='problem'" in message
    assert str(openr1_files["jsonl"]) in message
    assert "'reward_model'" in message and "'target'" in message  # the available columns

    nested = HubPromptDataModule(
        path=str(openr1_files["parquet"]),
        answer_column="reward_model.answer",
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(ValueError, match=r"answer_column='reward_model.answer'.*\['ground_truth', 'style'\]"):
        _ = nested.train_prompts

    expert = HubPromptDataModule(
        path=str(openr1_files["jsonl"]), expert_column="solution", cache_dir=str(tmp_path / "cache")
    )
    with pytest.raises(ValueError, match="expert_column='solution'"):
        _ = expert.train_prompts


def test_missing_file_and_bad_arguments(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataSourceError, match="nope.jsonl"):
        _ = HubPromptDataModule(path=str(missing)).train_prompts
    other = tmp_path / "data.txt"
    other.write_text("x")
    with pytest.raises(ValueError, match="data.txt"):
        _ = HubPromptDataModule(path=str(other)).train_prompts
    with pytest.raises(ValueError, match="instruction"):
        HubPromptDataModule(instruction="no placeholder")
    with pytest.raises(ValueError, match="answer_format"):
        HubPromptDataModule(answer_format="latex")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_train_samples"):
        HubPromptDataModule(max_train_samples=0)


def test_all_rows_unusable_is_an_error(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"q": "", "a": "1"}, {"q": "x", "a": ""}])
    dm = HubPromptDataModule(
        path=str(path), prompt_column="q", answer_column="a", cache_dir=str(tmp_path / "c")
    )
    with pytest.raises(
        DataSourceError, match=r"train: no usable row in file .*bad.jsonl.*1 no_prompt, 1 no_reference"
    ):
        _ = dm.train_prompts


def test_default_verifier_is_math_verifier() -> None:
    dm = HubPromptDataModule()
    assert isinstance(dm.verifier, MathVerifier)
    assert dm.verifier is dm.verifier  # built once (its worker pool is the verifier's own business)


def test_named_training_set_from_a_local_file_in_its_schema(tmp_path):
    # GSM8K schema (question / answer with "#### N"), made-up rows
    path = tmp_path / "gsm8k_train.jsonl"
    rows = [
        {"question": "Ann has 3 pens and buys 4 more. How many pens?", "answer": "3 + 4 = 7\n#### 7"},
        {
            "question": "A box holds 1,200 nails; 200 are used. How many are left?",
            "answer": "1200 - 200\n#### 1,000",
        },
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dm = HubPromptDataModule(train_set="gsm8k_train", train_set_path=str(path), use_chat_template=False)
    examples = dm.train_prompts
    assert [e.reference for e in examples] == ["7", "1000"]
    assert examples[0].prompt == (
        "Ann has 3 pens and buys 4 more. How many pens?\n"
        "Please reason step by step, and put your final answer within \\boxed{}."
    )
    assert examples[0].expert == "3 + 4 = 7"


def test_named_training_set_must_be_a_training_set():
    with pytest.raises(ValueError, match="train_set: 'math500' is an evaluation set"):
        HubPromptDataModule(train_set="math500")
    with pytest.raises(ValueError, match="unknown benchmark dataset 'nope'"):
        HubPromptDataModule(train_set="nope")
    with pytest.raises(ValueError, match="train_set_path is set but train_set is not"):
        HubPromptDataModule(train_set_path="x.jsonl")
