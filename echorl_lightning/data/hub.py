"""Prompts from a Hugging Face hub dataset or a local data file, with a column mapping, plus named
benchmark sets for evaluation.

The training data of EchoRL is OpenR1-Math, "about 46k problems with expert solutions", distributed for LUFFY
as the hub dataset ``Elliott/Openr1-Math-46k-8192`` (one ``train`` split). Its rows are in verl's RL schema:

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
46k long solutions in memory. Any other set with one problem column and one answer column works the same
way, from the hub or from a local ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` file (or a folder of
them): e.g. GSM8K with ``prompt_column="question"``, ``answer_column="answer"``, ``answer_format="gsm8k"``.
A named training set (``train_set``) replaces the source and the mapping by its spec in
:data:`~echorl_lightning.data.benchmarks.BENCHMARKS`.

Evaluation options are one group, ``eval`` (:class:`HubEvalOptions`): an optional validation split in the
user's columns (:class:`HubSplit`), benchmark names (EchoRL's id math sets and ood multiple-choice sets),
local files standing in for them, and a row limit. Each becomes one
:class:`~echorl_lightning.data.base.EvalSet`, rendered with the same instruction and chat template
(multiple-choice sets ask for the option letter in ``\\boxed{}``), scored by one shared
:class:`MathVerifier` or by :class:`MultipleChoiceVerifier`.

Every split goes through :func:`~echorl_lightning.data.rows.load_rows` (one mapping path, one skip log);
skipped rows are counted in :attr:`HubPromptDataModule.skipped`. Left out: streaming, per-rank sharding of
the prompt pool (the rollout callback draws from it), and datasets saved with ``save_to_disk``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from echorl_lightning.data.answers import ANSWER_FORMATS, AnswerFormat, extract_boxed, to_reference
from echorl_lightning.data.base import EvalSet, PromptDataModule
from echorl_lightning.data.benchmarks import BENCHMARKS, load_benchmark
from echorl_lightning.data.rows import MappedRows, Row, ToExample, load_rows
from echorl_lightning.data.tables import TableSource, cell_text, get_column
from echorl_lightning.data.types import PromptExample, Verifier, VerifierFn
from echorl_lightning.rewards.math_verify import MathVerifier
from echorl_lightning.rewards.multiple_choice import MultipleChoiceVerifier, extract_choice

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTION = "{prompt}\nPlease reason step by step, and put your final answer within \\boxed{}."
MC_INSTRUCTION = (
    "{prompt}\nPlease reason step by step, and put the letter of the correct option within \\boxed{}."
)
KEY = "data.init_args"  # how messages name this datamodule's config keys


@dataclass
class HubSplit:
    """A validation split in the user's own columns (``data.init_args.eval.val`` in YAML).

    Attributes:
        split: the split to read (a local file is that split).
        path: hub id or local file/folder; None reads the training ``path`` (with its revision).
        name: hub configuration; None uses the training ``name`` when ``path`` is None.
        prompt_column, answer_column, answer_format: the mapping when it differs from the training one
            (e.g. MATH-500's ``problem`` / ``answer``); None uses the training one.
    """

    split: str
    path: str | None = None
    name: str | None = None
    prompt_column: str | None = None
    answer_column: str | None = None
    answer_format: AnswerFormat | None = None


@dataclass
class HubEvalOptions:
    """What validation and test evaluate (``data.init_args.eval`` in YAML).

    Attributes:
        sets: benchmark names of :data:`~echorl_lightning.data.benchmarks.BENCHMARKS`, evaluated after the
            ``val`` set (when ``val`` is set); metrics ``val/<name>/...``.
        paths: set name -> a local file in that set's schema (offline runs); other sets load from the hub.
        val: a validation split in the user's columns, evaluated as the set ``val``; None: no such set.
        max_samples: keep the first k usable rows of ``val`` and of each benchmark set.
    """

    sets: list[str] = field(default_factory=list)
    paths: dict[str, str] = field(default_factory=dict)
    val: HubSplit | None = None
    max_samples: int | None = None


def column_mapping(
    prompt_column: str, answer_column: str, answer_format: AnswerFormat, expert_column: str | None
) -> ToExample:
    """``to_example`` for a table with a problem column (text or chat list: the last user message), an
    answer column turned into a reference by ``answer_format``, and an optional expert column (text or
    chat list: the last assistant message). Columns may be dotted paths into struct columns."""

    def to_example(row: Mapping[str, Any], index: int) -> tuple[str | None, str | None, str | None]:
        problem = cell_text(get_column(row, prompt_column), role="user")
        answer = cell_text(get_column(row, answer_column), role="assistant")
        expert = cell_text(get_column(row, expert_column), role="assistant") if expert_column else None
        return problem, to_reference(answer, answer_format), expert

    return to_example


class HubPromptDataModule(PromptDataModule):
    """Math prompts from a hub dataset or a local file (defaults: LUFFY's OpenR1-Math 46k set).

    Args:
        path: hub dataset id, or a local ``.jsonl``/``.json``/``.parquet``/``.csv`` file or folder; None (with
            no ``train_set``): no training prompts, for evaluation-only configs.
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
        shuffle_seed: shuffle training rows with this seed before taking the first k; None keeps the order.
        train_set: a named training set (``openr1_math``, ``math_train``, ``gsm8k_train``, ``deepscaler``)
            whose spec gives hub id, split and row mapping; it replaces ``path`` / ``name`` / ``split`` and
            the column keys for training. None uses them.
        train_set_path: a local file in ``train_set``'s schema instead of its hub id.
        eval: the evaluation sets (:class:`HubEvalOptions`); None evaluates nothing.
        val_batch_size: prompts per validation batch.
        max_prompt_tokens: drop prompts longer than this many tokens (see
            :meth:`~echorl_lightning.data.base.PromptDataModule.check_data`); None leaves it to the caller.
        cache_dir: ``datasets`` cache folder; None uses the library default.
        verifier: any batch verifier callable; None uses :class:`MathVerifier`.
    """

    def __init__(
        self,
        path: str | None = "Elliott/Openr1-Math-46k-8192",
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
        shuffle_seed: int | None = None,
        train_set: str | None = None,
        train_set_path: str | None = None,
        eval: HubEvalOptions | None = None,  # the group's name, like model.init_args.eval
        val_batch_size: int = 64,
        max_prompt_tokens: int | None = None,
        cache_dir: str | None = None,
        verifier: VerifierFn | None = None,
    ) -> None:
        super().__init__(
            verifier=verifier, val_batch_size=val_batch_size, max_prompt_tokens=max_prompt_tokens
        )
        options = eval if eval is not None else HubEvalOptions()
        if "{prompt}" not in instruction:
            raise ValueError(f"instruction must contain the '{{prompt}}' placeholder, got {instruction!r}")
        val_format = options.val.answer_format if options.val is not None else None
        for key, fmt in (("answer_format", answer_format), ("eval.val.answer_format", val_format)):
            if fmt is not None and fmt not in ANSWER_FORMATS:
                raise ValueError(f"{key} must be one of {list(ANSWER_FORMATS)}, got {fmt!r}")
        for key, k in (("max_train_samples", max_train_samples), ("eval.max_samples", options.max_samples)):
            if k is not None and k < 1:
                raise ValueError(f"{key} must be >= 1 or None, got {k}")
        if path is None and options.val is not None and options.val.path is None:
            raise ValueError(
                "eval.val.path must be set when path is null (there is no training source to share)"
            )
        unknown = sorted(set(options.paths) - set(options.sets))
        if unknown:
            raise ValueError(f"eval.paths: {unknown} are not in eval.sets={options.sets}")
        for set_name in options.sets:
            BENCHMARKS.get(set_name)  # an unknown name raises, listing the known ones
        if train_set is not None:
            if BENCHMARKS.get(train_set).id_or_ood != "train":
                raise ValueError(f"train_set: {train_set!r} is an evaluation set, not a training set")
        elif train_set_path is not None:
            raise ValueError("train_set_path is set but train_set is not")
        self.path, self.name, self.split, self.revision = path, name, split, revision
        self.prompt_column, self.answer_column = prompt_column, answer_column
        self.expert_column, self.answer_format = expert_column, answer_format
        self.instruction, self.system_prompt, self.use_chat_template = (
            instruction,
            system_prompt,
            use_chat_template,
        )
        self.max_train_samples, self.shuffle_seed = max_train_samples, shuffle_seed
        self.train_set, self.train_set_path = train_set, train_set_path
        self.eval_options = options
        self.cache_dir = cache_dir
        self._rows: dict[str, MappedRows] = {}
        self._warned_template = False

    # ---- PromptDataModule hooks -------------------------------------------------------------------------
    def load_train_prompts(self) -> Sequence[PromptExample]:
        return [self._example(row) for row in self._mapped("train").rows]

    def load_val_prompts(self) -> Sequence[PromptExample]:
        if self.eval_options.val is None:
            return []
        return [self._example(row) for row in self._mapped("val").rows]

    def default_verifier(self) -> Verifier:
        return MathVerifier()

    def load_eval_sets(self) -> Sequence[EvalSet]:
        """The ``val`` set (when ``eval.val`` is set), then one set per name of ``eval.sets``."""
        sets = list(super().load_eval_sets())
        math_verifier: Verifier | None = None
        for set_name in self.eval_options.sets:
            spec = BENCHMARKS.get(set_name)
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
                for row in self._mapped(set_name).rows
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

    def has_train_source(self) -> bool:
        return self.path is not None or self.train_set is not None

    def describe_source(self, source: str) -> str:
        """``"train"``, ``"val"`` or a benchmark name, with where its rows come from."""
        if source == "train" and self.train_set is not None:
            where = self.train_set_path or BENCHMARKS.get(self.train_set).hub_id
            return f"train_set {self.train_set!r} from {where!r}"
        if source == "train" and self.path is not None:
            return f"train from {TableSource(self.path, self.name, self.split).describe()}"
        if source == "val" and self.eval_options.val is not None:
            return f"val from {self._val_source().describe()}"
        if source in self.eval_options.sets:
            where = self.eval_options.paths.get(source) or BENCHMARKS.get(source).hub_id
            return f"eval set {source!r} from {where!r}"
        return super().describe_source(source)

    # ---- rows -------------------------------------------------------------------------------------------
    def _mapped(self, source: str) -> MappedRows:
        """Load, map and filter one split once (``"train"``, ``"val"`` or a benchmark name); the templated
        prompts are rebuilt from these rows after :meth:`connect`."""
        if source not in self._rows:
            mapped = self._load(source)
            self.skipped[source] = dict(mapped.skipped)
            self.no_expert[source] = mapped.no_expert
            self._rows[source] = mapped
        return self._rows[source]

    def _load(self, source: str) -> MappedRows:
        if source == "train" and self.train_set is not None:
            return load_benchmark(
                self.train_set,
                path=self.train_set_path,
                cache_dir=self.cache_dir,
                limit=self.max_train_samples,
                shuffle_seed=self.shuffle_seed,
                hint=f"set {KEY}.train_set_path to a local file in {self.train_set!r}'s schema",
                label=f"train_set {self.train_set!r}",
                key=f"{KEY}.train_set_path",
            )
        if source == "train":
            if self.path is None:
                raise ValueError(
                    f"{type(self).__name__} has no training prompts: {KEY}.path is null and train_set is not set"
                )
            return load_rows(
                TableSource(self.path, self.name, self.split, self.revision),
                column_mapping(
                    self.prompt_column, self.answer_column, self.answer_format, self.expert_column
                ),
                self._columns("", self.prompt_column, self.answer_column, self.expert_column),
                label="train",
                uid_prefix="train",
                limit=self.max_train_samples,
                shuffle_seed=self.shuffle_seed,
                expect_expert=self.expert_column is not None,
                cache_dir=self.cache_dir,
                hint=f"set {KEY}.path to a local file",
                key=f"{KEY}.path",
            )
        limit = self.eval_options.max_samples
        if source == "val":
            val = self.eval_options.val
            assert val is not None  # load_val_prompts asks only when it is set
            prompt_column = val.prompt_column or self.prompt_column
            answer_column = val.answer_column or self.answer_column
            return load_rows(
                self._val_source(),
                column_mapping(prompt_column, answer_column, val.answer_format or self.answer_format, None),
                self._columns("eval.val.", prompt_column, answer_column, None),
                label="val",
                uid_prefix="val",
                limit=limit,
                cache_dir=self.cache_dir,
                hint=f"set {KEY}.eval.val.path to a local file",
                key=f"{KEY}.eval.val.path" if val.path is not None else f"{KEY}.path",
            )
        return load_benchmark(
            source,
            path=self.eval_options.paths.get(source),
            cache_dir=self.cache_dir,
            limit=limit,
            hint=f"set {KEY}.eval.paths.{source} to a local file in its schema",
            label=f"eval set {source!r}",
            key=f"{KEY}.eval.paths.{source}",
        )

    def _val_source(self) -> TableSource:
        val = self.eval_options.val
        assert val is not None
        if val.path is None:
            return TableSource(
                self.path, val.name if val.name is not None else self.name, val.split, self.revision
            )
        return TableSource(val.path, val.name, val.split)

    @staticmethod
    def _columns(prefix: str, prompt: str, answer: str, expert: str | None) -> list[tuple[str, str]]:
        """(config key, column) pairs of a column mapping, for missing-column messages."""
        columns = [(f"{KEY}.{prefix}prompt_column", prompt), (f"{KEY}.{prefix}answer_column", answer)]
        return columns + ([(f"{KEY}.{prefix}expert_column", expert)] if expert is not None else [])

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

    def _example(self, row: Row) -> PromptExample:
        return PromptExample(self.render_prompt(row.problem), row.reference, expert=row.expert, uid=row.uid)
