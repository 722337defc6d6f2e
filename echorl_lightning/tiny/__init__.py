"""The embedded default policy: a byte-level tokenizer, a tiny Qwen2 config, its SFT warm-start, and the
shipped warm-started model (``TINY_MODEL_PATH``) that the CPU demo and the end-to-end tests run EchoRL
(arXiv 2605.31228) on.

``TINY_MODEL_PATH`` is a Hugging Face folder (config, generation config, safetensors, tokenizer) loadable
with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``; regenerate it with the
command in ``configs/warmstart_sft.yaml``.
"""

from __future__ import annotations

from pathlib import Path

TINY_MODEL_PATH: str = str(Path(__file__).resolve().parent.parent / "assets" / "tiny-arith")

__all__ = ["TINY_MODEL_PATH"]
