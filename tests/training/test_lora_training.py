"""LoRA end to end on the shipped tiny model: a GRPO + EchoRL run with a real Trainer, the rollout callback and
the arithmetic task, KL to the reference (the base with adapters disabled), a vLLM-like engine fed merged
weights through ``weight_stream.streamed_weights``, adapter-only checkpoints, exact resume, and an export
(merged model and adapter alone) that loads.

``EchoRLModule(lora=LoraConfig(...))`` and ``ExportHFModel(export_adapter=True)`` as a user configures them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import peft
import pytest
import torch
from echorl_lightning.callbacks.export_hf import ExportHFModel
from echorl_lightning.callbacks.rollout import RolloutCallback
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from echorl_lightning.module import EchoRLModule, load_policy
from echorl_lightning.rollout.batch import pad_rollouts
from echorl_lightning.rollout.collect import encode_prompts
from echorl_lightning.rollout.hf_engine import HFGenerateEngine
from echorl_lightning.rollout.types import Completion, SamplingConfig
from echorl_lightning.rollout.weight_stream import streamed_weights
from echorl_lightning.tasks import ProceduralDataModule
from echorl_lightning.tasks.arithmetic import ArithmeticTask
from echorl_lightning.tiny import TINY_MODEL_PATH
from echorl_lightning.training.checkpoint_safety import SafeCheckpointIO, load_checkpoint_file
from echorl_lightning.training.config import AlgorithmOverrides
from echorl_lightning.training.lora import (
    LoraConfig,
    is_lora,
)
from echorl_lightning.training.lora_merge import (
    checkpoint_name,
    is_adapter_name,
)
from tests.helpers.logprobs import logprobs

pytestmark = pytest.mark.slow


class CopyEngine:
    """A vLLM stand-in on the CPU: its own plain copy of the model, loaded from ``streamed_weights`` the way
    ``VLLMEngine.load_weights`` feeds vLLM (each tensor copied in as it arrives; an unknown name fails)."""

    def __init__(self) -> None:
        self.model: PreTrainedModel | None = None
        self.inner = HFGenerateEngine(batch_size=64)
        self.syncs = 0

    def setup(self, model: nn.Module, tokenizer: Any) -> None:
        self.model = load_policy(TINY_MODEL_PATH, "float32").eval()
        self.inner.setup(self.model, tokenizer)

    def load_weights(self, model: nn.Module) -> None:
        assert self.model is not None
        params = self.model.state_dict()
        loaded = set()
        for name, tensor in streamed_weights(model, torch.float32):
            params[name].copy_(tensor)  # KeyError on an adapter name
            loaded.add(name)
        assert loaded == set(params) - {"lm_head.weight"}  # tied head: loaded through the embeddings
        self.syncs += 1

    def generate(
        self, prompt_token_ids: Sequence[Sequence[int]], sampling: SamplingConfig
    ) -> list[list[Completion]]:
        return self.inner.generate(prompt_token_ids, sampling)


class KLProbe(L.Callback):
    def __init__(self) -> None:
        self.kl: list[float] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.kl.append(float(trainer.callback_metrics["actor/kl"]))


def run(tmp: Path, max_epochs: int, ckpt_path: str | None = None) -> tuple[EchoRLModule, KLProbe]:
    L.seed_everything(0)
    module = EchoRLModule(
        model=TINY_MODEL_PATH,
        lr=1e-3,
        algorithm=AlgorithmOverrides(kl_coef=0.05),
        engine=CopyEngine(),  # type: ignore[arg-type]
        lora=LoraConfig(r=4, alpha=8.0),
    )
    data = ProceduralDataModule(ArithmeticTask(), num_train=64, num_val=0)
    data.connect(module.tokenizer)
    probe = KLProbe()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=[
            RolloutCallback(prompts_per_epoch=4, group_size=4, max_new_tokens=40, seed=0),
            ModelCheckpoint(dirpath=tmp / "ckpt", filename="{epoch}", save_top_k=-1, every_n_epochs=1),
            ExportHFModel(str(tmp / "export"), export_adapter=True),
            probe,
        ],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        plugins=[SafeCheckpointIO()],  # reads the adapter-only checkpoint (LoraConfig hparams) weights-only
    )
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return module, probe


def test_lora_rl_run_syncs_resumes_and_exports(tmp_path: Path) -> None:
    module, probe = run(tmp_path / "a", max_epochs=2)
    policy = module.policy
    assert is_lora(policy) and module.ref_policy is None  # KL reference: the base with adapters disabled
    # epoch 0: B = 0, the policy is the base, KL exactly 0; epoch 1: one update away from it, KL > 0
    assert probe.kl[0] == 0.0 and probe.kl[1] > 0.0
    # only adapters changed: every base entry is still the shipped model's, bit for bit
    shipped = AutoModelForCausalLM.from_pretrained(TINY_MODEL_PATH).state_dict()
    base_sd = policy.get_base_model().state_dict()
    assert all(
        torch.equal(v, shipped[checkpoint_name(k)]) for k, v in base_sd.items() if not is_adapter_name(k)
    )
    assert any(v.abs().sum() > 0 for k, v in base_sd.items() if "lora_B" in k)
    # adapter-only checkpoint: 4 layers x 7 projections x (A, B)
    ckpt = load_checkpoint_file(tmp_path / "a" / "ckpt" / "epoch=0.ckpt", map_location="cpu")
    assert len(ckpt["state_dict"]) == 56 and all("lora_" in k for k in ckpt["state_dict"])
    # the engine after a sync: the merged weights, and the policy's log-probs
    engine = module.engine_sync.engine_for(module.policy, module.tokenizer, module.global_step)
    assert isinstance(engine, CopyEngine) and engine.syncs == 3 and engine.model is not None
    merged = copy.deepcopy(policy).merge_and_unload().state_dict()
    assert all(torch.equal(v, merged[k]) for k, v in engine.model.state_dict().items())
    prompts = encode_prompts(module.tokenizer, ["Q: 7-8*6-2\n", "Q: 1+2*3\n"])
    out = engine.generate(prompts, SamplingConfig(n=2, max_new_tokens=32, seed=0))
    batch = pad_rollouts([p for p in prompts for _ in range(2)], [c.token_ids for g in out for c in g], 257)
    torch.testing.assert_close(logprobs(engine.model, batch), logprobs(policy, batch), rtol=0, atol=2e-5)
    # the export: a plain model with the merged weights, and the adapter alone on the shipped base
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "export")
    assert all(torch.equal(v, merged[k]) for k, v in exported.state_dict().items())
    adapter = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(TINY_MODEL_PATH), tmp_path / "a" / "export" / "adapter"
    )
    assert torch.equal(logprobs(adapter, batch), logprobs(policy, batch))
    # resume from the epoch-0 adapter-only checkpoint: the same final adapters, bit for bit
    resumed, _ = run(tmp_path / "b", max_epochs=2, ckpt_path=str(tmp_path / "a" / "ckpt" / "epoch=0.ckpt"))
    final, again = policy.state_dict(), resumed.policy.state_dict()
    assert final.keys() == again.keys() and all(torch.equal(again[k], v) for k, v in final.items())
