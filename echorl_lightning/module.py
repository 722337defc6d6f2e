"""The RLVR LightningModule: owns the policy (any HF causal LM), the RLVR loss and the EchoRL loss.

What it does per micro-batch (the rollout pipeline builds them, ``echorl_lightning.pipeline.steps``; they
arrive as :class:`~echorl_lightning.rollout.batch.RolloutBatch`): one policy forward over ``prompt +
response``, chunked log-probs at the rollout temperature the batch carries, the method's policy loss and
aggregation, optional KL to a frozen reference model, and the echo NLL on the EchoClip tokens, all from that
one forward (zero extra forwards for EchoRL). The rollout callback reads the policy, its reference, the
tokenizer, ``engine_sync`` and the configs (``method_cfg``, ``echo_cfg``, ``forward_cfg``), nothing else.

Validation and test sample ``eval.n`` = k completions per prompt through the same rollout engine for every
evaluation set of the datamodule (``echorl_lightning.eval.sampled``).

With ``lora`` set (``echorl_lightning.training.lora``) the policy carries LoRA adapters and only they train:
the KL reference is the policy with its adapters disabled (no second copy), engines that hold their own
weights are synced with the merged weights streamed one layer at a time (``training.lora_merge``; the HF
engine samples from the adapted policy itself), and checkpoints hold the adapters only. Left out: LoRA
together with FSDP2 sharding (refused in ``configure_model``).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import lightning.pytorch as L
import torch
from torch import Tensor
from transformers import AutoTokenizer, PreTrainedModel

from echorl_lightning.algorithms.presets import MethodConfig, MethodName
from echorl_lightning.eval.hooks import SampledEvalHooks
from echorl_lightning.eval.sampled import SampledEvaluation
from echorl_lightning.pipeline.engine_sync import EngineSync
from echorl_lightning.rollout.batch import RolloutBatch, TokenBatch
from echorl_lightning.rollout.hf_engine import HFGenerateEngine
from echorl_lightning.rollout.types import RolloutEngine
from echorl_lightning.training.checkpoint_safety import CheckpointRefused, load_safetensors_model
from echorl_lightning.training.config import AlgorithmOverrides, EchoConfig, EvalConfig, check_optimizer
from echorl_lightning.training.guard import NumericalGuard, non_finite_parameters
from echorl_lightning.training.lora import (
    LoraConfig,
    is_lora,
    trainable_state_dict,
    with_frozen_weights,
    wrap_lora,
)
from echorl_lightning.training.loss import rlvr_echo_loss
from echorl_lightning.training.passes import ForwardConfig, response_logprobs
from echorl_lightning.training.run_identity import (
    CHECKPOINT_KEY,
    identity_differences,
    refuse_foreign_checkpoint,
    run_identity,
    state_differences,
)
from echorl_lightning.training.sharding import apply_fsdp2, is_fsdp2, sharding_config, total_grad_norm
from echorl_lightning.training.step_metrics import StepMetrics

DTypeName = Literal["float32", "bfloat16", "float16"]
log = logging.getLogger(__name__)


def load_policy(path: str, dtype: DTypeName, **kwargs: Any) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` of safetensors weights only, with a clear error naming the path."""
    try:
        return load_safetensors_model(path, dtype=getattr(torch, dtype), **kwargs)
    except (OSError, CheckpointRefused) as err:
        raise ValueError(f"model: cannot load {path!r} (hub id or local folder): {err}") from err


