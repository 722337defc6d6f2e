"""The supervised warm-start (SFT) datamodule of any procedural task (arithmetic, Countdown).

Implements :class:`SFTDataModule`, which takes a :class:`~echorl_lightning.tasks.base.Task`: an endless,
seeded stream of tokenized ``prompt + solution + EOS`` rows (training problems 0, 1, 2, ... of one seed)
whose loss mask covers the solution and EOS, plus evaluation prompts and the task's verifier for the
warm-start's sampled pass@1.

The loss mask is built from the token counts (:func:`sft_collate`), never from ``input_ids != pad``: when EOS
doubles as the pad token, a pad-based mask drops EOS from the loss and the model never learns to stop. Leaves
out chat templates (the tiny model reads raw ``Q: ...`` prompts).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import lightning.pytorch as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from echorl_lightning.data.types import PromptExample, Verifier
from echorl_lightning.tasks.base import Task


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


def prompt_batch(examples: list[PromptExample]) -> dict[str, list[str]]:
    """``{"prompts": [str], "references": [str]}`` of a validation batch (plain lists: Lightning's device
    transfer rejects frozen dataclasses such as :class:`PromptExample`)."""
    return {"prompts": [ex.prompt for ex in examples], "references": [ex.reference for ex in examples]}


class TrainStream(IterableDataset):
    """Training problems 0, 1, 2, ... of one seed, as (prompt, solution) pairs, without end."""

    def __init__(self, task: Task, seed: int) -> None:
        self.task = task
        self.seed = seed

    def __iter__(self) -> Iterator[tuple[str, str]]:
        index = 0
        while True:
            problem = self.task.make_problem("train", index, self.seed)
            yield problem.prompt, problem.solution
            index += 1


class SFTDataModule(L.LightningDataModule):
    """Supervised warm-start data of a procedural task: tokenized solutions; evaluation prompts for pass@1.

    Args:
        task: the task at its training difficulty (training rows are its problems' solutions).
        batch_size: sequences per training step.
        num_val: number of evaluation prompts.
        split: which held-out split the validation loop samples on (one of the task's ``eval_splits``).
        seed: the generator seed (a problem is fixed by split, seed and index).
        val_batch_size: prompts per validation batch.
    """

    def __init__(
        self,
        task: Task,
        batch_size: int = 32,
        num_val: int = 256,
        split: str = "val",
        seed: int = 0,
        val_batch_size: int = 256,
    ) -> None:
        super().__init__()
        if split not in task.eval_splits:
            raise ValueError(f"SFTDataModule: split must be one of {list(task.eval_splits)}, got {split!r}")
        self.task = task
        self.batch_size = batch_size
        self.num_val = num_val
        self.split = split
        self.seed = seed
        self.val_batch_size = val_batch_size
        self.tokenizer: Any = None
        self.verifier: Verifier = task.verifier()

    def connect(self, tokenizer: Any) -> None:
        """Bind the policy's tokenizer (``cli.py`` calls this before every subcommand)."""
        self.tokenizer = tokenizer

    def _collate(self, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
        if self.tokenizer is None:
            raise RuntimeError(f"{type(self).__name__}: no tokenizer bound; call connect(tokenizer) first")
        prompts = self.tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
        responses = self.tokenizer([s for _, s in pairs], add_special_tokens=False)["input_ids"]
        return sft_collate(prompts, responses, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            TrainStream(self.task, self.seed), batch_size=self.batch_size, collate_fn=self._collate
        )

    def val_dataloader(self) -> DataLoader:
        """Batches ``{"prompts": [str], "references": [str]}`` (see :func:`prompt_batch`)."""
        examples = self.task.prompts(self.split, self.num_val, self.seed)
        return DataLoader(examples, batch_size=self.val_batch_size, collate_fn=prompt_batch)
