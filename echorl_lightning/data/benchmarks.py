"""Named benchmark and training sets of EchoRL: where each lives and how one raw row becomes
``(problem text, reference, expert solution)``.

:data:`BENCHMARKS` is a :class:`~echorl_lightning.registry.Registry` of frozen :class:`DatasetSpec` entries,
one per named set; :func:`load_benchmark` loads one split (from the hub, or from a local JSONL / Parquet file
in the same schema) and maps every row with the spec's pure ``to_example`` function.

* In-distribution math evaluation (the six that EchoRL and LUFFY report): ``aime24``, ``aime25``, ``amc23``,
  ``math500``, ``minerva_math``, ``olympiadbench``; plus ``gsm8k`` (math, so tagged ``id``).
* Out-of-distribution multiple choice: ``arc_challenge``, ``gpqa_diamond``, ``mmlu_pro``. The problem text
  is the question followed by lettered options (:func:`format_choices`); the reference is the correct letter.
  GPQA stores the correct answer first, so its four options are shuffled with a seed derived from the row
  index (``random.Random(index)``): reproducible, and the correct letter is not always ``A``.
* Training: ``openr1_math`` (LUFFY's OpenR1-Math-46k, EchoRL's training set; expert = the R1 solution),
  ``math_train`` (MATH train, reference = last ``\\boxed{}`` of the solution), ``gsm8k_train`` (expert = the
  solution text before ``####``), ``deepscaler`` (DeepScaleR-Preview).

Rows whose reference cannot be extracted (or whose problem is empty) are skipped, counted and logged with
their row ids by the one mapping path of :func:`echorl_lightning.data.rows.load_rows`, which also reads
the user's own files. Left out: prompt templating (the datamodule renders the problem), the verifiers,
per-subject filtering of MMLU-Pro, multi-config sets (AIME 2025 from ``opencompass/AIME2025`` is two
configs; the single-split ``math-ai/aime25`` is used instead), and multimodal OlympiadBench configs.

Hub ids, configs, splits and column names were checked against dataset cards and public loading code
(search of public repositories, Nov 2026); each spec below says where.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from echorl_lightning.data.answers import extract_boxed, extract_gsm8k
from echorl_lightning.data.rows import MappedRows, ToExample, load_rows
from echorl_lightning.data.tables import TableSource, cell_text, get_column
from echorl_lightning.registry import Registry
from echorl_lightning.rewards.multiple_choice import DEFAULT_LETTERS, format_choices

Kind = Literal["math", "multiple_choice"]
Usage = Literal["id", "ood", "train"]
Example = tuple[str | None, str | None, str | None]


@dataclass(frozen=True)
class DatasetSpec:
    """One named set.

    Attributes:
        name: the registry name (``"math500"``).
        hub_id: the Hugging Face hub dataset id.
        config: the hub config name, or None for the default one.
        split: the split to load.
        kind: ``"math"`` (reference = final answer) or ``"multiple_choice"`` (reference = option letter).
        id_or_ood: ``"id"`` / ``"ood"`` evaluation set, or ``"train"``.
        columns: top-level columns ``to_example`` needs (checked before mapping, so a wrong schema fails
            with the missing column named).
        to_example: pure ``(row, index) -> (problem, reference, expert)``, each None where absent; a row
            without a problem or a reference is skipped.
        optional_columns: columns ``to_example`` reads when present (an expert solution).
    """

    name: str
    hub_id: str
    config: str | None
    split: str
    kind: Kind
    id_or_ood: Usage
    columns: tuple[str, ...]
    to_example: ToExample
    optional_columns: tuple[str, ...] = ()


BENCHMARKS: Registry[DatasetSpec] = Registry("benchmark dataset")


def _add(spec: DatasetSpec) -> None:
    BENCHMARKS.register(spec.name)(spec)


# ---- row mappings (pure) ----------------------------------------------------------------------------------
def _text(value: Any) -> str | None:
    """A plain cell as stripped text (:func:`~echorl_lightning.data.tables.cell_text`), None when blank."""
    text = cell_text(value)
    return text.strip() or None if text is not None else None


def _math(problem_col: str, answer_col: str, expert_col: str | None = None) -> ToExample:
    """``to_example`` for a set with a problem column, a final-answer column and an optional solution."""

    def to_example(row: Mapping[str, Any], index: int) -> Example:
        expert = _text(row.get(expert_col)) if expert_col is not None else None
        return _text(row.get(problem_col)), _text(row.get(answer_col)), expert

    return to_example


def _math_boxed(row: Mapping[str, Any], index: int) -> Example:
    """MATH: reference = last ``\\boxed{}`` of ``solution``; expert = the whole solution."""
    solution = _text(row.get("solution"))
    reference = extract_boxed(solution) if solution is not None else None
    return _text(row.get("problem")), reference, solution


def _gsm8k(row: Mapping[str, Any], index: int) -> Example:
    """GSM8K: reference = the number after ``####`` (commas removed); expert = the text before it."""
    answer = row.get("answer") if isinstance(row.get("answer"), str) else ""
    marker = answer.rfind("####")
    expert = answer[:marker].strip() if marker >= 0 else None
    return _text(row.get("question")), extract_gsm8k(answer), expert or None


