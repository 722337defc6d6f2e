"""experiments/echo_vs_base.py: the summary arithmetic on hand-made records, the arms, the configs' harness
sections and the reuse of finished runs. The real harness end to end: ``test_experiment_runs.py``."""

from __future__ import annotations

import json

import pytest

from experiments.echo_vs_base import (
    ARMS,
    QUICK_ARMS,
    _eval_digest,
    arm_by_name,
    load_base,
    parse_args,
    run_config,
    set_aside,
    with_start,
)
from experiments.power import power_estimate
from experiments.report import arm_table, paired_deltas, run_summary, step_tags, study_arms, study_pairs
from tests.helpers.paths import ROOT as REPO


def _record(arm: str, seed: int, success: list[float], ids: list[float]) -> dict:
    steps = list(range(len(success)))
    return {
        "arm": arm,
        "seed": seed,
        "wall_s": 90.0,
        "scalars": {
            "rollout/frac_all_success": [[s, v] for s, v in zip(steps, success, strict=True)],
            "val/id/avg@4": [[s * 5, v] for s, v in enumerate(ids)],
            "echo/num_clips": [[s, c] for s, c in zip(steps, [0, 2, 4, 0, 2, 0, 0], strict=False)],
            "echo/clip_tokens": [[s, c] for s, c in zip(steps, [0, 10, 20, 0, 30, 0, 0], strict=False)],
        },
    }


def test_run_summary_by_hand():
    success = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    s = run_summary(_record("grpo+echo", 0, success, [0.5, 0.6, 0.55]))
    # first 5 steps: (0.1+0.2+0.3+0.4+0.5)/5 = 0.3; last 5: (0.3+0.4+0.5+0.6+0.7)/5 = 0.5
    assert s["rollout/frac_all_success:start"] == pytest.approx(0.3)
    assert s["rollout/frac_all_success:final"] == pytest.approx(0.5)
    assert s["val/id/avg@4:start"] == 0.5 and s["val/id/avg@4:final"] == 0.55
    # clips per step over 7 steps: (0+2+4+0+2+0+0)/7 = 8/7; clip tokens over steps with clips: (10+20+30)/3
    assert s["echo/num_clips"] == pytest.approx(8 / 7)
    assert s["echo/clip_tokens"] == pytest.approx(20.0)
    assert s["wall_min"] == pytest.approx(1.5)


def test_paired_deltas_by_hand():
    by_seed = {
        "grpo": {0: {"k": 0.50}, 1: {"k": 0.60}},
        "grpo+echo": {0: {"k": 0.55}, 1: {"k": 0.58}},
    }
    table = paired_deltas([("grpo+echo", "grpo")], by_seed, ["k"])
    # diffs +0.05 and -0.02: mean 0.015, sample std sqrt(((0.035)^2 + (0.035)^2) / 1) = 0.0495 -> 0.049
    assert "0.015 ± 0.049 (1/2 > 0)" in table


def test_paired_delta_that_rounds_to_zero_has_no_sign():
    by_seed = {"a": {0: {"k": 0.5000}, 1: {"k": 0.6000}}, "b": {0: {"k": 0.5004}, 1: {"k": 0.5998}}}
    table = paired_deltas([("a", "b")], by_seed, ["k"])
    # diffs -0.0004 and +0.0002: mean -0.0001 -> 0.000 (not -0.000); std sqrt(2 * 0.0003^2) = 0.00042 -> 0.000
    assert "| 0.000 ± 0.000 (1/2 > 0) |" in table and "-0.000" not in table


def test_arms_cover_the_issue():
    names = set(ARMS)
    for method in ("grpo", "dapo", "dr_grpo"):
        assert {method, f"{method}+echo"} <= names
    assert {"grpo+echo[lowest]", "grpo+echo[random]", "grpo+echo[full]"} <= names
    assert {"grpo+echo[coef=0.01]", "grpo+echo[coef=0.1]"} <= names
    quick = parse_args(["--quick"])
    assert quick.arms == QUICK_ARMS and quick.seeds == [0]
    full = parse_args([])
    assert len(full.arms) == 11 and full.seeds == [0, 1, 2]
    # the eligibility arm runs on request only, outside the default sweep's time budget
    assert ARMS["grpo+echo[success]"].apply_to == "success" and "grpo+echo[success]" not in full.arms


