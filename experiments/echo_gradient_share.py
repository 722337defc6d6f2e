"""How large is the echo term's gradient next to the policy gradient's? A diagnostic of experiments/echo_vs_base.

Builds one rollout batch exactly as training does (the harness's config through ``EchoRLCLI``, the real
``RolloutCallback`` fill: rollouts, verifier, old log-probs, advantages, EchoClips), then takes, over that
batch's micro-batches, the gradient of the policy-gradient term ``L_RLVR`` and of the echo term ``L_echo``
separately and prints their norms, the ratio ``lambda * |grad L_echo| / |grad L_RLVR|`` for several lambda and
their cosine, and the lambda that would make that ratio 5% and 10% (issue 14 asks for an arm there). A
harness config's ``harness:`` section (experiments/configs/echo_forking.yaml) is dropped before parsing.
Left out: Adam's per-parameter scaling (the update direction is what the ratio bounds).

    python experiments/echo_gradient_share.py [--seeds 0 1 2] [--config experiments/configs/echo_vs_base.yaml]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import yaml  # noqa: E402
from echorl_lightning.callbacks.rollout import RolloutCallback  # noqa: E402

from echorl_lightning.cli import main as build_cli  # noqa: E402
from echorl_lightning.echo import echo_loss  # noqa: E402
from echorl_lightning.training.loss import rlvr_echo_loss  # noqa: E402


def gradient_norms(module, micro_batches: list) -> dict[str, float]:
    """Norms (and cosine) of the gradients of L_RLVR and of L_echo, summed over the step's micro-batches."""
    params = [p for p in module.policy.parameters() if p.requires_grad]
    grads = {"pg": [torch.zeros_like(p) for p in params], "echo": [torch.zeros_like(p) for p in params]}
    stats = {"clips": 0.0, "echo_loss": 0.0}
    module.policy.train()
    for mb in micro_batches:
        logp, _ = module.response_logprobs(mb, mb.temperature)  # [n, T]
        old = logp.detach() if mb.old_logp is None else mb.old_logp  # None: exactly on-policy
        pg, _ = rlvr_echo_loss(
            logp,
            old,
            mb.advantages,
            mb.response_mask,
            mb.pg_mask,
            mb.clip_mask,
            method=module.method_cfg,
            echo_coef=0.0,
            max_len=mb.max_response_len,
            num_tokens=mb.num_tokens,
            num_seqs=mb.num_seqs,
            num_clips=mb.num_clips,
            ref_logp=mb.ref_logp,
            off_policy_mask=mb.off_policy_mask,
        )
        echo = echo_loss(logp, mb.clip_mask, num_clips=mb.num_clips)
        for name, loss in (("pg", pg), ("echo", echo)):
            for acc, g in zip(
                grads[name],
                torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True),
                strict=True,
            ):
                if g is not None:
                    acc += g
        stats["clips"] = float(mb.num_clips)
        stats["echo_loss"] += float(echo.detach())
    flat = {k: torch.cat([g.flatten() for g in v]) for k, v in grads.items()}
    stats["pg_norm"] = float(flat["pg"].norm())
    stats["echo_norm"] = float(flat["echo"].norm())
    stats["cosine"] = float(torch.nn.functional.cosine_similarity(flat["pg"], flat["echo"], dim=0))
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(REPO / "experiments/configs/echo_vs_base.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="rollout seeds (batches)")
    parser.add_argument("--prompts-per-epoch", type=int, help="prompts in the batch (default: the config's)")
    args = parser.parse_args()
    print(
        "| rollout seed | all-success groups (clips) | L_echo | norm of grad L_RLVR | norm of grad L_echo | cosine | "
        "0.001 x ratio | 0.01 x ratio | 0.1 x ratio | lambda for 5% | lambda for 10% |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="echo_gradient_share_") as scratch:  # the trainer's root dir
            config = yaml.safe_load(Path(args.config).read_text())
            config.pop("harness", None)  # the harness's own settings are no trainer/model keys
            config_path = Path(scratch) / "config.yaml"
            config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            cli = build_cli(
                [
                    "--config",
                    str(config_path),
                    "--trainer.max_steps",
                    "0",
                    "--trainer.num_sanity_val_steps",
                    "0",
                    "--trainer.logger",
                    "false",
                    "--trainer.default_root_dir",
                    scratch,
                    f"--seed_everything={seed}",
                ],
                run=False,
            )
            for callback in cli.trainer.callbacks:
                if isinstance(callback, RolloutCallback):
                    callback.settings = replace(callback.settings, seed=seed)
                    if args.prompts_per_epoch is not None:
                        callback.settings = replace(
                            callback.settings, prompts_per_epoch=args.prompts_per_epoch
                        )
            cli.datamodule.connect(cli.model.tokenizer)  # run=False skips the CLI's before_fit hook
            cli.trainer.fit(cli.model, cli.datamodule)  # max_steps 0: on_fit_start fills one rollout batch
            s = gradient_norms(cli.model, list(cli.datamodule.rollout_buffer))
        ratio = s["echo_norm"] / max(s["pg_norm"], 1e-12)
        print(
            f"| {seed} | {s['clips']:.0f} | {s['echo_loss']:.4f} | {s['pg_norm']:.4f} | {s['echo_norm']:.4f} | "
            f"{s['cosine']:+.3f} | {0.001 * ratio:.5f} | {0.01 * ratio:.4f} | {0.1 * ratio:.3f} | "
            f"{0.05 / max(ratio, 1e-12):.3g} | {0.1 / max(ratio, 1e-12):.3g} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