def _texts(value: Any) -> list[str]:
    """The non-blank texts of a list cell (anything else: none)."""
    items = value if isinstance(value, list) else []
    return [text for text in (_text(item) for item in items) if text is not None]


def _olympiadbench(row: Mapping[str, Any], index: int) -> Example:
    """OlympiadBench: ``final_answer`` is a list (several answers joined by ", "); ``solution`` a list."""
    expert = "\n\n".join(_texts(row.get("solution"))) or None
    return _text(row.get("question")), ", ".join(_texts(row.get("final_answer"))) or None, expert


def _openr1(row: Mapping[str, Any], index: int) -> Example:
    """verl RL schema: the user message of ``prompt``, ``reward_model.ground_truth``, the assistant
    message of ``target`` (the DeepSeek-R1 solution)."""
    problem = _text(cell_text(row.get("prompt"), role="user"))
    reference = _text(cell_text(get_column(row, "reward_model.ground_truth"), role="assistant"))
    expert = _text(cell_text(row.get("target"), role="assistant"))
    return problem, reference, expert


def _arc(row: Mapping[str, Any], index: int) -> Example:
    """ARC: options in the given label order get letters A, B, ... by position, so numeric labels
    ("1".."4") map to letters; the reference is the letter at ``answerKey``'s position."""
    question = _text(row.get("question"))
    choices = row.get("choices")
    if question is None or not isinstance(choices, Mapping):
        return question, None, None
    labels = [str(label).strip() for label in choices.get("label") or []]
    options = [_text(t) or "" for t in choices.get("text") or []]
    key = str(row.get("answerKey")).strip()
    reference = DEFAULT_LETTERS[labels.index(key)] if key in labels and len(labels) == len(options) else None
    return format_choices(question, options), reference, None


def _gpqa(row: Mapping[str, Any], index: int) -> Example:
    """GPQA: the correct answer and three incorrect ones, shuffled with ``random.Random(index)``."""
    texts = [_text(row.get("Correct Answer"))] + [_text(row.get(f"Incorrect Answer {k}")) for k in (1, 2, 3)]
    order = [0, 1, 2, 3]
    random.Random(index).shuffle(order)
    question = _text(row.get("Question"))
    if question is None:
        return None, None, None
    problem = format_choices(question, [texts[i] or "" for i in order], letters="ABCD")
    return problem, "ABCD"[order.index(0)] if texts[0] is not None else None, None


