"""The embedded default policy: a byte-level tokenizer, a tiny Qwen2 config, its SFT warm-start, and the
shipped warm-started model (``TINY_MODEL_PATH``) that the CPU demo and the end-to-end tests run EchoRL
(arXiv 2605.31228) on.

``TINY_MODEL_PATH`` (the arithmetic task) and ``TINY_COUNTDOWN_PATH`` (the Countdown task, the same
architecture with a 512-token context) are Hugging Face folders (config, generation config, safetensors,
tokenizer) loadable with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``;
regenerate them with the commands in ``configs/warmstart_sft.yaml`` and ``configs/warmstart_countdown.yaml``
(whose last stage is ``configs/warmstart_countdown_rl.yaml``). ``bpe.train_bpe_tokenizer`` trains merges on a
task's texts over the same byte ids (no shipped model uses it yet; ``benchmarks/countdown_tokens.py``).
"""

from __future__ import annotations

from pathlib import Path

TINY_MODEL_PATH: str = str(Path(__file__).resolve().parent.parent / "assets" / "tiny-arith")
TINY_COUNTDOWN_PATH: str = str(Path(__file__).resolve().parent.parent / "assets" / "tiny-countdown")

__all__ = ["TINY_COUNTDOWN_PATH", "TINY_MODEL_PATH"]
