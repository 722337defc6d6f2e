"""Datamodules of the embedded arithmetic task (see :mod:`echorl_lightning.data.arithmetic`).

Implements two datamodules:

- :class:`ArithmeticDataModule`, the RLVR one (a :class:`PromptDataModule`): a pool of ``num_train``
  training prompts, ``num_val`` evaluation prompts from the ``val``/``test``/``ood`` split, the strict
  :class:`ExactMatchVerifier` and the step checker of worked solutions; every prompt carries its
  reference solution as ``expert`` (for LUFFY).
- :class:`ArithmeticSFTDataModule`, the supervised warm-start one: an endless, seeded stream of tokenized
  ``prompt + solution + EOS`` sequences whose loss mask covers the response tokens and EOS, plus the same
  evaluation prompts and verifier for sampled pass@1.

The loss mask is built from the token counts, never from ``input_ids != pad``: when EOS doubles as the pad
token, a pad-based mask drops EOS from the loss and the model never learns to stop. Used by the EchoRL CPU
demo (EchoRL, arXiv 2605.31228). Leaves out chat templates (the tiny model reads raw ``Q: ...`` prompts).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightning.pytorch as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from echorl_lightning.data.arithmetic import (
    DEFAULT_DIFFICULTY,
    ArithmeticStepChecker,
    Difficulty,
    Split,
    make_problem,
)
from echorl_lightning.data.base import EvalSet, PromptDataModule
from echorl_lightning.data.types import PromptExample, StepChecker, Verifier, VerifierFn
from echorl_lightning.rewards.exact_match import ExactMatchVerifier, extract_answer

EvalSplit = Literal["val", "test", "ood"]


@dataclass
class ArithmeticEvalSpec:
    """One named evaluation set of the arithmetic task (``data.init_args.eval_sets`` in YAML).

    Attributes:
        name: the set's name in metric keys (``val/<name>/avg@k``).
        split: the held-out hash bucket it draws from (``ood`` also adds two operands, see
            :func:`~echorl_lightning.data.arithmetic.ood_difficulty`).
        difficulty: the generator knobs of this set; None = the datamodule's training difficulty.
        group: ``id`` / ``ood`` (averaged into ``val/id_avg`` / ``val/ood_avg``) or None.
        num: number of prompts; None = the datamodule's ``num_val``.
    """

    name: str
    split: EvalSplit = "val"
    difficulty: Difficulty | None = None
    group: Literal["id", "ood"] | None = "id"
    num: int | None = None


def arithmetic_prompts(
    split: Split, num: int, seed: int = 0, difficulty: Difficulty = DEFAULT_DIFFICULTY
) -> list[PromptExample]:
    """``num`` problems of ``split`` as prompt examples (reference = final answer, expert = solution)."""
    examples = []
    for i in range(num):
        problem = make_problem(split, i, seed, difficulty)
        examples.append(
            PromptExample(
                prompt=problem.prompt,
                reference=problem.answer,
                expert=problem.solution,
                uid=f"{split}-{seed}-{i}",
            )
        )
    return examples


class ArithmeticDataModule(PromptDataModule):
    """RLVR prompts of the arithmetic task.

    Args:
        num_train: size of the training prompt pool (problems 0..num_train-1 of the ``train`` split).
        num_val: number of evaluation prompts.
        split: which held-out split ``val_prompts`` serves (``ood`` = two more operands).
        seed: the generator seed shared by all splits (a problem is fixed by split, seed and index).
        difficulty: the expression generator's knobs.
        verifier: None uses :class:`ExactMatchVerifier`.
        val_batch_size: prompts per validation batch.
        eval_sets: named evaluation sets (e.g. an in-distribution ``val`` set and a harder out-of-distribution
            one); None = the single set ``val`` of ``num_val`` prompts from ``split``.
    """

    def __init__(
        self,
        num_train: int = 4096,
        num_val: int = 256,
        split: EvalSplit = "val",
        seed: int = 0,
        difficulty: Difficulty = DEFAULT_DIFFICULTY,
        verifier: VerifierFn | None = None,
        val_batch_size: int = 64,
        eval_sets: list[ArithmeticEvalSpec] | None = None,
    ) -> None:
        super().__init__(verifier=verifier, val_batch_size=val_batch_size)
        if num_train < 1 or num_val < 0:
            raise ValueError(
                f"ArithmeticDataModule: need num_train >= 1 and num_val >= 0, got {num_train}, {num_val}"
            )
        self.num_train = num_train
        self.num_val = num_val
        self.split: EvalSplit = split
        self.seed = seed
        self.difficulty = difficulty
        for spec in eval_sets or []:
            if spec.num is not None and spec.num < 1:
                raise ValueError(
                    f"ArithmeticDataModule: eval_sets[{spec.name!r}].num must be >= 1, got {spec.num}"
                )
        self.eval_specs = list(eval_sets) if eval_sets is not None else None

    def load_train_prompts(self) -> Sequence[PromptExample]:
        return arithmetic_prompts("train", self.num_train, self.seed, self.difficulty)

    def load_val_prompts(self) -> Sequence[PromptExample]:
        return arithmetic_prompts(self.split, self.num_val, self.seed, self.difficulty)

    def load_eval_sets(self) -> Sequence[EvalSet]:
        """The configured ``eval_sets`` (each scored by the datamodule's verifier), else the single ``val``."""
        if self.eval_specs is None:
            return super().load_eval_sets()
        return [
            EvalSet(
                spec.name,
                arithmetic_prompts(
                    spec.split,
                    self.num_val if spec.num is None else spec.num,
                    self.seed,
                    self.difficulty if spec.difficulty is None else spec.difficulty,
                ),
                self.verifier,
                spec.group,
                self.default_answer_fn,
                self.default_step_checker(),
            )
            for spec in self.eval_specs
        ]

    def default_verifier(self) -> Verifier:
        return ExactMatchVerifier()

    def default_step_checker(self) -> StepChecker | None:
        """Every ``a op b=c`` line correct and a legal reduction of the prompt's expression."""
        return ArithmeticStepChecker()

    def default_answer_fn(self, completion: str) -> str | None:
        """maj@k votes on the canonical integer of the ``Answer:`` line (the verifier's own extraction)."""
        return extract_answer(completion)


def sft_collate(
    prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], eos_id: int, pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-padded SFT batch of ``prompt + response + EOS`` rows.

    Returns ``input_ids`` [N, L] (pad_id after each row's end), ``attention_mask`` [N, L] (1 on the row's
    tokens) and ``loss_mask`` [N, L] (1 on response tokens and the EOS: the positions whose token the model
    must predict). Both masks come from the lengths, so EOS stays in the loss even if ``eos_id == pad_id``.
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"sft_collate: {len(prompt_ids)} prompts but {len(response_ids)} responses")
    rows = [[*p, *r, eos_id] for p, r in zip(prompt_ids, response_ids, strict=True)]
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)  # [N, L]
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)  # [N, L]
    loss_mask = torch.zeros((len(rows), length), dtype=torch.long)  # [N, L]
    for i, (row, prompt) in enumerate(zip(rows, prompt_ids, strict=True)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        loss_mask[i, len(prompt) : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}


def _prompt_batch(examples: list[PromptExample]) -> dict[str, list[str]]:
    return {"prompts": [ex.prompt for ex in examples], "references": [ex.reference for ex in examples]}


class _TrainStream(IterableDataset):
    """Training problems 0, 1, 2, ... of one seed, as (prompt, solution) pairs, without end."""

    def __init__(self, seed: int, difficulty: Difficulty) -> None:
        self.seed = seed
        self.difficulty = difficulty

    def __iter__(self) -> Iterator[tuple[str, str]]:
        index = 0
        while True:
            problem = make_problem("train", index, self.seed, self.difficulty)
            yield problem.prompt, problem.solution
            index += 1


class ArithmeticSFTDataModule(L.LightningDataModule):
    """Supervised warm-start data: tokenized worked solutions; evaluation prompts for pass@1.

    Args:
        batch_size: sequences per training step.
        num_val: number of evaluation prompts.
        split: which held-out split the validation loop samples on.
        seed: the generator seed (a problem is fixed by split, seed and index).
        difficulty: the expression generator's knobs.
        val_batch_size: prompts per validation batch.
    """

    def __init__(
        self,
        batch_size: int = 32,
        num_val: int = 256,
        split: EvalSplit = "val",
        seed: int = 0,
        difficulty: Difficulty = DEFAULT_DIFFICULTY,
        val_batch_size: int = 256,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_val = num_val
        self.split: EvalSplit = split
        self.seed = seed
        self.difficulty = difficulty
        self.val_batch_size = val_batch_size
        self.tokenizer: Any = None
        self.verifier: Verifier = ExactMatchVerifier()

    def connect(self, tokenizer: Any) -> None:
        """Bind the policy's tokenizer (``cli.py`` calls this before every subcommand)."""
        self.tokenizer = tokenizer

    def _collate(self, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
        if self.tokenizer is None:
            raise RuntimeError("ArithmeticSFTDataModule: no tokenizer bound; call connect(tokenizer) first")
        prompts = self.tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
        responses = self.tokenizer([s for _, s in pairs], add_special_tokens=False)["input_ids"]
        return sft_collate(prompts, responses, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            _TrainStream(self.seed, self.difficulty), batch_size=self.batch_size, collate_fn=self._collate
        )

    def val_dataloader(self) -> DataLoader:
        """Batches ``{"prompts": [str], "references": [str]}`` (plain lists: Lightning's device transfer
        rejects frozen dataclasses such as :class:`PromptExample`)."""
        examples = arithmetic_prompts(self.split, self.num_val, self.seed, self.difficulty)
        return DataLoader(examples, batch_size=self.val_batch_size, collate_fn=_prompt_batch)
