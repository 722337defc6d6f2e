"""Supervised warm-start (SFT) of the tiny policy on worked solutions.

Implements :class:`SFTModule`: a tiny Qwen2 or Llama built from scratch (the tiny config of
:mod:`recipes.tiny.model`, with the byte tokenizer or a tokenizer folder such as a task BPE of
:mod:`recipes.tiny.bpe`) or loaded from a folder, trained with token-mean next-token NLL on the response
tokens and EOS (:func:`response_nll`), AdamW with linear warm-up and cosine decay. Validation samples
``val_samples`` completions per prompt at ``val_temperature`` plus one greedy completion and logs
``val/pass@1`` (mean reward of the samples), ``val/frac_all_correct`` and ``val/frac_all_wrong`` (prompts with
all / none of the samples right: the degenerate groups EchoRL feeds on), ``val/greedy_acc``, ``val/eos_rate``
and ``val/response_len``. The warm-start gives RLVR and EchoRL a policy that already formats answers and
stops. Leaves out packing, gradient checkpointing and LoRA (the model has under 1M parameters).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from echorl_lightning.data.types import Verifier
from recipes.tiny.model import (
    EOS_TOKEN_ID,
    PAD_TOKEN_ID,
    Architecture,
    build_tiny_model,
    tiny_config,
)
from recipes.tiny.tokenizer import build_tokenizer


def response_nll(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-mean next-token NLL over the positions ``loss_mask`` marks.

    Args:
        logits: [N, L, V] the model's logits; ``logits[:, t]`` predicts ``input_ids[:, t + 1]``.
        input_ids: [N, L] the sequences.
        loss_mask: [N, L] 1 where the token at that position is a target (response tokens and EOS).

    Returns:
        The scalar loss and ``{"tokens": number of target tokens}`` (detached).
    """
    targets = input_ids[:, 1:]  # [N, L-1]
    mask = loss_mask[:, 1:].to(logits.dtype)  # [N, L-1]
    nll = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="none"
    )  # [N*(L-1)]
    nll = nll.view_as(mask)  # [N, L-1]
    tokens = mask.sum()
    loss = (nll * mask).sum() / tokens.clamp(min=1.0)
    return loss, {"tokens": tokens.detach()}


@torch.no_grad()
def sample_completions(
    model: PreTrainedModel,
    prompt_ids: Sequence[Sequence[int]],
    n: int,
    max_new_tokens: int,
    temperature: float | None,
    eos_id: int,
    pad_id: int,
) -> tuple[list[list[int]], torch.Tensor]:
    """``n`` completions per prompt (rows of one prompt contiguous), greedy when ``temperature`` is None.

    Returns the completion token ids cut before the first EOS, and ``ended`` [len(prompt_ids) * n], True
    where the completion produced EOS within ``max_new_tokens``.
    """
    rows = [list(p) for p in prompt_ids for _ in range(n)]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [N, P] left-padded
    attention_mask = torch.zeros_like(input_ids)  # [N, P]
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row)
        attention_mask[i, width - len(row) :] = 1
    input_ids = input_ids.to(model.device)
    attention_mask = attention_mask.to(model.device)
    # top_k=0 and top_p=1.0: the full distribution (transformers' own default would be top_k=50)
    sampling: dict[str, Any] = (
        {"do_sample": False}
        if temperature is None
        else {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    )
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        **sampling,
    )
    generated = out[:, width:].cpu()  # [N, T]
    completions: list[list[int]] = []
    ended = torch.zeros(len(rows), dtype=torch.bool)
    for i, row in enumerate(generated.tolist()):
        if eos_id in row:
            ended[i] = True
            row = row[: row.index(eos_id)]
        completions.append(row)
    return completions, ended


