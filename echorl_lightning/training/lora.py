"""LoRA for the policy: the YAML settings, the peft wrapper, the reference model without a second copy, and
adapter-only checkpoints.

RLVR post-training (EchoRL and the GRPO family it plugs into) with LoRA trains low-rank adapters
``W + (alpha / r) * B @ A`` on the chosen linear layers and keeps the base weights ``W`` frozen. This file
implements:

* :class:`LoraConfig`: ``model.init_args.lora: {r, alpha, dropout, target_modules}``, checked when parsed;
* :func:`wrap_lora`: ``peft.get_peft_model`` with those settings (``B = 0`` at the start, so the wrapped
  policy computes exactly the base model's function until the first update);
* :func:`reference_model`: the KL reference as the policy with its adapters disabled (peft's
  ``disable_adapter()``), i.e. the frozen base, instead of a second loaded copy;
* :func:`trainable_state_dict` / :func:`with_frozen_weights`: checkpoints that hold only the trainable
  (adapter) tensors, and the frozen entries filled back in from the freshly loaded base when one is loaded.
  Resume is exact because the base weights are never modified: the merged weights for engines and export
  (``echorl_lightning.training.lora_merge``) are produced without peft's merge/unmerge round trip, which
  changes the base weights by rounding.

Left out: DoRA and other LoRA variants, adapters on the LM head or the embeddings (the hidden-state
log-prob path needs a plain ``nn.Linear`` head, ``training.forward``), several adapters at once, quantized
(QLoRA) bases, and FSDP-sharded adapters (not tested). ``dropout`` > 0 makes the training forward stochastic
while the no-grad old-log-prob pass runs in eval mode, so an exactly on-policy step no longer has ratio 1.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import peft
from torch import Tensor, nn

from echorl_lightning.bounds import integer_problem, number_problem, raise_problems

#: Linear layers of a Qwen2 / Llama / Mistral decoder block (attention and MLP).
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: Modules LoRA must not wrap: the output head (must stay a plain nn.Linear) and the (often tied) embeddings.
FORBIDDEN_TARGETS = ("lm_head", "embed_tokens")


@dataclass
class LoraConfig:
    """LoRA settings of the policy (``model.init_args.lora``).

    Attributes:
        r: rank of the adapters (>= 1).
        alpha: scaling numerator; the update is ``(alpha / r) * B @ A``.
        dropout: dropout on the adapter input during training, in [0, 1).
        target_modules: names (last path component) of the linear layers to adapt.
    """

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))

    def __post_init__(self) -> None:
        key = "model.init_args.lora"
        raise_problems(
            integer_problem(f"{key}.r", self.r, 1),
            number_problem(f"{key}.alpha", self.alpha, low=0, low_open=True),
            number_problem(f"{key}.dropout", self.dropout, low=0, high=1, high_open=True),
        )
        if not self.target_modules:
            raise ValueError("model.init_args.lora.target_modules must name at least one linear layer")
        bad = [name for name in self.target_modules if name in FORBIDDEN_TARGETS]
        if bad:
            raise ValueError(
                f"model.init_args.lora.target_modules: {bad} cannot carry adapters here (the log-prob path "
                f"needs a plain LM head; embeddings are often tied to it); choose among the decoder's linear "
                f"layers, e.g. {list(DEFAULT_TARGETS)}"
            )

    def to_peft(self) -> peft.LoraConfig:
        """The equivalent ``peft.LoraConfig`` (causal-LM task, no bias training, B initialised to zero)."""
        return peft.LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )


def wrap_lora(model: nn.Module, cfg: LoraConfig) -> peft.PeftModel:
    """``model`` with LoRA adapters on ``cfg.target_modules``; only the adapters require a gradient.

    The base model is modified in place (peft injects its layers), so no second copy is made. Enable gradient
    checkpointing before wrapping: peft then makes the input embeddings' output require a gradient, so
    reentrant checkpointing still reaches the adapters although every base weight is frozen.

    Raises:
        ValueError: no module of ``model`` matches ``cfg.target_modules`` (peft's message names them).
    """
    if isinstance(model, peft.PeftModel):
        raise ValueError("wrap_lora: the model already carries peft adapters")
    return peft.get_peft_model(model, cfg.to_peft())


def is_lora(model: nn.Module) -> bool:
    """Whether ``model`` is a peft-wrapped model."""
    return isinstance(model, peft.PeftModel)


@contextmanager
def reference_model(policy: peft.PeftModel) -> Iterator[peft.PeftModel]:
    """The frozen reference model for the KL term: ``policy`` with every adapter disabled (the base model).

    Inside the context the policy's forwards skip the adapters; on exit they are active again. Nothing is
    copied and no weight is touched.
    """
    if not is_lora(policy):
        raise TypeError(f"reference_model needs a peft-wrapped policy, got {type(policy).__name__}")
    with policy.disable_adapter():
        yield policy


def frozen_names(model: nn.Module, prefix: str = "") -> set[str]:
    """State-dict keys (with ``prefix``) of ``model``'s frozen parameters and of all its buffers.

    Tied parameters are listed under every name they have in the state dict.
    """
    names = {prefix + n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return names | {prefix + n for n, _ in model.named_buffers(remove_duplicate=False)}


def trainable_state_dict(state_dict: Mapping[str, Any], model: nn.Module, prefix: str = "") -> dict[str, Any]:
    """``state_dict`` without the frozen entries of ``model`` (whose keys there start with ``prefix``).

    Args:
        state_dict: e.g. a LightningModule's state dict, in which ``model`` sits under ``prefix``
            (``"policy."``); entries of other submodules are kept.
        model: the peft-wrapped policy.
        prefix: ``model``'s key prefix in ``state_dict``.

    Returns:
        The adapter tensors (and every entry outside ``model``), in ``state_dict``'s order.
    """
    frozen = frozen_names(model, prefix)
    return {k: v for k, v in state_dict.items() if k not in frozen}


def with_frozen_weights(
    state_dict: Mapping[str, Any], model: nn.Module, prefix: str = ""
) -> dict[str, Tensor | Any]:
    """An adapter-only ``state_dict`` completed with ``model``'s current frozen entries, for a strict load.

    The frozen entries are the base weights ``model`` was loaded with (never modified by training, syncs or
    export), so loading the result restores the checkpointed policy exactly. Entries already present win.
    """
    frozen = frozen_names(model, prefix)
    current = model.state_dict(prefix=prefix)
    full = {k: v for k, v in current.items() if k in frozen}
    full.update(state_dict)
    return full
