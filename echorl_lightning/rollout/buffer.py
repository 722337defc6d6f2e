"""The training buffer: padded rollout tensors, split into the micro-batches of one epoch.

Rows are sequences ``prompt + response``; prompts are left-padded to P tokens and responses right-padded to
T tokens, so the response of every row starts at column P and ``logits[:, P - 1 : P + T - 1]`` predict it.

:func:`pad_rollouts` builds the tensors of one rollout batch. :func:`make_microbatches` shuffles rows once
per PPO epoch, cuts them into ``num_minibatches`` optimizer steps of ``accumulate`` micro-batches each, and
stamps every micro-batch with the counts of its optimizer step (``num_tokens``, ``num_seqs``,
``num_clips``) so the loss can be normalised over the global step (see ``echorl_lightning.training.loss``).
The counts are local here; the rollout callback sums them across ranks.

:class:`RolloutBuffer` is the iterable the training dataloader serves: a fixed number of micro-batches per
epoch (the same on every rank, so DDP stays in step), refilled by the rollout callback each epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import IterableDataset

Batch = dict[str, torch.Tensor]

# Per-row tensors that are sliced into micro-batches (everything else is per-micro-batch).
ROW_KEYS = (
    "input_ids",
    "attention_mask",
    "responses",
    "response_mask",
    "pg_mask",
    "old_logp",
    "ref_logp",
    "advantages",
    "clip_mask",
    "off_policy_mask",
)


def pad_rollouts(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Pad N (prompt, response) pairs into one batch.

    Args:
        prompts: N prompt token-id lists (non-empty).
        responses: N response token-id lists (EOS kept where the response stopped).
        pad_id: token id written into padding (never counted: masks are built from lengths).

    Returns:
        ``input_ids`` [N, P + T] long, ``attention_mask`` [N, P + T] long, ``position_ids`` [N, P + T] long
        (0 at the first real token), ``responses`` [N, T] long, ``response_mask`` [N, T] float (1 on the
        response tokens, EOS included), ``prompt_len`` 0-dim long (= P).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    n = len(prompts)
    p_len = max(len(p) for p in prompts)
    t_len = max(1, max(len(r) for r in responses))
    input_ids = torch.full((n, p_len + t_len), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, p_len + t_len), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")
        input_ids[i, p_len - len(p) : p_len] = torch.as_tensor(list(p), dtype=torch.long)
        attention_mask[i, p_len - len(p) : p_len + len(r)] = 1
        if len(r):
            input_ids[i, p_len : p_len + len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [N, P + T]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "responses": input_ids[:, p_len:],
        "response_mask": attention_mask[:, p_len:].float(),
        "prompt_len": torch.tensor(p_len),
    }


def make_microbatches(
    batch: Batch,
    *,
    ppo_epochs: int,
    num_minibatches: int,
    accumulate: int,
    generator: torch.Generator,
) -> list[Batch]:
    """Cut a rollout batch into the micro-batches of one training epoch.

    Args:
        batch: per-row tensors (``ROW_KEYS`` present in it, first dim N) plus ``prompt_len``.
            ``pg_mask`` [N] (1 = the row takes part in the policy-gradient term) and ``clip_mask`` [N, T] bool
            decide the counts.
        ppo_epochs: passes over the rows; rows are reshuffled for each pass.
        num_minibatches: optimizer steps per pass.
        accumulate: micro-batches per optimizer step (the trainer's ``accumulate_grad_batches``).
        generator: seeds the shuffles.

    Returns:
        ``ppo_epochs * num_minibatches * accumulate`` micro-batches. Each holds its rows' tensors, the
        shared ``prompt_len`` and, as 0-dim float tensors, the LOCAL counts of its optimizer step:
        ``num_tokens`` (policy-gradient response tokens), ``num_seqs`` (policy-gradient rows),
        ``num_clips`` (rows holding an EchoClip). Rows are trimmed to the longest response of the
        micro-batch. A micro-batch may be empty of rows only if N < num_minibatches * accumulate, which
        raises instead.
    """
    n = batch["input_ids"].shape[0]
    chunks = num_minibatches * accumulate
    if n < chunks:
        raise ValueError(
            f"{n} rollout rows cannot fill {num_minibatches} mini-batches x {accumulate} accumulation steps"
        )
    p_len = int(batch["prompt_len"])
    out: list[Batch] = []
    for _ in range(ppo_epochs):
        order = torch.randperm(n, generator=generator)
        mb_rows = torch.tensor_split(order, num_minibatches)
        for rows in mb_rows:
            micro_rows = torch.tensor_split(rows, accumulate)
            pg_tokens = (batch["response_mask"][rows] * batch["pg_mask"][rows, None]).sum()
            counts = {
                "num_tokens": pg_tokens,
                "num_seqs": batch["pg_mask"][rows].sum(),
                "num_clips": batch["clip_mask"][rows].any(-1).float().sum(),
            }
            for mrows in micro_rows:
                mb = {k: batch[k][mrows] for k in ROW_KEYS if k in batch}
                t_len = max(1, int(mb["response_mask"].sum(-1).max()))
                for k in (
                    "responses",
                    "response_mask",
                    "old_logp",
                    "ref_logp",
                    "clip_mask",
                    "off_policy_mask",
                ):
                    if k in mb:
                        mb[k] = mb[k][:, :t_len]
                mb["input_ids"] = mb["input_ids"][:, : p_len + t_len]
                mb["attention_mask"] = mb["attention_mask"][:, : p_len + t_len]
                mb["position_ids"] = (mb["attention_mask"].cumsum(-1) - 1).clamp(min=0)
                mb["prompt_len"] = batch["prompt_len"]
                mb.update({k: v.clone() for k, v in counts.items()})
                out.append(mb)
    return out


class RolloutBuffer(IterableDataset):
    """The micro-batches of the current epoch, served in order.

    Args:
        num_batches: micro-batches per epoch; fixed for the whole run so every rank and every epoch has
            the same length (Lightning reads ``len`` once).
    """

    def __init__(self, num_batches: int) -> None:
        super().__init__()
        if num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        self.num_batches = num_batches
        self._batches: list[Batch] | None = None
        self.epoch: int | None = None

    def fill(self, batches: list[Batch], epoch: int) -> None:
        if len(batches) != self.num_batches:
            raise ValueError(f"expected {self.num_batches} micro-batches, got {len(batches)}")
        self._batches = batches
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Batch]:
        if self._batches is None:
            raise RuntimeError("the rollout buffer was read before the rollout callback filled it")
        yield from self._batches
