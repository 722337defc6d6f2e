"""Prompts from a Hugging Face hub dataset or a local data file, with a column mapping.

The training data of EchoRL (arXiv 2605.31228) is OpenR1-Math, "about 46k problems with expert solutions",
distributed for LUFFY as the hub dataset ``Elliott/Openr1-Math-46k-8192`` (one ``train`` split). Its rows
are in verl's RL schema:

    data_source   str
    prompt        list of {role, content}: [system message, user message with the problem]
    target        list of {role, content}: [assistant message: the DeepSeek-R1 solution (the expert)]
    ability       str
    reward_model  {ground_truth: str (the final answer, LaTeX), style: str}
    extra_info    {index: int, split: str}

so it loads with ``prompt_column="prompt"`` (the user message is taken; the set's own system prompt is
dropped), ``answer_column="reward_model.ground_truth"`` (a dotted path reads a struct field),
``answer_format="raw"``, and ``expert_column="target"`` for LUFFY (the assistant message is taken). Those
are the defaults, except ``expert_column``, which is None so that methods without an expert do not hold
46k long solutions in memory.

Any other set with one problem column and one answer column works the same way, from the hub or from a
local ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` file (or a folder of them): e.g. GSM8K with
``prompt_column="question"``, ``answer_column="answer"``, ``answer_format="gsm8k"``.

Evaluation: besides the optional ``val_*`` split, ``eval_sets`` names benchmarks of
:data:`~echorl_lightning.data.benchmarks.BENCHMARKS` (EchoRL's id math sets and ood multiple-choice sets);
each becomes one :class:`~echorl_lightning.data.base.EvalSet`, rendered with the same instruction and chat
template (multiple-choice sets ask for the option letter in ``\\boxed{}``), scored by one shared
:class:`MathVerifier` or by :class:`MultipleChoiceVerifier`.

Rows with an empty prompt or with an answer that yields no reference are skipped, counted in
:attr:`HubPromptDataModule.skipped` and logged once per split with their row indices. Left out: streaming
(the split is loaded whole), per-rank sharding of the prompt pool (the rollout callback draws from it),
and datasets saved with ``save_to_disk``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets

from echorl_lightning.data.answers import extract_boxed, extract_gsm8k
from echorl_lightning.data.base import EvalSet, PromptDataModule
from echorl_lightning.data.types import PromptExample, Verifier
from echorl_lightning.rewards.math_verify import MathVerifier
from echorl_lightning.rewards.multiple_choice import MultipleChoiceVerifier, extract_choice

logger = logging.getLogger(__name__)

AnswerFormat = Literal["raw", "boxed", "gsm8k"]

DEFAULT_INSTRUCTION = "{prompt}\nPlease reason step by step, and put your final answer within \\boxed{}."
MC_INSTRUCTION = (
    "{prompt}\nPlease reason step by step, and put the letter of the correct option within \\boxed{}."
)

_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_SHOWN_ROWS = 5  # row indices quoted in the skipped-rows log line


# ---- loading and column access (plain functions) --------------------------------------------------------
def describe_source(path: str, name: str | None, split: str) -> str:
    """How error messages and logs name a data source."""
    if Path(path).expanduser().exists():
        return f"file {path!r} (split {split!r})"
    return f"hub dataset {path!r} (name={name!r}, split={split!r})"


def load_table(
    path: str, name: str | None, split: str, revision: str | None, cache_dir: str | None
) -> datasets.Dataset:
    """Load one split from a local file, a local folder, or the hub (decided by ``path`` existing)."""
    local = Path(path).expanduser()
    if local.is_file():
        builder = _FILE_BUILDERS.get(local.suffix.lower())
        if builder is None:
            raise ValueError(
                f"unsupported data file {path!r}: expected one of {', '.join(sorted(_FILE_BUILDERS))}"
            )
        return datasets.load_dataset(
            builder, data_files={split: str(local)}, split=split, cache_dir=cache_dir
        )
    if local.is_dir():
        return datasets.load_dataset(str(local), name=name, split=split, cache_dir=cache_dir)
    if local.suffix.lower() in _FILE_BUILDERS or path.startswith(("/", "./", "../", "~")):
        raise FileNotFoundError(f"data file {path!r} does not exist")
    return datasets.load_dataset(path, name=name, split=split, revision=revision, cache_dir=cache_dir)


def check_column(features: datasets.Features, column: str, key: str, source: str) -> None:
    """Raise ``ValueError`` naming ``column`` (the value of config key ``key``) if ``features`` lack it.

    ``column`` may be a dotted path into struct columns (``reward_model.ground_truth``).
    """
    parts = column.split(".")
    available: Any = features
    for depth, part in enumerate(parts):
        if not isinstance(available, dict) or part not in available:
            where = "columns" if depth == 0 else f"fields of {'.'.join(parts[:depth])!r}"
            names = sorted(available) if isinstance(available, dict) else []
            raise ValueError(
                f"{key}={column!r}: no column {column!r} in {source}; available {where}: {names}"
            )
        available = available[part]


def get_column(row: dict[str, Any], column: str) -> Any:
    """The value at ``column`` (dotted path into nested dicts) of one row; None where a level is None."""
    value: Any = row
    for part in column.split("."):
        if value is None:
            return None
        value = value[part]
    return value


def as_text(value: Any, role: str) -> str | None:
    """Text of a cell: a string, a number, or a chat list (``[{role, content}, ...]``), from which the
    content of the last message with ``role`` is taken. None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list):
        contents = [m.get("content") for m in value if isinstance(m, dict) and m.get("role") == role]
        if contents and isinstance(contents[-1], str):
            return contents[-1]
    return None


