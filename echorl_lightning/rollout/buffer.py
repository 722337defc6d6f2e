"""The training buffer: a rollout batch split into the micro-batches of one epoch.

Rows are sequences ``prompt + response`` (:class:`~echorl_lightning.rollout.batch.TokenBatch`, built by
:func:`~echorl_lightning.rollout.batch.pad_rollouts`). :func:`make_microbatches` shuffles rows once
per PPO epoch, cuts them into ``num_minibatches`` optimizer steps of ``accumulate`` micro-batches each, and
stamps every micro-batch with the counts of its optimizer step (``num_tokens``, ``num_seqs``,
``num_clips``) so the loss can be normalised over the global step (see ``echorl_lightning.training.loss``).
The counts are local here; the rollout callback sums them across ranks.

:class:`RolloutBuffer` is the iterable the training dataloader serves: a fixed number of micro-batches per
epoch (the same on every rank, so DDP stays in step), refilled by the rollout callback each epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import torch
from torch.utils.data import IterableDataset

from echorl_lightning.rollout.batch import RolloutBatch


def make_microbatches(
    batch: RolloutBatch,
    *,
    ppo_epochs: int,
    num_minibatches: int,
    accumulate: int,
    generator: torch.Generator,
    group_by_length: bool = True,
) -> list[RolloutBatch]:
    """Cut a rollout batch into the micro-batches of one training epoch.

    Args:
        batch: the N rows of the rollout batch (its ``num_*`` counts are ignored and recomputed here).
            ``pg_mask`` [N] and ``clip_mask`` [N, T] decide the counts.
        ppo_epochs: passes over the rows; rows are reshuffled for each pass.
        num_minibatches: optimizer steps per pass.
        accumulate: micro-batches per optimizer step (the trainer's ``accumulate_grad_batches``).
        generator: seeds the shuffles.
        group_by_length: within each optimizer step, sort rows by length before cutting the micro-batches, so
            rows of similar length share one (the step's gradient is the same sum either way).

    Returns:
        ``ppo_epochs * num_minibatches * accumulate`` micro-batches, each stamped with the LOCAL counts of
        its optimizer step (``num_tokens``: policy-gradient response tokens, ``num_seqs``: policy-gradient
        rows, ``num_clips``: rows holding an EchoClip) and cut to the columns its rows use
        (:meth:`~echorl_lightning.rollout.batch.TokenBatch.compact`). Raises when N < num_minibatches *
        accumulate (a micro-batch would be empty).
    """
    n = len(batch)
    chunks = num_minibatches * accumulate
    if n < chunks:
        raise ValueError(
            f"{n} rollout rows cannot fill {num_minibatches} mini-batches x {accumulate} accumulation steps"
        )
    out: list[RolloutBatch] = []
    for _ in range(ppo_epochs):
        order = torch.randperm(n, generator=generator)
        for rows in torch.tensor_split(order, num_minibatches):
            counts = {
                "num_tokens": (batch.response_mask[rows] * batch.pg_mask[rows, None]).sum(),
                "num_seqs": batch.pg_mask[rows].sum(),
                "num_clips": batch.clip_mask[rows].any(-1).float().sum(),
            }
            if group_by_length and accumulate > 1:
                lengths = batch.attention_mask[rows].sum(-1)  # [rows] real tokens of each row
                rows = rows[torch.sort(lengths, stable=True).indices]
            for micro_rows in torch.tensor_split(rows, accumulate):
                mb = batch.rows(micro_rows).compact()
                out.append(replace(mb, **{k: v.clone() for k, v in counts.items()}))
    return out


class RolloutBuffer(IterableDataset):
    """The micro-batches of the current epoch, served in order.

    Args:
        num_batches: micro-batches per epoch; fixed for the whole run so every rank and every epoch has
            the same length (Lightning reads ``len`` once).
        refill: called when an epoch's iteration begins (at the first batch request), before the batches
            are served: the rollout callback fills the buffer there when it holds another epoch's batches.
            Lightning requests the first batch of a run (and of a resumed run) before any epoch hook, once
            the epoch counter is restored, so this is the one place that sees the right epoch every time.
    """

    def __init__(self, num_batches: int, refill: Callable[[], None] | None = None) -> None:
        super().__init__()
        if num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        self.num_batches = num_batches
        self._refill = refill
        self._batches: list[RolloutBatch] | None = None
        self.epoch: int | None = None

    def fill(self, batches: list[RolloutBatch], epoch: int) -> None:
        if len(batches) != self.num_batches:
            raise ValueError(f"expected {self.num_batches} micro-batches, got {len(batches)}")
        self._batches = batches
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[RolloutBatch]:
        if self._refill is not None:
            self._refill()
        if self._batches is None:
            raise RuntimeError("the rollout buffer was read before the rollout callback filled it")
        yield from self._batches
