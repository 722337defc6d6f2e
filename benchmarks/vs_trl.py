"""Training throughput of this project against TRL's ``GRPOTrainer`` on the CPU demo's setting (issue 12).

Both sides train the demo's model (``echorl_lightning/assets/tiny-arith``, float32) on the demo's prompts
(``ProceduralDataModule(ArithmeticTask())``, seed 0, 4,096 training problems) with G = 8 rollouts per prompt, 64 prompts per
step, ``--max-new-tokens`` new tokens at temperature 1 (no top-k/top-p/min-p), lr 5e-5 (AdamW, constant,
no weight decay), one optimizer step per rollout batch, no KL term, GRPO's seq-mean-token-mean loss:

- ``echo_on`` / ``echo_off``: :class:`EchoRLModule` (method ``grpo``, EchoRL on or off) under a real
  Lightning ``Trainer`` with :class:`RolloutCallback`, built directly (no validation, logger or checkpoint),
  with the demo config's engine (all 512 rows in one batch, finished rows dropped every 16 tokens) and its 4
  length-grouped micro-batches per optimizer step;
- ``cli``: the same setting as a user runs it, ``cli.py fit --config configs/demo.yaml`` (logger, progress lines,
  EchoClip pictures, run summary and checkpoints as shipped; validation off, as in the other arms), its step
  time and phases read back from its TensorBoard log;
- ``trl``: TRL's ``GRPOTrainer`` with ``beta=0``, no vLLM, no bf16, no gradient checkpointing,
  ``per_device_train_batch_size=512`` and one accumulation step (one ``generate`` call and one optimizer
  step per batch of 64 x 8 completions), the project's ``ExactMatchVerifier`` as its reward function;
- ``trl_acc4``: the same with the demo's 4 micro-batches of 128 rows per optimizer step (TRL's are not grouped
  by length), to show what the micro-batching alone gives TRL.

Each measurement (one arm, one length, ``--warmup`` + ``--steps`` optimizer steps) runs in its own fresh
process; repetitions alternate the arms (their order rotates each repetition). Step time is the wall time
between the ends of two consecutive optimizer steps (the first ``--warmup`` steps are dropped), so it holds
everything a step does. Tokens/s = generated response tokens (up to and including the first EOS) / step
time. The phases come from wrappers on the same objects in both: ``generation`` = the policy's ``generate``
calls; ``old_logp`` = no-grad log-prob passes (this project's ``pipeline.steps.score_rollouts``, TRL's
``_get_per_token_logps_and_entropies`` outside autograd); ``train`` = loss forward + backward (Lightning:
a step's first micro-batch start to ``on_before_optimizer_step``; TRL: ``training_step`` less
``_prepare_inputs``); ``rest`` = step - the three (verifier, advantages, EchoClips, optimizer step,
bookkeeping). Left out: GPUs, vLLM and multi-process runs; memory (see ``step_memory.py``).

Run from the repository root with the ``bench`` extra installed (``pip install -e ".[dev,bench]"``)::

    HF_HUB_OFFLINE=1 python benchmarks/vs_trl.py --steps 10 --reps 3          # the reported figures
    HF_HUB_OFFLINE=1 python benchmarks/vs_trl.py --steps 2 --reps 1 --lengths 64   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = str(ROOT / "echorl_lightning" / "assets" / "tiny-arith")
ARMS = ("echo_on", "echo_off", "cli", "trl", "trl_acc4")
PHASES = ("generation", "old_logp", "train", "rest")
PROMPTS, GROUP, LR, SEED = 64, 8, 5e-5, 0
# configs/demo.yaml's engine batch_size and trainer.accumulate_grad_batches
DEMO_ENGINE_ROWS, DEMO_ACCUMULATE = 512, 4


def response_token_count(new_tokens: torch.Tensor, eos_id: int) -> int:
    """Generated tokens up to and including each row's first EOS (all of a row without one).

    Args:
        new_tokens: [rows, new] the tokens ``generate`` appended to the prompts.
    """
    is_eos = (new_tokens == eos_id).long()  # [rows, new]
    before_first_eos = (is_eos.cumsum(-1) - is_eos) == 0  # [rows, new] True up to and including the first EOS
    return int(before_first_eos.sum())


class PhaseClock:
    """Accumulated wall time per phase, the response token count, and the end time of each step."""

    def __init__(self) -> None:
        self.acc = dict.fromkeys(("generation", "old_logp", "train", "prepare"), 0.0)
        self.tokens = 0
        self.forwards = 0  # decoder forwards outside generate (log-prob passes, training forwards)
        self.steps: list[dict[str, float]] = []
        self._last_end: float | None = None
        self._train_t0 = 0.0
        self._stepped = False
        self._generating = False

    def count_forwards(self, decoder: torch.nn.Module) -> None:
        """Count the forwards of ``decoder`` (the policy's transformer body) that are not in ``generate``."""

        def hook(*_: Any) -> None:
            self.forwards += 0 if self._generating else 1

        decoder.register_forward_hook(hook)

    def wrap(self, owner: Any, name: str, phase: str, when: Callable[[], bool] = lambda: True) -> None:
        """Replace ``owner.name`` (an instance attribute) by a wrapper adding its wall time to ``phase``."""
        inner = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = inner(*args, **kwargs)
            if when():
                self.acc[phase] += time.perf_counter() - t0
            return out

        setattr(owner, name, timed)

    def wrap_generate(self, model: torch.nn.Module, eos_id: int) -> None:
        """Time ``model.generate`` as ``generation`` and count its response tokens."""
        inner = model.generate

        def generate(*args: Any, **kwargs: Any) -> Any:
            t0, self._generating = time.perf_counter(), True
            try:
                out = inner(*args, **kwargs)  # [rows, P + new]
            finally:
                self._generating = False
            self.acc["generation"] += time.perf_counter() - t0
            # [rows, P + new]; the engine asks for a dict (return_dict_in_generate) holding it
            sequences = getattr(out, "sequences", out)
            self.tokens += response_token_count(sequences[:, kwargs["input_ids"].shape[1] :], eos_id)
            return out

        model.generate = generate  # type: ignore[method-assign]

    def micro_batch_start(self) -> None:
        """A micro-batch begins; a step's ``train`` time starts at its first one."""
        if not self._train_t0:
            self._train_t0 = time.perf_counter()

    def before_optimizer_step(self) -> None:
        """The step's last backward is done: ``train`` runs from its first micro-batch to here."""
        self.acc["train"] += time.perf_counter() - self._train_t0
        self._stepped = True

    def micro_batch_end(self) -> None:
        """A micro-batch ends; the one that stepped the optimizer closes the step."""
        if self._stepped:
            self.step_end()
            self._train_t0, self._stepped = 0.0, False

    def step_end(self) -> None:
        """Close a step: record its phases (none for the first, which has no start) and reset."""
        now = time.perf_counter()
        if self._last_end is not None:
            step_s = now - self._last_end
            rec = {"step_s": step_s, "tokens": float(self.tokens), "forwards": float(self.forwards)}
            rec["echo_select"] = self.acc.get("echo_select", 0.0)
            rec.update({k: self.acc[k] for k in ("generation", "old_logp", "train")})
            rec["rest"] = step_s - rec["generation"] - rec["old_logp"] - rec["train"]
            self.steps.append(rec)
        self._last_end = now
        self.acc = dict.fromkeys(self.acc, 0.0)
        self.tokens = self.forwards = 0


# ---- workers (one measurement each, in a fresh process) -----------------------------------------------
def run_echorl(echo: bool, max_new_tokens: int, steps: int) -> list[dict[str, float]]:
    """``steps`` optimizer steps of the project's demo setting; one record per step after the first."""
    import lightning.pytorch as L
    from echorl_lightning.callbacks.rollout import RolloutCallback

    import echorl_lightning.training.echo_rows
    from echorl_lightning.module import EchoRLModule
    from echorl_lightning.pipeline import steps as pipeline_steps
    from echorl_lightning.rollout.hf_engine import HFGenerateEngine
    from echorl_lightning.tasks import ProceduralDataModule
    from echorl_lightning.tasks.arithmetic import ArithmeticTask
    from echorl_lightning.training.config import EchoConfig

    clock = PhaseClock()
    clock.acc["echo_select"] = 0.0
    clock.wrap(
        echorl_lightning.training.echo_rows, "select_echo_clips", "echo_select"
    )  # EchoClip selection, in the rest

    def install(pl_module: Any) -> None:
        clock.wrap_generate(pl_module.policy, pl_module.tokenizer.eos_token_id)
        clock.wrap(pipeline_steps, "score_rollouts", "old_logp")
        clock.count_forwards(getattr(pl_module.policy, pl_module.policy.base_model_prefix))

    L.seed_everything(SEED, verbose=False)
    engine = HFGenerateEngine(batch_size=DEMO_ENGINE_ROWS)
    module = EchoRLModule(model=MODEL_DIR, method="grpo", echo=EchoConfig(enabled=echo), engine=engine, lr=LR)
    data = ProceduralDataModule(ArithmeticTask(), num_train=4096, num_val=0, seed=SEED)
    data.connect(module.tokenizer)
    rollout = RolloutCallback(
        prompts_per_epoch=PROMPTS,
        group_size=GROUP,
        max_new_tokens=max_new_tokens,
        temperature=1.0,
        logprob_batch_size=256,
        seed=SEED,
    )
    fit_bare(module, data, [rollout, step_timer(clock, install)], epochs=steps, accumulate=DEMO_ACCUMULATE)
    return clock.steps


def step_timer(clock: PhaseClock, install: Callable[[Any], None]) -> Any:
    """A Lightning callback that times a trainer's steps on ``clock`` (``train`` from a step's first micro-batch
    to its optimizer step; a step ends with the micro-batch that stepped) and calls ``install(pl_module)`` at
    fit start, where an arm puts its wrappers."""
    import lightning.pytorch as L

    class StepTimer(L.Callback):
        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            install(pl_module)

        def on_train_batch_start(self, *_: Any) -> None:
            clock.micro_batch_start()

        def on_before_optimizer_step(self, *_: Any) -> None:
            clock.before_optimizer_step()

        def on_train_batch_end(self, *_: Any) -> None:
            clock.micro_batch_end()

    return StepTimer()


def fit_bare(module: Any, data: Any, callbacks: list[Any], *, epochs: int, accumulate: int = 1) -> None:
    """``trainer.fit`` on one CPU process in fp32, with only ``callbacks``: no logger, validation, checkpoints,
    progress bar or model summary (the stripped arms measure the RL step and nothing else)."""
    import lightning.pytorch as L

    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            precision="32-true",
            max_epochs=epochs,
            accumulate_grad_batches=accumulate,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=callbacks,
            default_root_dir=tmp,
        )
        trainer.fit(module, datamodule=data)


