"""The vLLM engine's weight-sync parity table: model x tied/untied x sync cycle.

Usage (from the repository root, in a venv with vLLM's CPU build; see benchmarks/README.md):

    python benchmarks/vllm_parity.py                 # all rows, about 2 minutes on 2 cores
    python benchmarks/vllm_parity.py --skip-smol     # without the 135M-parameter random model

For each model: build a ``VLLMEngine`` from its folder (fp32), sync, then 3 cycles of (perturb every policy
weight by N(0, 0.02^2), sync). After each sync the engine samples 4 prompts x 4 rollouts of up to 32 tokens at
T = 1 with ``return_logprobs`` and the table gives the max |engine - policy| log-prob over those tokens
(:func:`echorl_lightning.rollout.sync_check.engine_logprob_diff`), and before each sync the same figure with
the engine still holding the previous weights ("stale": what a missed sync looks like). The LoRA row perturbs
the adapters only and syncs the merged weights.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from benchmarks.vllm_vs_hf import SMOL_SHAPE  # noqa: E402
from echorl_lightning.rollout import SamplingConfig, VLLMEngine  # noqa: E402
from echorl_lightning.rollout.sync_check import engine_logprob_diff  # noqa: E402
from echorl_lightning.tiny import TINY_COUNTDOWN_PATH, TINY_MODEL_PATH  # noqa: E402
from echorl_lightning.training.lora import LoraConfig, wrap_lora  # noqa: E402
from echorl_lightning.training.lora_merge import merged_weights  # noqa: E402
from recipes.tiny.tokenizer import build_tokenizer  # noqa: E402

PROMPTS = [[1, 2, 3], [40, 41], [7, 8, 9, 10, 11], [100]]


class Tokens:
    """The tokenizer attributes the engine reads (EOS and pad ids)."""

    def __init__(self, eos: int, pad: int) -> None:
        self.eos_token_id, self.pad_token_id = eos, pad


def random_qwen2(folder: Path, tied: bool) -> torch.nn.Module:
    config = Qwen2Config(
        vocab_size=258,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        eos_token_id=256,
        pad_token_id=257,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder).eval()


def smol_shape(folder: Path) -> torch.nn.Module:
    config = LlamaConfig(**SMOL_SHAPE)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder).eval()


def perturb(model: torch.nn.Module, cycle: int, only: str = "") -> None:
    generator = torch.Generator().manual_seed(cycle)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if only in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.02)


def max_diff(engine: VLLMEngine, policy: torch.nn.Module, seed: int) -> float:
    sampling = SamplingConfig(n=4, max_new_tokens=32, temperature=1.0, seed=seed, return_logprobs=True)
    return engine_logprob_diff(policy, PROMPTS, engine.generate(PROMPTS, sampling))[1]


def cycles(name: str, policy: torch.nn.Module, tokenizer: object, lora: bool = False) -> None:
    engine = VLLMEngine(max_model_len=256, kv_cache_memory_bytes=256 << 20)
    engine.setup(policy, tokenizer)
    tied = policy.get_output_embeddings().weight is policy.get_input_embeddings().weight

    def sync() -> None:
        if lora:
            with merged_weights(policy) as merged:
                engine.load_weights(merged)
        else:
            engine.load_weights(policy)

    sync()
    cells = [f"{max_diff(engine, policy, 0):.1e}"]
    for cycle in range(1, 4):
        perturb(policy, cycle, only="lora_" if lora else "")
        stale = max_diff(engine, policy, cycle)
        sync()
        cells.append(f"{max_diff(engine, policy, cycle):.1e} (stale {stale:.2f})")
    print(f"| {name} | {'tied' if tied else 'untied'} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-smol", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print("| model | head | sync 0 | cycle 1 | cycle 2 | cycle 3 |\n|---|---|---|---|---|---|")
    byte_tokens = build_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        for tied in (True, False):
            folder = Path(tmp, f"qwen2-{tied}")
            cycles("random Qwen2 (hidden 64, 2 layers)", random_qwen2(folder, tied), byte_tokens)
        for label, path in (("tiny-arith", TINY_MODEL_PATH), ("tiny-countdown", TINY_COUNTDOWN_PATH)):
            cycles(label, AutoModelForCausalLM.from_pretrained(path).eval(), Tokens(256, 257))
        lora = wrap_lora(AutoModelForCausalLM.from_pretrained(TINY_MODEL_PATH).eval(), LoraConfig(r=8))
        cycles("tiny-arith + LoRA r=8, merged", lora, Tokens(256, 257), lora=True)
        if not args.skip_smol:
            cycles("random Llama 135M (576 x 30, vocab 49,152)", smol_shape(Path(tmp, "smol")), Tokens(2, 2))


if __name__ == "__main__":
    main()
