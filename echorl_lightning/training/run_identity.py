"""What makes a checkpoint this run's: the policy's architecture and the RLVR method, written into every
checkpoint and compared when one is loaded, so that resuming from another model's or another method's
checkpoint stops with a message saying what differs (instead of a tensor-size error, or silently training on).

Plain data only (str, int, bool, None), so a weights-only load reads it. A checkpoint written before the
identity existed is compared by its policy tensors' names and shapes instead (:func:`state_differences`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

#: Architecture fields compared (a model that differs in any of them cannot take the checkpoint's weights).
ARCHITECTURE_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "head_dim",
    "tie_word_embeddings",
)
#: Method fields compared: what the objective is, not its tunable coefficients (a resumed run may change lr or
#: clip ranges on purpose).
METHOD_KEYS = ("method", "adv_estimator", "policy_loss", "loss_agg_mode", "lora_r")

CHECKPOINT_KEY = "echorl_run"


def run_identity(config: Any, method: str, method_cfg: Any, lora_r: int | None) -> dict[str, Any]:
    """The identity of a run: its policy config's architecture fields and its method's objective.

    Args:
        config: the policy's Hugging Face config (its text config is read for multimodal ones).
        method: the method preset's name (``grpo``, ``dapo``, ...).
        method_cfg: the resolved ``MethodConfig``.
        lora_r: the LoRA rank, or None for full fine-tuning.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    identity: dict[str, Any] = {key: getattr(text, key, None) for key in ARCHITECTURE_KEYS}
    identity.update(
        method=method,
        adv_estimator=str(method_cfg.adv_estimator),
        policy_loss=str(method_cfg.policy_loss),
        loss_agg_mode=str(method_cfg.loss_agg_mode),
        lora_r=lora_r,
    )
    return {
        key: value if isinstance(value, (str, int, bool, type(None))) else str(value)
        for key, value in identity.items()
    }


def identity_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"<field>: <saved> in the checkpoint, <current> here"`` for each field that differs (the keys of either)."""
    keys = [key for key in (*ARCHITECTURE_KEYS, *METHOD_KEYS) if key in saved or key in current]
    return [
        f"{key}: {saved.get(key)!r} in the checkpoint, {current.get(key)!r} here"
        for key in keys
        if saved.get(key) != current.get(key)
    ]


def state_differences(
    saved: Mapping[str, Any], current: Mapping[str, torch.Tensor], limit: int = 3
) -> list[str]:
    """Differences between a checkpoint's policy tensors and this model's: missing, unexpected and resized
    names (at most ``limit`` of each), for checkpoints without an identity. Only ``policy.`` entries count."""
    saved_policy = {k: v for k, v in saved.items() if k.startswith("policy.")}
    here = {k: v for k, v in current.items() if k.startswith("policy.")}
    missing = [k for k in here if k not in saved_policy]
    unexpected = [k for k in saved_policy if k not in here]
    resized = [
        f"{k}: {tuple(saved_policy[k].shape)} in the checkpoint, {tuple(here[k].shape)} here"
        for k in here
        if k in saved_policy
        and hasattr(saved_policy[k], "shape")
        and tuple(saved_policy[k].shape) != tuple(here[k].shape)
    ]
    out = [f"missing from the checkpoint: {k}" for k in missing[:limit]]
    out += [f"not in this model: {k}" for k in unexpected[:limit]]
    return out + resized[:limit]


def refuse_foreign_checkpoint(where: str, differences: list[str]) -> None:
    """Raise ``ValueError`` naming the checkpoint and what differs, when anything does."""
    if differences:
        raise ValueError(
            f"checkpoint {where} was written by a different run and cannot be resumed here: "
            + "; ".join(differences)
            + ". Resume it with the config it was trained with, or start a new run from an exported model"
        )
