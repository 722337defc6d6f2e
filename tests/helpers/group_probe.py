"""A test-only callback: after each rollout, writes which prompts this rank trains on and how many rows
each has, so a test can check that groups are whole and never shared between ranks."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import lightning.pytorch as L


class GroupProbe(L.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows: Counter[str] = Counter()
        buffer = trainer.datamodule.rollout_buffer
        for mb in buffer:  # RolloutBatch micro-batches (iterating fills the buffer for this epoch)
            p_len = mb.prompt_len
            for ids, mask in zip(mb.input_ids[:, :p_len], mb.attention_mask[:, :p_len], strict=True):
                rows[" ".join(str(int(t)) for t, m in zip(ids, mask, strict=True) if m)] += 1
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"epoch{trainer.current_epoch}_rank{trainer.global_rank}.json"
        path.write_text(json.dumps(rows))
