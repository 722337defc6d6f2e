"""The embedded default policies: a byte-level tokenizer and a task-trained BPE over the same ids, tiny Qwen2
and Llama configs, their SFT warm-start, and the shipped warm-started models that the CPU demos and the
end-to-end tests run EchoRL (arXiv 2605.31228) on.

``TINY_MODEL_PATH`` (the arithmetic task: a Llama with q/k/v biases and the byte tokenizer) and
``TINY_COUNTDOWN_PATH`` (the Countdown task: a Llama of the same size with a 512-token BPE trained on Countdown
traces by ``bpe.train_bpe_tokenizer``, and a 512-position context) are Hugging Face folders (config, generation
config, safetensors, tokenizer) loadable with ``AutoModelForCausalLM.from_pretrained`` /
``AutoTokenizer.from_pretrained``. Both have attention head size 32 (hidden 96, 4 query / 2 KV heads), which
vLLM's CPU attention serves: they were trained at head size 24 (the arithmetic one as a Qwen2) and converted
exactly by :mod:`echorl_lightning.tiny.widen_heads`. Regenerate them with the commands in the headers of
``configs/warmstart_sft.yaml`` and ``configs/warmstart_countdown.yaml``.
"""

from __future__ import annotations

from pathlib import Path

TINY_MODEL_PATH: str = str(Path(__file__).resolve().parent.parent / "assets" / "tiny-arith")
TINY_COUNTDOWN_PATH: str = str(Path(__file__).resolve().parent.parent / "assets" / "tiny-countdown")

__all__ = ["TINY_COUNTDOWN_PATH", "TINY_MODEL_PATH"]