def run_cli(max_new_tokens: int, steps: int) -> list[dict[str, float]]:
    """``steps`` epochs of the shipped demo config as a user runs it: ``cli.py fit --config configs/demo.yaml``
    with its logger, progress lines, EchoClip pictures, run summary and checkpoint cadence; only the epoch count,
    the response limit and the output folders are set, and validation is off (the other arms do not validate).

    The step time is read from TensorBoard: the wall time between consecutive ``actor/lr`` points (logged once
    per optimizer step); tokens = ``rollout/response_length`` x rows; the phases are the run's own
    ``perf/rollout_s`` (generation and scoring), ``perf/old_logprob_s`` and ``perf/train_s``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "cli.py",
            "fit",
            "--config",
            "configs/demo.yaml",
            f"--trainer.max_epochs={steps}",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.limit_val_batches=0",
            f"--trainer.default_root_dir={tmp}",
            f"--trainer.logger.init_args.save_dir={tmp}",
            f"--trainer.callbacks.init_args.dirpath={tmp}/checkpoints",
            f"--rollout.max_new_tokens={max_new_tokens}",
        ]
        env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))  # the worker's --threads
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"cli.py failed:\n{proc.stderr[-4000:]}")
        (events,) = Path(tmp).rglob("events.out.tfevents.*")
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()

        def by_step(tag: str) -> dict[int, tuple[float, float]]:
            return {e.step: (e.wall_time, e.value) for e in acc.Scalars(tag)}

        lr, length = by_step("actor/lr"), by_step("rollout/response_length")
        tags = {"generation": "perf/rollout_s", "old_logp": "perf/old_logprob_s", "train": "perf/train_s"}
        # one point per epoch each, in step order: epoch i's rollout and training fall between lr points i-1, i
        phases = {
            name: [e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.step)]
            for name, tag in tags.items()
        }
    order = sorted(lr)
    records = []
    for i in range(1, len(order)):
        step_s = lr[order[i]][0] - lr[order[i - 1]][0]
        rec = {"step_s": step_s, "tokens": length[order[i]][1] * PROMPTS * GROUP}
        rec.update({name: values[i] for name, values in phases.items()})
        rec["rest"] = step_s - rec["generation"] - rec["old_logp"] - rec["train"]
        records.append(rec)
    return records


def train_trl(
    model: torch.nn.Module,
    tokenizer: Any,
    dataset: Any,
    reward: Callable[..., list[float]],
    *,
    rows_per_micro: int,
    accumulation: int,
    group: int,
    max_new_tokens: int,
    lr: float,
    steps: int,
    vllm: dict[str, Any] | None = None,
) -> list[dict[str, float]]:
    """``steps`` optimizer steps of TRL's ``GRPOTrainer`` (``beta=0``, fp32, constant lr, one ``generate`` per
    optimizer step of ``rows_per_micro x accumulation`` completions), timed by phase: on HF ``generate``, or,
    with ``vllm`` (more ``GRPOConfig`` fields, e.g. ``vllm_mode="colocate"``), on TRL's vLLM path, whose
    ``vllm_generation.generate`` is then the generation phase."""
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    clock = PhaseClock()

    class Timer(TrainerCallback):
        def on_step_end(self, *_: Any, **__: Any) -> None:
            clock.step_end()

    with tempfile.TemporaryDirectory() as tmp:
        config = GRPOConfig(
            output_dir=tmp,
            per_device_train_batch_size=rows_per_micro,
            gradient_accumulation_steps=accumulation,
            num_generations=group,
            max_completion_length=max_new_tokens,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            learning_rate=lr,
            lr_scheduler_type="constant",
            weight_decay=0.0,
            beta=0.0,
            loss_type="grpo",
            num_iterations=1,
            use_vllm=vllm is not None,
            bf16=False,
            fp16=False,
            gradient_checkpointing=False,
            max_steps=steps,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            seed=SEED,
            disable_tqdm=True,
            dataloader_num_workers=0,
            **(vllm or {}),
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[Timer()],
        )
        clock.wrap_generate(trainer.model, tokenizer.eos_token_id)
        if vllm is not None:  # TRL's vLLM path: (prompt ids, completion ids, logprobs, extra) per call
            inner_generate = trainer.vllm_generation.generate

            def generate(*a: Any, **k: Any) -> Any:
                t0 = time.perf_counter()
                out = inner_generate(*a, **k)
                clock.acc["generation"] += time.perf_counter() - t0
                clock.tokens += sum(len(ids) for ids in out[1])
                return out

            trainer.vllm_generation.generate = generate
        clock.wrap(
            trainer, "_get_per_token_logps_and_entropies", "old_logp", lambda: not torch.is_grad_enabled()
        )
        clock.wrap(trainer, "_prepare_inputs", "prepare")
        clock.wrap(trainer, "training_step", "train")
        inner_end = clock.step_end

        def step_end() -> None:  # train = training_step less its _prepare_inputs (generation, scoring)
            clock.acc["train"] -= clock.acc["prepare"]
            inner_end()

        clock.step_end = step_end  # type: ignore[method-assign]
        trainer.train()
    return clock.steps


def run_trl(max_new_tokens: int, steps: int, accumulation: int = 1) -> list[dict[str, float]]:
    """``steps`` optimizer steps of TRL's ``GRPOTrainer`` on the same setting, each in ``accumulation``
    micro-batches (TRL still generates the whole batch in one call: its ``steps_per_generation`` follows)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from echorl_lightning.rewards.exact_match import ExactMatchVerifier
    from echorl_lightning.tasks import ProceduralDataModule
    from echorl_lightning.tasks.arithmetic import ArithmeticTask

    verifier = ExactMatchVerifier()

    def exact_match(completions: list[str], reference: list[str], **_: Any) -> list[float]:
        return [0.0 if s is None else float(s) for s in verifier(completions, reference)]

    prompts = ProceduralDataModule(ArithmeticTask(), num_train=4096, num_val=0, seed=SEED).train_prompts
    dataset = Dataset.from_dict(
        {"prompt": [p.prompt for p in prompts], "reference": [p.reference for p in prompts]}
    )
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)
    return train_trl(
        model,
        tokenizer,
        dataset,
        exact_match,
        rows_per_micro=PROMPTS * GROUP // accumulation,
        accumulation=accumulation,
        group=GROUP,
        max_new_tokens=max_new_tokens,
        lr=LR,
        steps=steps,
    )