def to_reference(answer: str | None, answer_format: AnswerFormat) -> str | None:
    """The verifier reference of an answer cell's text, or None when none can be extracted."""
    if answer is None:
        return None
    if answer_format == "raw":
        reference: str | None = answer.strip()
    elif answer_format == "boxed":
        reference = extract_boxed(answer)
    elif answer_format == "gsm8k":
        reference = extract_gsm8k(answer)
    else:
        raise ValueError(f"answer_format must be 'raw', 'boxed' or 'gsm8k', got {answer_format!r}")
    return reference or None


@dataclass(frozen=True)
class _SplitSpec:
    """Where one split comes from and how its columns map (``key_prefix`` names its config keys)."""

    path: str
    name: str | None
    split: str
    revision: str | None
    prompt_column: str
    answer_column: str
    answer_format: AnswerFormat
    expert_column: str | None
    limit: int | None
    key_prefix: str


@dataclass(frozen=True)
class _Row:
    """A dataset row after column mapping, before the instruction and chat template."""

    problem: str
    reference: str
    expert: str | None
    uid: str


# ---- the datamodule -------------------------------------------------------------------------------------
class HubPromptDataModule(PromptDataModule):
    """Math prompts from a hub dataset or a local file (defaults: LUFFY's OpenR1-Math 46k set).

    Args:
        path: hub dataset id, or a local ``.jsonl``/``.json``/``.parquet``/``.csv`` file or folder.
        name: hub configuration name.
        split: training split.
        revision: hub revision (branch, tag or commit) for reproducible runs.
        prompt_column: column with the problem: a string, or a chat list (the last user message is used).
        answer_column: column with the answer; a dotted path reads a struct field.
        expert_column: column with an expert solution (string or chat list: the last assistant message),
            for LUFFY; None skips it. A row without one keeps ``expert=None`` and is counted.
        answer_format: ``raw`` (the cell is the reference), ``boxed`` (last ``\\boxed{}`` of a solution),
            ``gsm8k`` (after ``####``).
        instruction: the user message; ``{prompt}`` is replaced by the problem text.
        system_prompt: a system message, used only with a chat template.
        use_chat_template: wrap the user message in the tokenizer's chat template (with the generation
            prompt) when the connected tokenizer has one; otherwise the instruction text is the prompt.
        max_train_samples: keep the first k usable training rows (after the shuffle, if any).
        max_val_samples: the same for validation and for each of ``eval_sets``.
        shuffle_seed: shuffle rows with this seed before taking the first k; None keeps the file order.
        val_path: validation source; None uses ``path``.
        val_name: hub configuration of the validation source; None uses ``name`` when ``val_path`` is None.
        val_split: validation split; None means no validation set.
        val_prompt_column, val_answer_column, val_answer_format: the validation set's mapping when it
            differs (e.g. MATH-500's ``problem`` / ``answer``); None uses the training one.
        eval_sets: benchmark names (``benchmarks.BENCHMARKS``) evaluated in validation and test, after the
            ``val`` set when ``val_split`` is set; metrics ``val/<name>/...``.
        eval_paths: set name -> local file in that set's schema (offline runs); other sets load from the hub.
        train_set: a named training set (``benchmarks.BENCHMARKS``: ``openr1_math``, ``math_train``,
            ``gsm8k_train``, ``deepscaler``) whose spec gives hub id, split and row mapping; it replaces
            ``path`` / ``name`` / ``split`` and the column keys for training. None uses them.
        train_set_path: a local file in ``train_set``'s schema instead of its hub id.
        val_batch_size: prompts per validation batch.
        cache_dir: ``datasets`` cache folder; None uses the library default.
        verifier: batch verifier; None uses :class:`MathVerifier`.
    """

    def __init__(
        self,
        path: str = "Elliott/Openr1-Math-46k-8192",
        name: str | None = None,
        split: str = "train",
        revision: str | None = None,
        prompt_column: str = "prompt",
        answer_column: str = "reward_model.ground_truth",
        expert_column: str | None = None,
        answer_format: AnswerFormat = "raw",
        instruction: str = DEFAULT_INSTRUCTION,
        system_prompt: str | None = None,
        use_chat_template: bool = True,
        max_train_samples: int | None = None,
        max_val_samples: int | None = None,
        shuffle_seed: int | None = None,
        val_path: str | None = None,
        val_name: str | None = None,
        val_split: str | None = None,
        val_prompt_column: str | None = None,
        val_answer_column: str | None = None,
        val_answer_format: AnswerFormat | None = None,
        eval_sets: list[str] | None = None,
        eval_paths: dict[str, str] | None = None,
        train_set: str | None = None,
        train_set_path: str | None = None,
        val_batch_size: int = 64,
        cache_dir: str | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        super().__init__(verifier=verifier, val_batch_size=val_batch_size)
        if "{prompt}" not in instruction:
            raise ValueError(f"instruction must contain the '{{prompt}}' placeholder, got {instruction!r}")
        for key, fmt in (("answer_format", answer_format), ("val_answer_format", val_answer_format)):
            if fmt is not None and fmt not in ("raw", "boxed", "gsm8k"):
                raise ValueError(f"{key} must be 'raw', 'boxed' or 'gsm8k', got {fmt!r}")
        for key, k in (("max_train_samples", max_train_samples), ("max_val_samples", max_val_samples)):
            if k is not None and k < 1:
                raise ValueError(f"{key} must be >= 1 or None, got {k}")
        unknown = sorted(set(eval_paths or {}) - set(eval_sets or []))
        if unknown:
            raise ValueError(f"eval_paths: {unknown} are not in eval_sets={eval_sets}")
        if eval_sets:
            from echorl_lightning.data.benchmarks import BENCHMARKS  # imports this module: imported late

            for set_name in eval_sets:
                BENCHMARKS.get(set_name)  # an unknown name raises, listing the known ones
        if train_set is not None:
            from echorl_lightning.data.benchmarks import BENCHMARKS  # imports this module: imported late

            if BENCHMARKS.get(train_set).id_or_ood != "train":
                raise ValueError(f"train_set: {train_set!r} is an evaluation set, not a training set")
        elif train_set_path is not None:
            raise ValueError("train_set_path is set but train_set is not")
        self.train_set = train_set
        self.train_set_path = train_set_path
        self.eval_set_names = list(eval_sets or [])
        self.eval_paths = dict(eval_paths or {})
        self.path = path
        self.name = name
        self.split = split
        self.revision = revision
        self.prompt_column = prompt_column
        self.answer_column = answer_column
        self.expert_column = expert_column
        self.answer_format = answer_format
        self.instruction = instruction
        self.system_prompt = system_prompt
        self.use_chat_template = use_chat_template
        self.max_train_samples = max_train_samples
        self.max_val_samples = max_val_samples
        self.shuffle_seed = shuffle_seed
        self.val_path = val_path
        self.val_name = val_name if (val_name is not None or val_path is not None) else name
        self.val_split = val_split
        self.val_prompt_column = val_prompt_column or prompt_column
        self.val_answer_column = val_answer_column or answer_column
        self.val_answer_format: AnswerFormat = val_answer_format or answer_format
        self.cache_dir = cache_dir
        self.skipped: dict[str, dict[str, int]] = {}
        self._rows: dict[str, list[_Row]] = {}
        self._warned_template = False

    # ---- PromptDataModule hooks -------------------------------------------------------------------------
    def load_train_prompts(self) -> Sequence[PromptExample]:
        if self.train_set is not None:
            from echorl_lightning.data.benchmarks import load_benchmark  # imports this module

            rows = load_benchmark(self.train_set, path=self.train_set_path, cache_dir=self.cache_dir)
            return [
                PromptExample(self.render_prompt(r.problem), r.reference, expert=r.expert, uid=r.uid)
                for r in rows[: self.max_train_samples]
            ]
        return [self._example(row) for row in self._load_rows("train")]

    def load_val_prompts(self) -> Sequence[PromptExample]:
        if self.val_split is None:
            return []
        return [self._example(row) for row in self._load_rows("val")]

    def default_verifier(self) -> Verifier:
        return MathVerifier()

    def load_eval_sets(self) -> Sequence[EvalSet]:
        """The ``val`` set (when ``val_split`` is set), then one set per name of ``eval_sets``."""
        from echorl_lightning.data.benchmarks import BENCHMARKS, load_benchmark  # imports this module

        sets = list(super().load_eval_sets())
        math_verifier: Verifier | None = None
        for set_name in self.eval_set_names:
            spec = BENCHMARKS.get(set_name)
            path = self.eval_paths.get(set_name)
            rows = load_benchmark(set_name, path=path, cache_dir=self.cache_dir)[: self.max_val_samples]
            if not rows:
                raise ValueError(f"eval_sets: {set_name!r} ({path or spec.hub_id}) has no usable rows")
            if spec.kind == "multiple_choice":
                instruction, verifier, answer_fn = MC_INSTRUCTION, MultipleChoiceVerifier(), extract_choice
            else:
                if math_verifier is None:  # one MathVerifier (one worker pool) for every math set
                    math_verifier = (
                        self.verifier if isinstance(self.verifier, MathVerifier) else MathVerifier()
                    )
                instruction, verifier, answer_fn = self.instruction, math_verifier, extract_boxed
            prompts = [
                PromptExample(self.render_prompt(row.problem, instruction), row.reference, uid=row.uid)
                for row in rows
            ]
            group = None if spec.id_or_ood == "train" else spec.id_or_ood
            sets.append(EvalSet(set_name, prompts, verifier, group, answer_fn))
        return sets

    def connect(self, tokenizer: Any) -> None:
        """Bind the tokenizer; prompts built before (without its chat template) are rebuilt on next use."""
        super().connect(tokenizer)
        self._train = None
        self._val = None
        self._eval_sets = None
        self._warned_template = False

    # ---- rows -------------------------------------------------------------------------------------------
    def _load_rows(self, which: Literal["train", "val"]) -> list[_Row]:
        """Load, map and filter one split once (the templated prompts are rebuilt from these rows)."""
        if which in self._rows:
            return self._rows[which]
        spec = self._spec(which)
        source = describe_source(spec.path, spec.name, spec.split)
        table = load_table(spec.path, spec.name, spec.split, spec.revision, self.cache_dir)
        mapping = {"prompt_column": spec.prompt_column, "answer_column": spec.answer_column}
        if spec.expert_column is not None:
            mapping["expert_column"] = spec.expert_column
        for key, column in mapping.items():
            check_column(table.features, column, spec.key_prefix + key, source)
        table = table.select_columns(sorted({column.split(".")[0] for column in mapping.values()}))

        order = list(range(len(table)))
        if self.shuffle_seed is not None:
            random.Random(self.shuffle_seed).shuffle(order)
            table = table.select(order)
        rows: list[_Row] = []
        skipped: dict[str, list[int]] = {"empty_prompt": [], "no_reference": [], "no_expert": []}
        for index, record in zip(order, table, strict=True):
            if spec.limit is not None and len(rows) >= spec.limit:
                break
            problem = as_text(get_column(record, spec.prompt_column), role="user")
            if problem is None or not problem.strip():
                skipped["empty_prompt"].append(index)
                continue
            answer = as_text(get_column(record, spec.answer_column), role="assistant")
            reference = to_reference(answer, spec.answer_format)
            if reference is None:
                skipped["no_reference"].append(index)
                continue
            expert = None
            if spec.expert_column is not None:
                expert = as_text(get_column(record, spec.expert_column), role="assistant")
                if expert is None or not expert.strip():
                    skipped["no_expert"].append(index)
                    expert = None
            rows.append(_Row(problem=problem, reference=reference, expert=expert, uid=f"{which}/{index}"))

        self.skipped[which] = {reason: len(indices) for reason, indices in skipped.items()}
        if any(skipped.values()):
            logger.warning(
                "%s: %s of %s: skipped %d rows with an empty prompt (rows %s) and %d with no reference from "
                "%s=%r in format %r (rows %s); kept %d rows without an expert solution (rows %s)",
                type(self).__name__,
                which,
                source,
                len(skipped["empty_prompt"]),
                skipped["empty_prompt"][:_SHOWN_ROWS],
                len(skipped["no_reference"]),
                spec.key_prefix + "answer_column",
                spec.answer_column,
                spec.answer_format,
                skipped["no_reference"][:_SHOWN_ROWS],
                len(skipped["no_expert"]),
                skipped["no_expert"][:_SHOWN_ROWS],
            )
        self._rows[which] = rows
        return rows

    def _spec(self, which: Literal["train", "val"]) -> _SplitSpec:
        if which == "train":
            return _SplitSpec(
                path=self.path,
                name=self.name,
                split=self.split,
                revision=self.revision,
                prompt_column=self.prompt_column,
                answer_column=self.answer_column,
                answer_format=self.answer_format,
                expert_column=self.expert_column,
                limit=self.max_train_samples,
                key_prefix="",
            )
        if self.val_split is None:
            raise ValueError(f"{type(self).__name__}: no validation set (val_split is None)")
        return _SplitSpec(
            path=self.val_path if self.val_path is not None else self.path,
            name=self.val_name,
            split=self.val_split,
            revision=self.revision if self.val_path is None else None,
            prompt_column=self.val_prompt_column,
            answer_column=self.val_answer_column,
            answer_format=self.val_answer_format,
            expert_column=None,  # validation scores answers only
            limit=self.max_val_samples,
            key_prefix="val_",
        )

    # ---- prompt text ------------------------------------------------------------------------------------
    def render_prompt(self, problem: str, instruction: str | None = None) -> str:
        """The exact policy input for a problem: the instruction (default :attr:`instruction`), in the chat
        template when there is one."""
        text = (self.instruction if instruction is None else instruction).replace("{prompt}", problem)
        template = getattr(self.tokenizer, "chat_template", None) if self.tokenizer is not None else None
        if not self.use_chat_template or not template:
            if (self.use_chat_template or self.system_prompt) and not self._warned_template:
                logger.warning(
                    "%s: prompts are the bare instruction text (use_chat_template=%s, tokenizer %s, "
                    "system_prompt %s)",
                    type(self).__name__,
                    self.use_chat_template,
                    "not connected"
                    if self.tokenizer is None
                    else f"chat template {'set' if template else 'absent'}",
                    "ignored" if self.system_prompt else "unset",
                )
                self._warned_template = True
            return text
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": text})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _example(self, row: _Row) -> PromptExample:
        return PromptExample(
            prompt=self.render_prompt(row.problem), reference=row.reference, expert=row.expert, uid=row.uid
        )