def test_ablations_read_against_their_own_method():
    arms = [
        arm_by_name(n)
        for n in (
            "grpo",
            "grpo+echo",
            "dapo",
            "dapo+echo",
            "grpo+echo[lowest]",
            "dapo+echo[coef=0.0015]",
            "grpo+echo[coef=0.0015]",
        )
    ]
    present = [a.name for a in arms]
    assert study_arms("main", arms, present) == ["grpo", "grpo+echo", "dapo", "dapo+echo"]
    assert study_pairs("main", arms, present) == [("grpo+echo", "grpo"), ("dapo+echo", "dapo")]
    # a DAPO coefficient arm is read against DAPO + EchoRL at 0.001 and plain DAPO, never against GRPO
    assert study_arms("coef", arms, present) == [
        "dapo",
        "dapo+echo",
        "grpo",
        "grpo+echo",
        "dapo+echo[coef=0.0015]",
        "grpo+echo[coef=0.0015]",
    ]
    assert study_pairs("coef", arms, present) == [
        ("dapo+echo[coef=0.0015]", "dapo+echo"),
        ("grpo+echo[coef=0.0015]", "grpo+echo"),
        ("dapo+echo[coef=0.0015]", "dapo"),
        ("grpo+echo[coef=0.0015]", "grpo"),
    ]
    # a reference that did not run is neither a row nor a pair
    without_dapo = [n for n in present if n != "dapo"]
    assert study_arms("coef", arms, without_dapo)[:3] == ["dapo+echo", "grpo", "grpo+echo"]
    assert ("dapo+echo[coef=0.0015]", "dapo") not in study_pairs("coef", arms, without_dapo)
    assert study_pairs("selector", arms, present) == [
        ("grpo+echo[lowest]", "grpo+echo"),
        ("grpo+echo[lowest]", "grpo"),
    ]


def test_partial_needs_report_only():
    with pytest.raises(SystemExit):
        parse_args(["--partial"])
    assert parse_args(["--report-only", "--partial"]).partial


def test_step_correctness_columns_by_hand():
    record = _record("grpo", 0, [0.1] * 7, [0.5, 0.6])
    record["scalars"]["val/ood_large/step_valid_frac"] = [[0, 0.5], [5, 0.75]]
    record["scalars"]["val/id/step_valid_frac"] = [[0, 0.8], [5, 0.9]]
    assert step_tags(record) == ["val/id/step_valid_frac", "val/ood_large/step_valid_frac"]  # ID first
    s = run_summary(record)
    assert s["val/id/step_valid_frac:final"] == 0.9 and s["val/ood_large/step_valid_frac:start"] == 0.5
    table = arm_table(["grpo"], {"grpo": [s]}, ["val/id/avg@4"], [], step_tags(record))
    header, _, row = table.splitlines()
    assert "| id steps ok final | ood_large steps ok final |" in header
    assert "| 0.900 ± 0.000 | 0.750 ± 0.000 |" in row  # one seed: std 0


def test_power_estimate_by_hand():
    # acc 0.5: w = 0.25; 512 samples per arm: eval var of a pair 2 * 0.25 / 512 = 0.0009765625, sd 0.03125;
    # paired seed sd 0.035: train var 0.001225 - 0.0009765625 = 0.0002484375; 5 seeds: SE =
    # sqrt(0.001225 / 5) = 0.015652; room for eval noise 5 * 0.01^2 - 0.0002484375 = 0.0002515625, so
    # P x k >= 2 * 0.25 / 0.0002515625 = 1987.6 -> 1988
    est = power_estimate(0.5, 0.035, 512, 5)
    assert est["eval_sd"] == pytest.approx(0.03125)
    assert est["train_sd"] == pytest.approx(0.0002484375**0.5)
    assert est["se"] == pytest.approx((0.001225 / 5) ** 0.5)
    assert est["needed"] == 1988
    # paired sd 0.04: train var 0.0016 - 0.0009765625 = 0.000623 > 5 * 0.01^2: no eval size is enough
    assert power_estimate(0.5, 0.04, 512, 5)["needed"] == float("inf")
    # one seed, no spread measured: eval only, 1 * 0.01^2 room -> 0.5 / 1e-4 = 5000 samples
    assert power_estimate(0.5, None, 512, 1)["needed"] == 5000