def worker(arm: str, max_new_tokens: int, steps: int, threads: int) -> None:
    """Run one measurement and print its step records as the last line (JSON)."""
    torch.set_num_threads(threads)
    if arm in ("trl", "trl_acc4"):
        records = run_trl(max_new_tokens, steps, accumulation=4 if arm == "trl_acc4" else 1)
    elif arm == "cli":
        records = run_cli(max_new_tokens, steps)
    else:
        records = run_echorl(arm == "echo_on", max_new_tokens, steps)
    print("RESULT " + json.dumps(records), flush=True)


# ---- the driver ------------------------------------------------------------------------------------------
def measure(arm: str, max_new_tokens: int, args: argparse.Namespace) -> list[dict[str, float]]:
    """One measurement in a fresh subprocess; the records of its steps after the warm-up."""
    cmd = [sys.executable, __file__, "--worker", arm, "--max-new-tokens", str(max_new_tokens)]
    cmd += ["--steps", str(args.steps + args.warmup), "--threads", str(args.threads)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{arm} at {max_new_tokens} tokens failed:\n{proc.stderr[-4000:]}")
    records = json.loads(lines[-1][len("RESULT ") :])  # from step 2 on: a record spans end to end
    return records[args.warmup - 1 :]


def summarize(records: list[dict[str, float]]) -> dict[str, float]:
    """Medians over steps of every recorded figure (s/step, phases, forwards, ...), plus tokens/s."""
    out = {key: statistics.median(r[key] for r in records) for key in records[0]}
    out["tokens_per_s"] = statistics.median(r["tokens"] / r["step_s"] for r in records)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10, help="measured optimizer steps per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="steps dropped at the start of each process")
    parser.add_argument("--reps", type=int, default=3, help="alternated repetitions of every arm")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256], help="max new tokens")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--json", type=Path, default=None, help="also write every record here")
    parser.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--max-new-tokens", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.max_new_tokens, args.steps, args.threads)
        return
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first step has no end of a previous one to start from)")

    raw: dict[str, dict[str, list[dict[str, float]]]] = {}
    for rep in range(args.reps):
        for length in args.lengths:
            order = args.arms[rep % len(args.arms) :] + args.arms[: rep % len(args.arms)]
            for arm in order:
                t0 = time.perf_counter()
                recs = measure(arm, length, args)
                raw.setdefault(str(length), {}).setdefault(arm, []).append(summarize(recs))
                s = raw[str(length)][arm][-1]
                print(
                    f"rep {rep} L={length} {arm:8s} {s['step_s']:.2f} s/step {s['tokens_per_s']:,.0f} tok/s "
                    f"({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
    torch.set_num_threads(args.threads)
    print(report(raw))
    print(f"machine: {machine_line()}")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))


