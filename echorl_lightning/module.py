"""The RLVR LightningModule: owns the policy (any HF causal LM), the RLVR loss and the EchoRL loss.

What it does per micro-batch (the rollout callback builds the micro-batches, see ``callbacks/rollout.py``):
one policy forward over ``prompt + response``, chunked log-probs at the rollout temperature, the method's
policy loss and aggregation, optional KL to a frozen reference model, and the echo NLL on the EchoClip
tokens, all from that one forward (EchoRL, arXiv 2605.31228; ECHORL.md "Echo loss": zero extra forwards).

It also evaluates: ``validation_step`` / ``test_step`` sample ``eval.n`` = k completions per prompt through
the rollout engine for every evaluation set of the datamodule (one dataloader per set), score them with that
set's verifier, and log per set ``<stage>/<set>/avg@k``, ``pass@1``, ``pass@k``, ``maj@k`` and
``response_length``, the group means ``<stage>/id_avg`` / ``<stage>/ood_avg`` of avg@k, and
``<stage>/accuracy``, the avg@k over every sample of every set. Left out here: LoRA/PEFT and FSDP-specific
model sharding (DDP is the supported multi-GPU strategy).
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import grad_norm
from torch import nn
from torchmetrics import MeanMetric
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from echorl_lightning.algorithms.presets import MethodConfig, MethodName
from echorl_lightning.data.base import EvalSet
from echorl_lightning.data.types import PromptExample
from echorl_lightning.eval.metrics import sampled_eval_metrics
from echorl_lightning.ops import logprobs_and_entropy
from echorl_lightning.rollout.hf_engine import HFGenerateEngine
from echorl_lightning.rollout.types import RolloutEngine, SamplingConfig
from echorl_lightning.training.config import AlgorithmOverrides, EchoConfig, EvalConfig
from echorl_lightning.training.loss import response_logits, rlvr_echo_loss

DTypeName = Literal["float32", "bfloat16", "float16"]
EvalStage = Literal["val", "test"]


def load_policy(path: str, dtype: DTypeName, **kwargs: Any) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` with a clear error naming the path."""
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), **kwargs)
    except OSError as err:
        raise ValueError(f"model: cannot load {path!r} (hub id or local folder): {err}") from err


