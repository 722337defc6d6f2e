"""One update on a fixed rollout buffer: 2 CPU processes (gloo) give the weights of 1 process on the same global
batch, under DDP and under FSDP2 (``FSDP2Strategy``, a ``ModelParallelStrategy`` with data_parallel_size=2).

The buffer (``tests/helpers/multiproc_worker.py``) is 8 rows of the embedded tiny model (tied embeddings) with GRPO +
KL (k3, so a sharded reference model is loaded) + EchoRL, split into two halves stamped with the counts of the
whole step. 1 process accumulates both halves into one optimizer step; 2 processes take one half each. The
update is AdamW at lr 1e-3, so each weight moves by about 1e-3 in the first step: a tolerance of 1e-5 is 1%
of a step, and training on one half only (the negative control below) misses by far more than that.

The FSDP2 run also exports through ``ExportHFModel`` (gathered one tensor at a time; the folder must load with
``AutoModelForCausalLM`` and hold the trained weights), saves Lightning's distributed checkpoint (the module's
state_dict override keeps ``ref_policy.*`` out of it) and resumes from it in a fresh Trainer for a second
update, which must equal two uninterrupted 1-process updates (so the sharded AdamW state was restored too);
the DDP run resumes from its single-file checkpoint the same way. Both read checkpoints weights-only
(``checkpoint_safety``): the resumes go through the safe readers, and each run then tries to resume from a
booby-trapped checkpoint of its format (DDP: a ``.ckpt`` file; FSDP2: a folder whose ``.metadata`` pickle would
run a command), which both ranks refuse, naming the file, without running it.
Marked ``slow``: each 2-process job starts two interpreters and takes 1-2 minutes on 2 busy cores.
"""

from __future__ import annotations

import json
import pickle
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from transformers import AutoModelForCausalLM

from echorl_lightning.tiny import TINY_MODEL_PATH
from echorl_lightning.training.checkpoint_safety import META_FILE, read_distributed_metadata
from tests.helpers.checkpoints import Trap
from tests.helpers.multiproc_worker import fit, fixed_buffer, worker

pytestmark = pytest.mark.slow

TOL = 1e-5


def spawn(job: dict[str, Any]) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    torch.multiprocessing.spawn(worker, args=(2, port, job), nprocs=2, join=True)


def exported(run: Path) -> dict[str, Tensor]:
    model = AutoModelForCausalLM.from_pretrained(run / "export", dtype=torch.float32)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    return model.state_dict()


def max_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def metrics(run: Path) -> dict[str, float]:
    return json.loads((run / "metrics.json").read_text())


def assert_both_ranks_refused(run: Path, source: Path, marker: Path) -> None:
    for rank in (0, 1):
        text = (run / f"refused_rank{rank}.txt").read_text()
        assert text.startswith(f"{source}: refused to load: its pickle calls posix.system"), text
    assert not marker.exists()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The buffer and the 1-process runs: one update, two updates, and one update on half the batch."""
    root = tmp_path_factory.mktemp("equality")
    batches = fixed_buffer()
    torch.save(batches, root / "buffer.pt")
    fit(batches, root / "one")
    fit(batches, root / "one_two_epochs", epochs=2)
    fit(batches[:1], root / "half")
    return root


def test_the_tolerance_can_fail(reference: Path) -> None:
    start = AutoModelForCausalLM.from_pretrained(TINY_MODEL_PATH, dtype=torch.float32).state_dict()
    one = exported(reference / "one")
    assert max_diff(one, start) > 5e-4  # AdamW's first step moves weights by ~lr = 1e-3
    assert max_diff(exported(reference / "half"), one) > 100 * TOL  # half the batch: a different update


def test_ddp_update_resume_and_refusal(reference: Path, tmp_path: Path) -> None:
    marker, trap = tmp_path / "marker", tmp_path / "trap" / "last.ckpt"
    trap.parent.mkdir()
    torch.save({"state_dict": {}, "hyper_parameters": {"echo": Trap(marker)}}, trap)
    job = {"strategy": "ddp", "buffer": str(reference / "buffer.pt"), "out": str(tmp_path), "resume": True}
    spawn({**job, "trap": str(trap)})
    assert max_diff(exported(tmp_path / "fit"), exported(reference / "one")) < TOL
    ddp, one = metrics(tmp_path / "fit"), metrics(reference / "one")
    for name in ("actor/grad_norm", "actor/pg_loss", "actor/kl", "echo/loss"):
        assert ddp[name] == pytest.approx(one[name], rel=TOL), name
    # resumed in a fresh Trainer from the epoch-0 file (config dataclasses in its hyperparameters)
    assert metrics(tmp_path / "resumed")["global_step"] == 2
    assert max_diff(exported(tmp_path / "resumed"), exported(reference / "one_two_epochs")) < TOL
    assert_both_ranks_refused(tmp_path, trap, marker)


def test_fsdp2_update_export_resume_and_refusal(reference: Path, tmp_path: Path) -> None:
    marker, trap = tmp_path / "marker", tmp_path / "trap" / "epoch=0-step=1.ckpt"
    trap.mkdir(parents=True)  # a distributed checkpoint folder whose .metadata would run a command
    torch.save({"global_step": 1}, trap / META_FILE)
    (trap / ".metadata").write_bytes(pickle.dumps(Trap(marker)))
    job = {"strategy": "fsdp2", "buffer": str(reference / "buffer.pt"), "out": str(tmp_path), "resume": True}
    spawn({**job, "trap": str(trap)})
    fsdp, one = metrics(tmp_path / "fit"), metrics(reference / "one")
    assert fsdp["embed_local_rows"] == 129  # really sharded: 258 embedding rows / 2 ranks
    # the export (gathered tensor by tensor) holds the trained weights, equal to the 1-process update
    assert max_diff(exported(tmp_path / "fit"), exported(reference / "one")) < TOL
    for name in ("actor/grad_norm", "actor/pg_loss", "actor/kl", "echo/loss"):
        assert fsdp[name] == pytest.approx(one[name], rel=TOL), name  # DTensor grad norm = the full one

    (ckpt,) = (tmp_path / "checkpoints").glob("*.ckpt")
    keys = read_distributed_metadata(ckpt / ".metadata").state_dict_metadata.keys()
    assert any(k.startswith("state_dict.policy.") for k in keys)
    assert not any("ref_policy" in k for k in keys)  # the module's state_dict override under DCP
    assert any(k.startswith("optimizer_0.") for k in keys)  # the sharded AdamW state

    resumed = metrics(tmp_path / "resumed")
    assert resumed["global_step"] == 2  # resumed at step 1, one more update
    assert max_diff(exported(tmp_path / "resumed"), exported(reference / "one_two_epochs")) < TOL
    assert_both_ranks_refused(tmp_path, trap / ".metadata", marker)
