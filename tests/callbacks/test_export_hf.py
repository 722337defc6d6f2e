"""ExportHFModel on an RL run: one epoch of GRPO + EchoRL with the rollout callback, then the export loads with
``AutoModelForCausalLM`` / ``AutoTokenizer`` and generates, with the trained weights."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from echorl_lightning.callbacks.export_hf import ExportHFModel
from echorl_lightning.callbacks.rollout import RolloutCallback
from transformers import AutoModelForCausalLM, AutoTokenizer

from echorl_lightning.module import EchoRLModule
from echorl_lightning.tasks import ProceduralDataModule
from echorl_lightning.tasks.arithmetic import ArithmeticTask
from echorl_lightning.tiny import TINY_MODEL_PATH

pytestmark = pytest.mark.slow


def test_export_after_an_rl_epoch_loads_and_generates(tmp_path: Path) -> None:
    L.seed_everything(0)
    module = EchoRLModule(model=TINY_MODEL_PATH, lr=1e-3)
    data = ProceduralDataModule(ArithmeticTask(), num_train=64, num_val=0)
    data.connect(module.tokenizer)
    out = tmp_path / "export"
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        callbacks=[
            RolloutCallback(prompts_per_epoch=8, group_size=4, max_new_tokens=48, seed=0),
            ExportHFModel(str(out)),
        ],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, data)
    loaded = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    trained = module.policy.state_dict()
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, trained[name], rtol=0, atol=0)
    start = AutoModelForCausalLM.from_pretrained(TINY_MODEL_PATH).state_dict()
    assert any(not torch.equal(v, start[k]) for k, v in loaded.state_dict().items())  # the RL step is in it
    prompt = tokenizer("Q: 1+2*3\n", return_tensors="pt", add_special_tokens=False)
    generated = loaded.generate(**prompt, max_new_tokens=16, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]


def test_export_refuses_a_module_without_a_policy_before_training() -> None:
    class NoPolicy(L.LightningModule):
        pass

    with pytest.raises(TypeError, match="policy"):
        ExportHFModel("unused").on_fit_start(L.Trainer(logger=False), NoPolicy())


def test_export_every_n_epochs_leaves_a_folder_per_checkpoint(tmp_path: Path) -> None:
    L.seed_everything(0)
    module = EchoRLModule(model=TINY_MODEL_PATH, lr=1e-3)
    data = ProceduralDataModule(ArithmeticTask(), num_train=64, num_val=0)
    out = tmp_path / "export"
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        callbacks=[
            RolloutCallback(prompts_per_epoch=4, group_size=2, max_new_tokens=24, seed=0),
            ExportHFModel(str(out), every_n_epochs=1),
        ],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, data)

    def weights(path: Path) -> dict[str, torch.Tensor]:
        return AutoModelForCausalLM.from_pretrained(path).state_dict()

    start, first, second, final = (weights(p) for p in (TINY_MODEL_PATH, out / "epoch1", out / "epoch2", out))
    assert AutoTokenizer.from_pretrained(out / "epoch1") is not None
    assert all(torch.equal(second[k], v) for k, v in final.items())  # after epoch 2 = the end of fit
    assert any(not torch.equal(first[k], v) for k, v in final.items())  # epoch 2's update is not in epoch1
    assert any(not torch.equal(first[k], v) for k, v in start.items())  # epoch 1's update is


@pytest.mark.parametrize("bad", [0, -1, True])
def test_export_every_n_epochs_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(ValueError, match="every_n_epochs"):
        ExportHFModel("unused", every_n_epochs=bad)
