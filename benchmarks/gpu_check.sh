#!/usr/bin/env bash
# The GPU check of issue 10 item 7, prepared for a lent H100/H200 (at most 8 minutes, nothing downloaded,
# no vLLM). EchoRL (arXiv 2605.31228) on a Qwen2.5-1.5B-shaped model through the real path (cli.py, the HF
# generate engine, the no-grad old-log-prob pass, the GRPO + EchoRL update):
#   1. builds a Qwen2.5-1.5B-shaped model with random weights, saved in bf16 (Qwen2Config: hidden 1536,
#      28 layers, 12 query / 2 KV heads, MLP 8960, vocabulary 151,936, tied embeddings; 1.54B parameters)
#      and a tokenizer of the same vocabulary size (the project's byte-level tokenizer plus 151,678 filler
#      tokens, so every sampled id decodes) in a temporary folder;
#   2. runs 2 RL epochs with configs/demo.yaml's pipeline on it: 16 prompts x 8 rollouts per epoch at
#      response length $RESPONSE (2,048 by default; a random model never samples EOS, so every rollout
#      has exactly that length), fp32 master weights under bf16-mixed, gradient checkpointing, one GPU;
#      (the random model earns no reward, so advantages and the update's gradient are exactly 0: the
#      update still runs its full forward/backward, so its time and memory are real; grad_norm prints 0);
#   3. prints the peak GPU memory (torch's allocator, over the whole run) and rollout/update tokens per
#      second from the TensorBoard log;
#   4. runs the GPU tests: python -m pytest -m gpu.
# Run from the repository root with the venv active (torch built for the GPU's CUDA):
#     bash benchmarks/gpu_check.sh
#     RESPONSE=4096 PROMPTS=8 bash benchmarks/gpu_check.sh     # longer responses, same token budget
#     SMOKE=1 bash benchmarks/gpu_check.sh                      # the same steps on a CPU, tiny shapes
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
RESPONSE=${RESPONSE:-2048}
PROMPTS=${PROMPTS:-16}
SMOKE=${SMOKE:-0}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
START=$(date +%s)

if [ "$SMOKE" = 1 ]; then
  RESPONSE=16; PROMPTS=2
  ACCEL=(--trainer.accelerator=cpu --trainer.precision=32-true --trainer.callbacks=[])
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  ACCEL=(--trainer.accelerator=gpu --trainer.precision=bf16-mixed
         '--trainer.callbacks=[{"class_path": "lightning.pytorch.callbacks.DeviceStatsMonitor"}]')
fi

echo "== 1. random Qwen2.5-1.5B-shaped model and a 151,936-token tokenizer in $WORK"
SMOKE=$SMOKE python - "$WORK/model" <<'EOF'
import os, sys, time
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from recipes.tiny.tokenizer import build_tokenizer

t0 = time.time()
smoke = os.environ["SMOKE"] == "1"
tokenizer = build_tokenizer()  # 256 bytes + <|endoftext|> (EOS) + <|pad|>
vocab = 151_936
tokenizer.add_tokens([f"<r{i}>" for i in range(vocab - len(tokenizer))])
config = Qwen2Config(
    vocab_size=vocab, hidden_size=64 if smoke else 1536, intermediate_size=128 if smoke else 8960,
    num_hidden_layers=2 if smoke else 28, num_attention_heads=4 if smoke else 12, num_key_value_heads=2,
    max_position_embeddings=32768, rope_theta=1_000_000.0, tie_word_embeddings=True, rms_norm_eps=1e-6,
    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
)
device = "cpu" if smoke else "cuda"
torch.manual_seed(0)
with torch.device(device):
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
model.save_pretrained(sys.argv[1])
tokenizer.save_pretrained(sys.argv[1])
n = sum(p.numel() for p in model.parameters())
print(f"built {n / 1e9:.3f}B parameters (bf16 on disk) in {time.time() - t0:.0f} s")
EOF

echo "== 2. two RL epochs: $PROMPTS prompts x 8 rollouts of $RESPONSE tokens per epoch"
timeout 420 python cli.py fit --config configs/demo.yaml \
  --model.init_args.model="$WORK/model" --model.init_args.dtype=float32 \
  --model.init_args.gradient_checkpointing=true --model.init_args.lr=1e-6 \
  --model.init_args.engine.init_args.batch_size=128 \
  "${ACCEL[@]}" --trainer.devices=1 --trainer.max_epochs=2 --trainer.accumulate_grad_batches=8 \
  --trainer.limit_val_batches=0 --trainer.num_sanity_val_steps=0 \
  --trainer.default_root_dir="$WORK/run" --trainer.logger.init_args.save_dir="$WORK/run" \
  --rollout.prompts_per_epoch="$PROMPTS" --rollout.group_size=8 --rollout.max_new_tokens="$RESPONSE" \
  --rollout.logprob_batch_size=16 --rollout.num_minibatches=1 \
  --data.init_args.num_train=256 --data.init_args.num_val=8

echo "== 3. figures"
python - "$WORK/run" <<'EOF'
import sys
from pathlib import Path
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

values: dict[str, list[float]] = {}
for ev in sorted(Path(sys.argv[1]).rglob("events.out.tfevents.*")):
    acc = EventAccumulator(str(ev), size_guidance={"scalars": 0})
    acc.Reload()
    for tag in acc.Tags()["scalars"]:
        values.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
for tag in ("perf/rollout_s", "perf/rollout_tokens_per_s", "perf/old_logprob_s", "perf/train_s",
            "perf/train_tokens_per_s", "rollout/response_length", "actor/grad_norm", "actor/skipped_steps"):
    print(f"{tag:28s} " + "  ".join(f"{v:12.2f}" for v in values.get(tag, [])) + ("" if tag in values else "(not logged)"))
peaks = [max(v) for tag, v in values.items() if tag.endswith("allocated_bytes.all.peak")]
if peaks:
    print(f"{'peak GPU memory (allocated)':28s} {max(peaks) / 2**30:12.2f} GiB")
reserved = [max(v) for tag, v in values.items() if tag.endswith("reserved_bytes.all.peak")]
if reserved:
    print(f"{'peak GPU memory (reserved)':28s} {max(reserved) / 2**30:12.2f} GiB")
EOF
echo "fit + figures: $(( $(date +%s) - START )) s"

echo "== 4. python -m pytest -m gpu"
if [ "$SMOKE" = 1 ]; then
  timeout 180 python -m pytest -q -rs -m gpu tests/training/test_sharding.py || true   # skips with the reason on a CPU
else
  timeout 180 python -m pytest -q -rs -m gpu
fi
echo "total: $(( $(date +%s) - START )) s"