def test_forking_config_harness_section(tmp_path):
    config, harness = load_base(REPO / "experiments/configs/echo_forking.yaml")
    assert "harness" not in config and config["data"]["class_path"].endswith("ProceduralDataModule")
    assert config["data"]["init_args"]["task"]["class_path"].endswith("CountdownTask")
    assert harness["seeds"] == [0, 1, 2, 3, 4] and all(arm_by_name(name) for name in harness["arms"])
    quick = parse_args(["--config", "experiments/configs/echo_forking.yaml", "--quick"])
    assert quick.arms == ["grpo", "grpo+echo"] and quick.epochs == harness["quick_epochs"]
    # the config evaluates every 10 steps; a quick budget that 10 does not divide is evaluated at its end
    assert (
        quick.epochs % config["trainer"]["check_val_every_n_epoch"] != 0 and quick.val_every == quick.epochs
    )
    full = parse_args(["--config", "experiments/configs/echo_forking.yaml", "--epochs", "10"])
    assert full.val_every is None  # 10 divides 10: the config's schedule already ends on step 10
    # the config's sets are the datamodule's default sets, spelled out to give each its own size
    from echorl_lightning.tasks.countdown import CountdownTask
    from echorl_lightning.tasks.countdown.difficulty import parse_difficulty

    data = config["data"]["init_args"]
    defaults = CountdownTask(parse_difficulty(data["task"]["init_args"]["difficulty"])).default_eval_specs()
    written = [
        (
            s["name"],
            s["split"],
            s["group"],
            s.get("task") and parse_difficulty(s["task"]["init_args"]["difficulty"]),
        )
        for s in data["eval_sets"]
    ]
    assert written == [
        (d.name, d.split, d.group, None if d.name == "id" else d.task.difficulty) for d in defaults
    ]
    # --num-val sizes every set, also those that name their own (the quick budget)
    sized = run_config(arm_by_name("grpo"), 0, tmp_path / "q", quick)["data"]["init_args"]
    assert sized["num_val"] == harness["quick_num_val"]
    assert {s["num"] for s in sized["eval_sets"]} == {harness["quick_num_val"]}
    assert quick.runs_dir == str(REPO / "runs/echo_forking/quick")  # never the full sweep's folders
    assert parse_args(["--config", "experiments/configs/echo_forking.yaml"]).runs_dir == str(
        REPO / "runs/echo_forking"
    )
    default = parse_args([])  # the arithmetic sweep keeps its defaults
    assert (
        default.harness == {}
        and default.runs_dir == str(REPO / "runs/echo_vs_base")
        and default.epochs is None
    )
    # a coefficient arm of any lambda (the config names the one it measured), built from its name
    arm = arm_by_name("dapo+echo[coef=0.002]")
    assert (arm.method, arm.echo, arm.coef, arm.study) == ("dapo", True, 0.002, "coef")
    assert arm_by_name("grpo+echo[coef=1e-3]").coef == 0.001 and arm_by_name("grpo") is ARMS["grpo"]
    for name in ("grpo+echo[coef=]", "ppo+echo[coef=0.1]", "grpo+echo[coef=-1]"):
        with pytest.raises(ValueError, match="unknown arm"):
            arm_by_name(name)
    with pytest.raises(SystemExit):
        parse_args(["--arms", "grpo", "grpo+echo[coef=x]"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("harness: {arms: [grpo, nope]}\nseed_everything: 0\n")
    with pytest.raises(ValueError, match="unknown arm 'nope'"):
        load_base(bad)
    bad.write_text("harness: {seed: [0]}\n")
    with pytest.raises(ValueError, match="unknown harness keys \\['seed'\\]"):
        load_base(bad)
    for target in ("0.2x", 1.5, True):  # a fraction or null, and the error names the key
        bad.write_text(f"harness: {{all_success_target: {target}}}\n")
        with pytest.raises(ValueError, match="harness.all_success_target must be a fraction"):
            load_base(bad)
    assert harness["all_success_target"] == 0.2 and parse_args([]).harness.get("all_success_target") is None


def test_a_finished_run_with_other_settings_is_set_aside_not_overwritten(tmp_path):
    """A rerun with changed settings (another budget, a --quick run in the full sweep's folder) moves the
    finished run beside itself, named by its config hash; an unfinished attempt is left to be overwritten."""
    run = tmp_path / "grpo" / "seed0"
    run.mkdir(parents=True)
    assert set_aside(run) is None and run.is_dir()  # no scalars.json: nothing finished to keep
    (run / "scalars.json").write_text(json.dumps({"config_sha": "abc123", "scalars": {}}))
    (run / "log.txt").write_text("the first run")
    moved = set_aside(run)
    assert moved == tmp_path / "grpo" / "seed0.replaced-abc123" and not run.exists()
    assert (moved / "log.txt").read_text() == "the first run"
    run.mkdir()  # the same settings finished twice and replaced twice: the second copy gets its own name
    (run / "scalars.json").write_text(json.dumps({"config_sha": "abc123"}))
    assert set_aside(run) == tmp_path / "grpo" / "seed0.replaced-abc123-2"
    start = tmp_path / "start_eval"  # the shared evaluation records eval_sha; a broken record is still kept
    start.mkdir()
    (start / "scalars.json").write_text(json.dumps({"eval_sha": "e0"}))
    assert set_aside(start).name == "start_eval.replaced-e0"
    start.mkdir()
    (start / "scalars.json").write_text("{not json")
    assert set_aside(start).name == "start_eval.replaced-unreadable"


def test_shared_start_eval_digest_and_merge(tmp_path):
    args = parse_args(["--config", "experiments/configs/echo_forking.yaml"])
    assert args.harness["shared_start_eval"] is True
    grpo = run_config(arm_by_name("grpo"), 0, tmp_path / "a", args)
    echo = run_config(arm_by_name("dapo+echo[coef=0.002]"), 3, tmp_path / "b", args)
    assert grpo["trainer"]["num_sanity_val_steps"] == 0  # no run repeats the shared step-0 evaluation
    # arm, seed, run folder and training budget do not change what the untrained model's evaluation is...
    assert _eval_digest(grpo) == _eval_digest(echo)
    # ...the model, the evaluation prompts and the sampling settings do
    for section, key, value in (("data", "num_val", 7), ("model", "model", "elsewhere")):
        changed = run_config(arm_by_name("grpo"), 0, tmp_path / "a", args)
        changed[section]["init_args"][key] = value
        assert _eval_digest(changed) != _eval_digest(grpo), key
    changed = run_config(arm_by_name("grpo"), 0, tmp_path / "a", args)
    changed["model"]["init_args"]["eval"]["temperature"] = 1.0
    assert _eval_digest(changed) != _eval_digest(grpo)
    # the merge: the shared step-0 point goes in front; a run's own step-0 point (if any) is replaced
    run = {"val/id/avg@4": [[0, 0.5], [8, 0.7]], "reward/mean": [[0, 0.9]], "val/ood/avg@4": [[8, 0.1]]}
    start = {"val/id/avg@4": [[0, 0.6]], "val/ood/avg@4": [[0, 0.2]]}
    assert with_start(run, start) == {
        "val/id/avg@4": [[0, 0.6], [8, 0.7]],
        "reward/mean": [[0, 0.9]],
        "val/ood/avg@4": [[0, 0.2], [8, 0.1]],
    }
