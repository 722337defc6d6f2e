"""Evaluation batches spread over ranks whole, so a metric does not depend on how many processes compute it.

Under DDP the usual distributed sampler pads a set to a multiple of the world size with repeated prompts (AIME24's
30 prompts become 32 on 8 GPUs) and interleaves prompts, so each rank's batches, and with them the sampling noise,
change with the world size. Here a set is cut into batches of ``batch_size`` prompts in order, batch ``i`` is
evaluated by rank ``i % world``, and every batch carries its global index (the module seeds its sampling with
the set's and the batch's index): each prompt is evaluated exactly once, in the same batch, with the same seed,
on any number of ranks. Ranks with fewer batches get empty ones (no prompt), so every rank runs the same number of
steps.

Left out: balancing batches by prompt length.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch.utils.data import IterableDataset

from echorl_lightning.data.types import PromptExample


@dataclass(frozen=True)
class EvalBatch:
    """One batch of an evaluation set.

    Attributes:
        set_index: the set's position in the datamodule's ``eval_sets()``.
        batch_index: the batch's position in the set (global, over all ranks).
        examples: its prompts, in set order (empty for a rank's padding batch).
    """

    set_index: int
    batch_index: int
    examples: list[PromptExample]

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[PromptExample]:
        return iter(self.examples)

    def __getitem__(self, i: int) -> PromptExample:
        return self.examples[i]


class RankBatches(IterableDataset):
    """This rank's whole batches of one evaluation set.

    Args:
        prompts: the set's prompts, in order.
        batch_size: prompts per batch.
        set_index: the set's index (stamped on every batch).
        rank: this process's global rank.
        world: the number of processes.
    """

    def __init__(
        self, prompts: Sequence[PromptExample], batch_size: int, set_index: int, rank: int, world: int
    ) -> None:
        super().__init__()
        if batch_size < 1 or world < 1 or not 0 <= rank < world:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world, got {batch_size}, {rank}, {world}")
        self.batches = [list(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]
        self.set_index, self.rank, self.world = set_index, rank, world

    def __len__(self) -> int:
        return -(-len(self.batches) // self.world)  # ceil: the same on every rank

    def __iter__(self) -> Iterator[EvalBatch]:
        for step in range(len(self)):
            index = step * self.world + self.rank
            examples = self.batches[index] if index < len(self.batches) else []
            yield EvalBatch(self.set_index, index, examples)