class EchoRLModule(SampledEvalHooks, L.LightningModule):
    """RLVR post-training of a causal LM with an optional EchoRL term.

    Args:
        model: hub id or local folder of the policy (``echorl_lightning.tiny.TINY_MODEL_PATH`` for the
            embedded default).
        tokenizer: hub id or folder of the tokenizer; None uses ``model``.
        dtype: parameter dtype of the policy (the optimizer runs in it; use bf16-mixed precision in the
            trainer for float32 master weights).
        gradient_checkpointing: trade compute for activation memory.
        method: RLVR method preset (grpo, dr_grpo, dapo, rloo, reinforce_pp, gspo, luffy).
        algorithm: per-axis overrides of the preset.
        echo: EchoRL settings.
        engine: the rollout engine (HF generate by default; ``VLLMEngine`` on GPUs).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warmup in optimizer steps.
        eval: sampling for validation/test.
        forward_chunk_size: rows of logits processed at a time by the log-prob/entropy op (None: auto).
        logprob_impl: ``hidden`` (default): log-probs and entropy from the decoder's hidden states, chunk by
            chunk, never the [n, P + T, V] logits; ``full_logits``: the model's own logits (for model types
            the hidden path does not know, and for reference).
        max_consecutive_skips: optimizer steps with a non-finite loss or gradient are skipped (nothing
            applied, counted in ``actor/skipped_steps``); this many in a row stop the run.
        lora: LoRA adapters on the policy (r, alpha, dropout, target_modules); None trains every weight.

    The policy (and the reference model) are loaded in :meth:`configure_model`, when the trainer starts (call it
    yourself to use the module outside a trainer), so a run checks its config and data before it spends time
    loading weights.
    """

    def __init__(
        self,
        model: str,
        tokenizer: str | None = None,
        dtype: DTypeName = "float32",
        gradient_checkpointing: bool = False,
        method: MethodName = "grpo",
        algorithm: AlgorithmOverrides | None = None,
        echo: EchoConfig | None = None,
        engine: RolloutEngine | None = None,
        lr: float = 1e-6,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        eval: EvalConfig | None = None,
        forward_chunk_size: int | None = None,
        logprob_impl: Literal["hidden", "full_logits"] = "hidden",
        max_consecutive_skips: int = 3,
        lora: LoraConfig | None = None,
    ) -> None:
        super().__init__()
        check_optimizer(lr, weight_decay, warmup_steps)
        self.save_hyperparameters(ignore=["engine"])
        self.method_cfg: MethodConfig = (algorithm or AlgorithmOverrides()).apply(method)
        self.echo_cfg = echo or EchoConfig()
        self.eval_cfg = eval or EvalConfig()
        self.engine: RolloutEngine = engine if engine is not None else HFGenerateEngine()
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.forward_cfg = ForwardConfig(forward_chunk_size, full_logits=logprob_impl == "full_logits")
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
        self._source = (model, dtype, gradient_checkpointing)
        self.lora_cfg = lora
        self.guard = NumericalGuard(max_consecutive_skips)
        self.step_metrics = StepMetrics()
        self.engine_sync = EngineSync(self.engine)
        self.policy: PreTrainedModel | None = None  # loaded by configure_model
        self.ref_policy: PreTrainedModel | None = None
        self.evaluation = SampledEvaluation(self.eval_cfg.n)

    # ---- the networks -----------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Load the policy (and, with a KL term, the frozen reference model) once; under a strategy with a
        device mesh (``ModelParallelStrategy``, ``training.sharding.FSDP2Strategy``) shard both with FSDP2."""
        if self.policy is None:
            model, dtype, gradient_checkpointing = self._source
            policy = load_policy(model, dtype).train()
            if gradient_checkpointing:  # non-reentrant: composes with FSDP2's hooks and needs no input grads
                policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if self.lora_cfg is not None:  # after checkpointing is enabled; only the adapters train
                policy = wrap_lora(policy, self.lora_cfg)
            self.policy = policy
            self.ref_policy = None
            if self.method_cfg.kl_coef > 0 and self.lora_cfg is None:  # LoRA: the base, adapters disabled
                self.ref_policy = load_policy(model, dtype).eval().requires_grad_(False)
        mesh = self.device_mesh
        if mesh is not None and is_lora(self.policy):
            raise NotImplementedError("model.init_args.lora with FSDP2 sharding is not supported; use DDP")
        if mesh is not None and not is_fsdp2(self.policy):
            config = sharding_config(getattr(self._trainer, "strategy", None))
            for net in (self.policy, self.ref_policy):
                if net is not None:
                    apply_fsdp2(net, mesh, config)

    def response_logprobs(
        self, batch: TokenBatch, temperature: float, model: torch.nn.Module | None = None
    ) -> tuple[Tensor, Tensor]:
        """One forward over ``prompt + response`` (``training.forward.response_logprobs``: from the decoder's
        hidden states chunk by chunk, no full-vocabulary logits, unless ``logprob_impl`` says so).

        Args:
            batch: the rows ([n, P + T] inputs, [n, T] responses).
            temperature: the rollout temperature tau (logits are divided by it).
            model: the network to run (default: the policy).

        Returns:
            ``(logp, entropy)``, each [n, T] float32; entropy is detached.
        """
        return response_logprobs(
            self.policy if model is None else model, batch, temperature, self.forward_cfg
        )

    def checkpoint_identity(self) -> dict[str, Any]:
        """This run's policy architecture and method (``training.run_identity``), written into checkpoints."""
        lora_r = self.lora_cfg.r if self.lora_cfg is not None else None
        return run_identity(self.policy.config, self.hparams["method"], self.method_cfg, lora_r)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another model or method (naming what differs), then mark the engine stale."""
        where = str(getattr(self._trainer, "ckpt_path", None) or "(in memory)")
        if CHECKPOINT_KEY in checkpoint:
            refuse_foreign_checkpoint(
                where, identity_differences(checkpoint[CHECKPOINT_KEY], self.checkpoint_identity())
            )
        elif "state_dict" in checkpoint:  # written before checkpoints carried an identity: compare tensors
            refuse_foreign_checkpoint(where, state_differences(checkpoint["state_dict"], self.state_dict()))
        self.engine_sync.invalidate()  # restored weights: the engine must sync again

    # ---- the update -------------------------------------------------------------------------------------
    def training_step(self, batch: RolloutBatch, batch_idx: int) -> Tensor:
        logp, entropy = self.response_logprobs(batch, batch.temperature)
        scale = float(self.trainer.world_size * self.trainer.accumulate_grad_batches)
        loss, metrics = rlvr_echo_loss(
            logp,
            logp.detach() if batch.old_logp is None else batch.old_logp,  # None: exactly on-policy
            batch.advantages,
            batch.response_mask,
            batch.pg_mask,
            batch.clip_mask,
            method=self.method_cfg,
            echo_coef=self.echo_cfg.coef,
            max_len=batch.max_response_len,
            num_tokens=batch.num_tokens,
            num_seqs=batch.num_seqs,
            num_clips=batch.num_clips,
            scale=scale,
            ref_logp=batch.ref_logp,
            off_policy_mask=batch.off_policy_mask,
            is_weight=batch.is_weight,
        )
        n_tokens = batch.response_mask.sum()
        metrics["actor/entropy"] = (entropy * batch.response_mask).sum() / n_tokens.clamp(min=1)
        self.step_metrics.add(metrics)  # logged once per optimizer step, over all micro-batches and ranks
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Log the step's metrics and gradient norm; skip the step (drop every gradient) when it is not finite."""
        self.log_dict(self.step_metrics.pop(self._reduce), on_step=True, on_epoch=False, batch_size=1)
        self.log("actor/lr", optimizer.param_groups[0]["lr"], on_step=True)
        total = total_grad_norm(self.policy.parameters())  # FSDP2: the full gradient's norm on every rank
        if total is None:
            return
        self.log("actor/grad_norm", total, on_step=True)
        if self.guard.check(float(total), self.global_step, self.lr):
            for p in self.policy.parameters():
                p.grad = None  # AdamW leaves parameters without a gradient untouched
            log.warning(
                "step %d: non-finite gradient norm %s, optimizer step skipped", self.global_step, total
            )
        self.log("actor/skipped_steps", float(self.guard.skipped), on_step=True)

    def _reduce(self, value: Tensor, op: str) -> Tensor:
        """``value`` reduced over ranks (sum, mean or max)."""
        if self.trainer.world_size == 1:
            return value
        value = value.to(self.device)
        if op == "max":
            return self.trainer.strategy.all_gather(value).max()
        return self.trainer.strategy.reduce(value, reduce_op=op)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Never write non-finite weights; record the run's identity (architecture, method)."""
        checkpoint[CHECKPOINT_KEY] = self.checkpoint_identity()
        bad = non_finite_parameters(self.policy.named_parameters())  # this rank's shard under FSDP2
        if self._reduce(torch.tensor(float(len(bad))), "sum") > 0:  # every rank refuses together
            raise FloatingPointError(
                f"refusing to checkpoint non-finite weights at step {self.global_step} ({len(bad)} parameters "
                f"on this rank, e.g. {bad[:3]})"
            )

    # ---- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        params = [p for p in self.policy.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.warmup_steps <= 0:
            return opt
        warm = self.warmup_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Checkpoint the policy only (the reference model is reloaded from ``model``); with LoRA, only the
        adapters (the frozen base is reloaded from ``model``)."""
        sd = super().state_dict(*args, **kwargs)
        sd = {k: v for k, v in sd.items() if not k.startswith("ref_policy.")}
        return trainable_state_dict(sd, self.policy, "policy.") if is_lora(self.policy) else sd

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        self.configure_model()
        if is_lora(self.policy):
            state_dict = with_frozen_weights(state_dict, self.policy, "policy.")
        if self.ref_policy is not None:
            state_dict = dict(state_dict)
            state_dict.update({f"ref_policy.{k}": v for k, v in self.ref_policy.state_dict().items()})
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