class EchoRLModule(L.LightningModule):
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
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["engine"])
        self.method_cfg: MethodConfig = (algorithm or AlgorithmOverrides()).apply(method)
        self.echo_cfg = echo or EchoConfig()
        self.eval_cfg = eval or EvalConfig()
        self.engine: RolloutEngine = engine if engine is not None else HFGenerateEngine()
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.forward_chunk_size = forward_chunk_size
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
        self.policy = load_policy(model, dtype).train()
        if gradient_checkpointing:
            self.policy.gradient_checkpointing_enable()
        self.ref_policy: PreTrainedModel | None = None
        if self.method_cfg.kl_coef > 0:
            self.ref_policy = load_policy(model, dtype).eval().requires_grad_(False)
        self._engine_ready = False
        self.val_accuracy = MeanMetric()
        self.val_length = MeanMetric()
        self.test_accuracy = MeanMetric()
        self.test_length = MeanMetric()
        # per evaluation set, keyed "<stage>_<set>"; filled in ``setup`` (before the move to the device)
        self.eval_metrics = nn.ModuleDict()
        self.eval_lengths = nn.ModuleDict()

    # ---- the policy forward (the only one per micro-batch) ------------------------------------------
    def response_logprobs(
        self, batch: dict[str, torch.Tensor], temperature: float, model: torch.nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward over ``prompt + response``.

        Args:
            batch: ``input_ids``, ``attention_mask``, ``position_ids`` [n, P + T], ``responses`` [n, T],
                ``prompt_len`` (P).
            temperature: the rollout temperature tau (logits are divided by it).
            model: the network to run (default: the policy; the callback passes the reference model).

        Returns:
            ``(logp, entropy)``, each [n, T] float32; entropy is detached.
        """
        net = self.policy if model is None else model
        out = net(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            use_cache=False,
        )
        resp = batch["responses"]
        logits = response_logits(out.logits, int(batch["prompt_len"]), resp.shape[1])  # [n, T, V]
        return logprobs_and_entropy(logits, resp, temperature, chunk_size=self.forward_chunk_size)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logp, entropy = self.response_logprobs(batch, float(batch["temperature"]))
        scale = float(self.trainer.world_size * self.trainer.accumulate_grad_batches)
        loss, metrics = rlvr_echo_loss(
            logp,
            batch["old_logp"],
            batch["advantages"],
            batch["response_mask"],
            batch["pg_mask"],
            batch["clip_mask"],
            method=self.method_cfg,
            echo_coef=self.echo_cfg.coef if self.echo_cfg.enabled else 0.0,
            max_len=int(batch["max_len"]),
            num_tokens=batch["num_tokens"],
            num_seqs=batch["num_seqs"],
            num_clips=batch["num_clips"],
            scale=scale,
            ref_logp=batch.get("ref_logp"),
            off_policy_mask=batch.get("off_policy_mask"),
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {self.global_step}: {metrics}")
        n_tokens = batch["response_mask"].sum()
        metrics["actor/entropy"] = (entropy * batch["response_mask"]).sum() / n_tokens.clamp(min=1)
        self.log_dict(metrics, on_step=True, on_epoch=False, sync_dist=False, batch_size=len(logp))
        self.log("actor/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        norms = grad_norm(self.policy, norm_type=2)
        if "grad_2.0_norm_total" in norms:
            self.log("actor/grad_norm", norms["grad_2.0_norm_total"], on_step=True)

    # ---- engine and evaluation ----------------------------------------------------------------------
    def rollout_engine(self) -> RolloutEngine:
        """The engine, set up on first use and holding the policy's current weights."""
        if not self._engine_ready:
            self.engine.setup(self.policy, self.tokenizer)
            self._engine_ready = True
        self.engine.load_weights(self.policy)
        return self.engine

    def encode_prompts(self, prompts: list[str]) -> list[list[int]]:
        ids = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        for i, p in enumerate(ids):
            if not p:
                raise ValueError(f"prompt {i} tokenizes to nothing: {prompts[i]!r}")
        return ids

    def setup(self, stage: str) -> None:
        """Create the metrics of every evaluation set of the datamodule for this stage (once per key)."""
        prefix: EvalStage = "test" if stage == "test" else "val"
        if stage == "predict" or not hasattr(self.trainer.datamodule, "eval_sets"):
            return
        k = self.eval_cfg.n
        for eval_set in self.trainer.datamodule.eval_sets():
            key = f"{prefix}_{eval_set.name}"
            if key not in self.eval_metrics:
                self.eval_metrics[key] = sampled_eval_metrics(k, pass_ks=sorted({1, k})).to(self.device)
                self.eval_lengths[key] = MeanMetric().to(self.device)

    def _evaluate(self, batch: list[PromptExample], stage: EvalStage, dataloader_idx: int) -> None:
        """Sample k completions per prompt of one batch of evaluation set ``dataloader_idx``, score them
        with the set's verifier and update its metrics and the stage's overall accuracy and length."""
        eval_set: EvalSet = self.trainer.datamodule.eval_sets()[dataloader_idx]
        cfg = self.eval_cfg
        sampling = SamplingConfig(
            n=cfg.n,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=cfg.seed + self.global_rank,
        )
        engine = self.rollout_engine()
        completions = engine.generate(self.encode_prompts([ex.prompt for ex in batch]), sampling)
        flat = [c for group in completions for c in group]
        texts = self.tokenizer.batch_decode([c.token_ids for c in flat], skip_special_tokens=True)
        refs = [ex.reference for ex in batch for _ in range(cfg.n)]
        scores = torch.tensor(
            [float(s or 0.0) for s in eval_set.verifier(texts, refs)], device=self.device
        )  # [P * k]
        lengths = torch.tensor([float(len(c.token_ids)) for c in flat], device=self.device)  # [P * k]
        answers = [eval_set.answer_fn(text) for text in texts]
        key = f"{stage}_{eval_set.name}"
        per_prompt = [answers[i * cfg.n : (i + 1) * cfg.n] for i in range(len(batch))]
        self.eval_metrics[key].update(scores.view(len(batch), cfg.n), per_prompt)  # [P, k]
        self.eval_lengths[key].update(lengths)
        accuracy, length = (
            (self.val_accuracy, self.val_length) if stage == "val" else (self.test_accuracy, self.test_length)
        )
        accuracy.update(scores)
        length.update(lengths)

    def _eval_results(self, stage: EvalStage) -> dict[str, torch.Tensor]:
        """Compute (reduced over ranks) and reset every evaluation metric of ``stage``."""
        results: dict[str, torch.Tensor] = {}
        group_avgs: dict[str, list[torch.Tensor]] = {"id": [], "ood": []}
        for eval_set in self.trainer.datamodule.eval_sets():
            key = f"{stage}_{eval_set.name}"
            if key not in self.eval_lengths or not self.eval_lengths[key].update_called:
                continue
            for name, value in self.eval_metrics[key].compute().items():
                results[f"{stage}/{eval_set.name}/{name}"] = value.float()
            results[f"{stage}/{eval_set.name}/response_length"] = self.eval_lengths[key].compute()
            if eval_set.group is not None:
                group_avgs[eval_set.group].append(results[f"{stage}/{eval_set.name}/avg@{self.eval_cfg.n}"])
            self.eval_metrics[key].reset()
            self.eval_lengths[key].reset()
        for group, values in group_avgs.items():
            if values:
                results[f"{stage}/{group}_avg"] = torch.stack(values).mean()
        accuracy, length = (
            (self.val_accuracy, self.val_length) if stage == "val" else (self.test_accuracy, self.test_length)
        )
        if accuracy.update_called:
            results[f"{stage}/accuracy"] = accuracy.compute().float()
            results[f"{stage}/response_length"] = length.compute().float()
        accuracy.reset()
        length.reset()
        return results

    def _log_eval(self, stage: EvalStage) -> None:
        results = self._eval_results(stage)
        if f"{stage}/accuracy" not in results:
            return
        accuracy = results.pop(f"{stage}/accuracy")
        self.log(f"{stage}/accuracy", accuracy, prog_bar=stage == "val")
        self.log_dict(results)
        self.print(f"[{stage}] step {self.global_step}: accuracy {float(accuracy):.4f}")
        k = self.eval_cfg.n
        per_set = [
            f"{name.split('/')[1]} {float(value):.4f}"
            for name, value in results.items()
            if name.endswith(f"/avg@{k}")
        ]
        if len(per_set) > 1:
            self.print(f"[{stage}] step {self.global_step}: avg@{k} " + ", ".join(per_set))
        if stage == "val" and self.trainer.sanity_checking and self.logger is not None:
            # the sanity pass is not logged by Lightning: record it as the accuracy before training
            results["val/accuracy"] = accuracy
            self.logger.log_metrics({name: float(v) for name, v in results.items()}, step=self.global_step)

    def validation_step(self, batch: list[PromptExample], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "val", dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def test_step(self, batch: list[PromptExample], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "test", dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

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
        """Checkpoint the policy only (the reference model is reloaded from ``model``)."""
        sd = super().state_dict(*args, **kwargs)
        return {k: v for k, v in sd.items() if not k.startswith("ref_policy.")}

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        if self.ref_policy is not None:
            state_dict = dict(state_dict)
            state_dict.update({f"ref_policy.{k}": v for k, v in self.ref_policy.state_dict().items()})
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