def _mmlu_pro(row: Mapping[str, Any], index: int) -> Example:
    """MMLU-Pro: up to ten ``options`` and the correct ``answer`` letter (checked against the options)."""
    question, answer = _text(row.get("question")), _text(row.get("answer"))
    options = (
        [_text(o) or "" for o in row.get("options") or []] if isinstance(row.get("options"), list) else []
    )
    if question is None:
        return None, None, None
    valid = answer is not None and len(answer) == 1 and answer in DEFAULT_LETTERS[: len(options)]
    return format_choices(question, options), answer if valid else None, None


# ---- the registry ---------------------------------------------------------------------------------------
# Verified: dataset card of HuggingFaceH4/aime_2024 (features id, problem, solution, answer, url, year;
# one split "train", 30 rows).
_add(
    DatasetSpec(
        "aime24",
        "HuggingFaceH4/aime_2024",
        None,
        "train",
        "math",
        "id",
        ("problem", "answer", "solution"),
        _math("problem", "answer", "solution"),
    )
)
# Verified: load_dataset("math-ai/aime25", "default")["test"] with item["problem"], item["answer"] in
# Jellyfish042/rwkv_mmlu prepare_data/prepare_aime2025.py (opencompass/AIME2025 is split in two configs).
_add(
    DatasetSpec(
        "aime25",
        "math-ai/aime25",
        None,
        "test",
        "math",
        "id",
        ("problem", "answer"),
        _math("problem", "answer"),
    )
)
# Verified: load_dataset("math-ai/amc23", split="test") with "question" / "answer" in public eval scripts
# (answers may be numbers; 12.0 -> "12").
_add(
    DatasetSpec(
        "amc23",
        "math-ai/amc23",
        None,
        "test",
        "math",
        "id",
        ("question", "answer"),
        _math("question", "answer"),
    )
)
# Verified: HuggingFaceH4/MATH-500 "test" with problem / solution / answer (verl examples, eval pins).
_add(
    DatasetSpec(
        "math500",
        "HuggingFaceH4/MATH-500",
        None,
        "test",
        "math",
        "id",
        ("problem", "answer", "solution"),
        _math("problem", "answer", "solution"),
    )
)
# Verified: yuki-younai/verl-alignment examples/data_preprocess/math/eval_math_minerva-math.py reads
# math-ai/minervamath["test"] example["question"], example["answer"].
_add(
    DatasetSpec(
        "minerva_math",
        "math-ai/minervamath",
        None,
        "test",
        "math",
        "id",
        ("question", "answer"),
        _math("question", "answer"),
    )
)
# Verified: several public loaders use load_dataset("Hothan/OlympiadBench", "OE_TO_maths_en_COMP",
# split="train") with row["question"] and row["final_answer"] a list (first / all answers), "solution" list.
_add(
    DatasetSpec(
        "olympiadbench",
        "Hothan/OlympiadBench",
        "OE_TO_maths_en_COMP",
        "train",
        "math",
        "id",
        ("question", "final_answer"),
        _olympiadbench,
    )
)
# Verified: openai/gsm8k config "main", columns question / answer, answer ends "#### <number>".
_add(DatasetSpec("gsm8k", "openai/gsm8k", "main", "test", "math", "id", ("question", "answer"), _gsm8k))
# Verified: load_dataset("allenai/ai2_arc", "ARC-Challenge")["test"] (public eval code); columns question,
# choices {text, label}, answerKey (labels are "A".."E" or "1".."5").
_add(
    DatasetSpec(
        "arc_challenge",
        "allenai/ai2_arc",
        "ARC-Challenge",
        "test",
        "multiple_choice",
        "ood",
        ("question", "choices", "answerKey"),
        _arc,
    )
)
# Verified: load_dataset("Idavidrein/gpqa", "gpqa_diamond", split="train") with "Question", "Correct
# Answer", "Incorrect Answer 1..3" (public loaders; inspect_ai's gpqa notes the target is always A).
_add(
    DatasetSpec(
        "gpqa_diamond",
        "Idavidrein/gpqa",
        "gpqa_diamond",
        "train",
        "multiple_choice",
        "ood",
        ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"),
        _gpqa,
    )
)
# Verified: TIGER-Lab/MMLU-Pro splits validation / test (eval-framework docs: SAMPLE_SPLIT = test); columns
# question, options (list, up to 10), answer (letter), answer_index.
_add(
    DatasetSpec(
        "mmlu_pro",
        "TIGER-Lab/MMLU-Pro",
        None,
        "test",
        "multiple_choice",
        "ood",
        ("question", "options", "answer"),
        _mmlu_pro,
    )
)
# Verified: the verl RL schema documented in echorl_lightning/data/hub.py (LUFFY's release).
_add(
    DatasetSpec(
        "openr1_math",
        "Elliott/Openr1-Math-46k-8192",
        None,
        "train",
        "math",
        "train",
        ("prompt", "reward_model"),
        _openr1,
        optional_columns=("target",),
    )
)
# Verified: DigitalLearningGmbH/MATH-lighteval "default" train / test, columns problem, level, type,
# solution (verl reward routing and public loaders extract the boxed answer from "solution").
_add(
    DatasetSpec(
        "math_train",
        "DigitalLearningGmbH/MATH-lighteval",
        None,
        "train",
        "math",
        "train",
        ("problem", "solution"),
        _math_boxed,
    )
)
_add(
    DatasetSpec(
        "gsm8k_train", "openai/gsm8k", "main", "train", "math", "train", ("question", "answer"), _gsm8k
    )
)
# Verified: agentica-org/DeepScaleR-Preview-Dataset has one split "train" (public loaders); columns problem,
# answer, solution (solution is often empty: the expert is then None).
_add(
    DatasetSpec(
        "deepscaler",
        "agentica-org/DeepScaleR-Preview-Dataset",
        None,
        "train",
        "math",
        "train",
        ("problem", "answer", "solution"),
        _math("problem", "answer", "solution"),
    )
)