class SFTModule(L.LightningModule):
    """Next-token SFT of the tiny policy, with sampled pass@1 at validation.

    Args:
        model_path: a folder with an HF causal LM and its tokenizer to start from; None builds the tiny
            model of :func:`tiny_config` from scratch.
        architecture: ``"qwen2"`` or ``"llama"``, the from-scratch model's (ignored with ``model_path``;
            a tokenizer with GPT-2's pre-tokenizer needs ``"llama"``, see :mod:`recipes.tiny.bpe`).
        tokenizer_path: a tokenizer folder for the from-scratch model (EOS id 256, pad id 257, as
            :func:`~recipes.tiny.bpe.train_bpe_tokenizer` writes); None = the byte tokenizer.
        hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, intermediate_size,
            max_position_embeddings: the tiny config (ignored with ``model_path``).
        head_dim: the attention head size of a from-scratch Llama (None = ``hidden_size //
            num_attention_heads``; the shipped models' 32 is a size vLLM's CPU attention serves, see
            :func:`~recipes.tiny.model.tiny_config`).
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps; then cosine decay to ``min_lr_ratio * lr`` at ``max_steps``.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        val_samples: sampled completions per validation prompt (G of the degenerate-group statistics).
        val_temperature: sampling temperature at validation.
        max_new_tokens: response length limit at validation.
        val_seed: seed of validation sampling (the training RNG state is saved and restored around it).
    """

    def __init__(
        self,
        model_path: str | None = None,
        architecture: Architecture = "qwen2",
        tokenizer_path: str | None = None,
        hidden_size: int = 96,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        num_key_value_heads: int = 2,
        intermediate_size: int = 256,
        max_position_embeddings: int = 256,
        head_dim: int | None = None,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 50,
        min_lr_ratio: float = 0.1,
        val_samples: int = 8,
        val_temperature: float = 1.0,
        max_new_tokens: int = 96,
        val_seed: int = 1234,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if model_path is None:
            if tokenizer_path is None:
                self.tokenizer = build_tokenizer()
            else:
                self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
                ids = (self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
                if ids != (EOS_TOKEN_ID, PAD_TOKEN_ID):
                    raise ValueError(
                        f"SFTModule: tokenizer_path {tokenizer_path!r} has EOS/pad ids {ids}; the tiny config "
                        f"needs {(EOS_TOKEN_ID, PAD_TOKEN_ID)} (build it with recipes.tiny.bpe)"
                    )
            config = tiny_config(
                architecture,
                hidden_size=hidden_size,
                num_hidden_layers=num_hidden_layers,
                num_attention_heads=num_attention_heads,
                num_key_value_heads=num_key_value_heads,
                intermediate_size=intermediate_size,
                max_position_embeddings=max_position_embeddings,
                vocab_size=len(self.tokenizer),
                head_dim=head_dim,
            )
            self.policy = build_tiny_model(config)
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
            # from_pretrained returns the model in eval mode: a model with dropout would train without it;
            # safetensors weights only (a pickled .bin is never read)
            self.policy = AutoModelForCausalLM.from_pretrained(
                model_path, dtype=torch.float32, use_safetensors=True
            ).train()
        if self.tokenizer.eos_token_id is None or self.tokenizer.pad_token_id is None:
            raise ValueError(f"SFTModule: the tokenizer of {model_path!r} needs both an EOS and a pad token")
        # epoch means over the validation prompts (torchmetrics: reset every epoch, summed across ranks)
        self.val_metrics = torch.nn.ModuleDict(
            {name: MeanMetric() for name in ("pass@1", "frac_all_correct", "frac_all_wrong", "greedy_acc")}
            | {name: MeanMetric() for name in ("eos_rate", "response_len")}
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self.policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, metrics = response_nll(logits, batch["input_ids"], batch["loss_mask"])
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/tokens", metrics["tokens"])
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    # ---- validation: sampled pass@1 and greedy accuracy ----------------------------------------------
    def _verifier(self) -> Verifier:
        verifier = getattr(self.trainer.datamodule, "verifier", None)
        if verifier is None:
            raise RuntimeError("SFTModule: validation needs a datamodule with a `verifier` attribute")
        return verifier

    def validation_step(self, batch: dict[str, list[str]], batch_idx: int) -> None:
        """``batch``: ``{"prompts": [B texts], "references": [B answers]}``."""
        tok, hp = self.tokenizer, self.hparams
        prompt_ids = tok(batch["prompts"], add_special_tokens=False)["input_ids"]
        references = batch["references"]
        g = hp.val_samples
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hp.val_seed + batch_idx)
            sampled, ended = sample_completions(
                self.policy,
                prompt_ids,
                g,
                hp.max_new_tokens,
                hp.val_temperature,
                tok.eos_token_id,
                tok.pad_token_id,
            )
        greedy, _ = sample_completions(
            self.policy, prompt_ids, 1, hp.max_new_tokens, None, tok.eos_token_id, tok.pad_token_id
        )
        verifier = self._verifier()
        scores = verifier(tok.batch_decode(sampled), [r for r in references for _ in range(g)])
        greedy_scores = verifier(tok.batch_decode(greedy), references)
        rewards = torch.tensor([s or 0.0 for s in scores]).view(len(references), g)  # [B, G]
        lengths = torch.tensor(
            [len(c) + int(e) for c, e in zip(sampled, ended.tolist(), strict=True)]
        )  # [B*G]
        values = {
            "pass@1": rewards,
            "frac_all_correct": (rewards == 1.0).all(dim=1).float(),
            "frac_all_wrong": (rewards == 0.0).all(dim=1).float(),
            "greedy_acc": torch.tensor([s or 0.0 for s in greedy_scores]),
            "eos_rate": ended.float(),
            "response_len": lengths.float(),  # EOS counts as a token
        }
        for name, value in values.items():
            metric = self.val_metrics[name]
            metric.update(value.to(self.device))
            self.log(f"val/{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "pass@1")

    # ---- optimisation --------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.policy.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), hp.warmup_steps + 1)

        def scale(step: int) -> float:
            if step < hp.warmup_steps:
                return (step + 1) / hp.warmup_steps
            progress = min(1.0, (step - hp.warmup_steps) / (total - hp.warmup_steps))
            return hp.min_lr_ratio + (1.0 - hp.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, scale)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