def report(raw: dict[str, dict[str, list[dict[str, float]]]]) -> str:
    """A markdown table per length: medians over repetitions, and the ratio to TRL (per-rep range)."""
    lines = []
    for length, arms in raw.items():
        lines += [f"\n{length} new tokens (medians over {len(next(iter(arms.values())))} repetitions)\n"]
        lines += ["| arm | s/step | tokens/s | ratio to TRL (range over reps) | " + " | ".join(PHASES) + " |"]
        lines += ["|---" * (4 + len(PHASES)) + "|"]
        trl = arms.get("trl")
        for arm, reps in arms.items():
            med = {k: statistics.median(r[k] for r in reps) for k in reps[0]}
            ratio = "-"
            if trl is not None:
                per_rep = [r["tokens_per_s"] / t["tokens_per_s"] for r, t in zip(reps, trl, strict=False)]
                base = statistics.median(t["tokens_per_s"] for t in trl)
                ratio = f"{med['tokens_per_s'] / base:.3f}x ({min(per_rep):.2f}-{max(per_rep):.2f})"
            phases = " | ".join(f"{med[p]:.2f}" for p in PHASES)
            lines += [f"| {arm} | {med['step_s']:.2f} | {med['tokens_per_s']:,.0f} | {ratio} | {phases} |"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