# ---- loading --------------------------------------------------------------------------------------------
def load_benchmark(
    name: str,
    path: str | None = None,
    cache_dir: str | None = None,
    revision: str | None = None,
    limit: int | None = None,
    shuffle_seed: int | None = None,
    hint: str = "",
    label: str | None = None,
    key: str | None = None,
) -> MappedRows:
    """Load the named set's split and map its rows (uids ``"<name>/<row index>"``).

    Args:
        name: a name in :data:`BENCHMARKS` (unknown names raise ``ValueError`` listing the known ones).
        path: a local ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` file (or folder) in the set's schema;
            None loads ``spec.hub_id`` / ``spec.config`` / ``spec.split`` from the hub.
        cache_dir: the ``datasets`` cache folder.
        revision: the hub revision (ignored for a local ``path``).
        limit: keep the first ``limit`` usable rows.
        shuffle_seed: shuffle the rows with this seed first (uids keep the file's row index); None: file order.
        hint: appended to the error when the hub set cannot be loaded (what to set instead).
        label: names the set in logs and errors; None: ``"benchmark '<name>'"``.
        key: the config key whose value is ``path``, named beside the file in errors.

    Raises:
        DataSourceError: unreadable or unreachable source, a missing column, or no usable row.
    """
    spec = BENCHMARKS.get(name)
    if path is None:
        source = TableSource(spec.hub_id, spec.config, spec.split, revision)
    else:
        source = TableSource(path, None, spec.split)
    return load_rows(
        source,
        spec.to_example,
        [(f"{name}.columns", column) for column in spec.columns],
        label=label or f"benchmark {name!r}",
        uid_prefix=name,
        optional_columns=spec.optional_columns,
        limit=limit,
        shuffle_seed=shuffle_seed,
        cache_dir=cache_dir,
        hint=hint,
        key=key if path is not None else None,
    )
