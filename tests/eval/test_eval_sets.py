"""Multi-set evaluation: ``PromptDataModule.eval_sets``, ``HubPromptDataModule(eval_sets=...)`` and the
per-set metrics of ``EchoRLModule`` (real tiny model, HF engine on CPU, real Trainer).

The in-process test scores with small deterministic verifiers (real ``Verifier`` implementations, not
mocks) so that every logged number has a hand-computed expected value; the CLI test runs
``configs/eval_math.yaml`` end to end on local files in the MATH-500 and ARC-Challenge schemas.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as L
import pytest
from torch.utils.data import DataLoader

from echorl_lightning.data.base import EvalSet, PromptDataModule
from echorl_lightning.data.hub import MC_INSTRUCTION, HubEvalOptions, HubPromptDataModule
from echorl_lightning.data.types import PromptExample
from echorl_lightning.module import EchoRLModule
from echorl_lightning.rewards.math_verify import MathVerifier
from echorl_lightning.rewards.multiple_choice import MultipleChoiceVerifier
from echorl_lightning.tasks import ProceduralDataModule
from echorl_lightning.tasks.arithmetic import ArithmeticTask
from echorl_lightning.tiny import TINY_MODEL_PATH
from echorl_lightning.training.config import EvalConfig
from tests.helpers.cli_runs import run_cli, scalars

MATH_ROWS = [
    {"problem": "What is 2+3?", "answer": "5", "solution": "2+3=5, so \\boxed{5}."},
    {"problem": "What is 4*4?", "answer": "16", "solution": "\\boxed{16}"},
    {"problem": "What is 9-7?", "answer": "2", "solution": "\\boxed{2}"},
]
ARC_ROWS = [
    {
        "question": "Which is a mammal?",
        "choices": {"text": ["shark", "whale", "trout"], "label": ["A", "B", "C"]},
        "answerKey": "B",
    },
    {
        "question": "What do plants need for photosynthesis?",
        "choices": {"text": ["light", "sand", "iron", "salt"], "label": ["1", "2", "3", "4"]},
        "answerKey": "1",
    },
]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# ---- datamodules ----------------------------------------------------------------------------------------
def test_default_datamodule_has_one_val_set_and_one_loader() -> None:
    dm = ProceduralDataModule(ArithmeticTask(), num_val=5)
    sets = dm.eval_sets()
    assert [s.name for s in sets] == ["val"]
    assert sets[0].prompts == dm.val_prompts and sets[0].verifier is dm.verifier and sets[0].group is None
    assert isinstance(dm.val_dataloader(), DataLoader)


def test_hub_eval_sets_load_render_and_share_one_math_verifier(tmp_path: Path) -> None:
    math_path = write_jsonl(tmp_path / "math500.jsonl", MATH_ROWS)
    arc_path = write_jsonl(tmp_path / "arc.jsonl", ARC_ROWS)
    gsm_path = write_jsonl(tmp_path / "gsm.jsonl", [{"question": "1+1?", "answer": "one and one\n#### 2"}])
    dm = HubPromptDataModule(
        eval=HubEvalOptions(
            sets=["math500", "arc_challenge", "gsm8k"],
            paths={"math500": math_path, "arc_challenge": arc_path, "gsm8k": gsm_path},
        ),
        use_chat_template=False,
        val_batch_size=2,
    )
    math500, arc, gsm8k = dm.eval_sets()
    assert (math500.name, math500.group, arc.name, arc.group) == ("math500", "id", "arc_challenge", "ood")
    assert [ex.reference for ex in math500.prompts] == ["5", "16", "2"]
    # ARC labels map to letters by position: "B" -> B, "1" (first of 1..4) -> A
    assert [ex.reference for ex in arc.prompts] == ["B", "A"]
    assert math500.prompts[0].prompt == dm.instruction.replace("{prompt}", "What is 2+3?")
    assert arc.prompts[1].prompt.endswith(MC_INSTRUCTION.removeprefix("{prompt}"))
    assert "(A) light\n(B) sand" in arc.prompts[1].prompt
    assert isinstance(math500.verifier, MathVerifier) and math500.verifier is gsm8k.verifier
    assert isinstance(arc.verifier, MultipleChoiceVerifier)
    assert math500.answer_fn("so \\boxed{16}.") == "16" and arc.answer_fn("The answer is \\boxed{C}") == "C"
    loaders = dm.val_dataloader()
    assert isinstance(loaders, list) and [len(list(dl)) for dl in loaders] == [2, 1, 1]  # 3 rows / batch 2


def test_hub_eval_sets_bad_names_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="mat500"):
        HubPromptDataModule(eval=HubEvalOptions(sets=["mat500"]))
    with pytest.raises(ValueError, match=r"eval.paths: \['gsm8k'\]"):
        HubPromptDataModule(eval=HubEvalOptions(sets=["math500"], paths={"gsm8k": "x.jsonl"}))


def test_eval_set_rejects_bad_name_and_group() -> None:
    with pytest.raises(ValueError, match="a/b"):
        EvalSet("a/b", [], ConstantVerifier(1.0), None, str)
    with pytest.raises(ValueError, match="group"):
        EvalSet("a", [], ConstantVerifier(1.0), "train", str)  # type: ignore[arg-type]


# ---- the module's per-set metrics (in process, hand-computed values) ------------------------------------
class ConstantVerifier:
    """Scores every completion ``value``."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, completions: Sequence[str], references: Sequence[str]) -> list[float | None]:
        return [self.value] * len(completions)


class ParityVerifier:
    """Scores completion i of a batch ``i % 2`` (with k=2: each prompt's samples score [0, 1])."""

    def __call__(self, completions: Sequence[str], references: Sequence[str]) -> list[float | None]:
        return [float(i % 2) for i in range(len(completions))]


class ThreeSets(PromptDataModule):
    """a: 3 prompts, all correct, group id; b: 1 prompt, all wrong, group ood; c: 2 prompts, parity, no
    group, answers all None (maj@k counts None as no answer)."""

    def load_eval_sets(self) -> Sequence[EvalSet]:
        def prompts(name: str, count: int) -> list[PromptExample]:
            return [PromptExample(f"{i}+{i}=", str(2 * i), uid=f"{name}/{i}") for i in range(count)]

        return [
            EvalSet("a", prompts("a", 3), ConstantVerifier(1.0), "id", lambda text: "x"),
            EvalSet("b", prompts("b", 1), ConstantVerifier(0.0), "ood", lambda text: "x"),
            EvalSet("c", prompts("c", 2), ParityVerifier(), None, lambda text: None),
        ]


def test_validate_logs_hand_computed_per_set_metrics(tmp_path: Path) -> None:
    module = EchoRLModule(model=TINY_MODEL_PATH, eval=EvalConfig(n=2, max_new_tokens=4))
    dm = ThreeSets(val_batch_size=2)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, default_root_dir=tmp_path
    )
    trainer.validate(module, datamodule=dm)
    got = {k: float(v) for k, v in trainer.callback_metrics.items()}
    expected = {
        "val/a/avg@2": 1.0,
        "val/a/pass@1": 1.0,
        "val/a/pass@2": 1.0,
        "val/a/maj@2": 1.0,
        "val/b/avg@2": 0.0,
        "val/b/pass@2": 0.0,
        "val/b/maj@2": 0.0,
        # c: each prompt scores [0, 1]: avg 0.5, pass@1 = 1 - (1 - 1/2) = 0.5, pass@2 = 1; no answers: maj 0
        "val/c/avg@2": 0.5,
        "val/c/pass@1": 0.5,
        "val/c/pass@2": 1.0,
        "val/c/maj@2": 0.0,
        "val/id_avg": 1.0,  # only a
        "val/ood_avg": 0.0,  # only b
        # over all 12 samples, not the mean of set means (0.5): (3*2*1 + 1*2*0 + 2*(0 + 1)) / 12 = 8/12
        "val/accuracy": 8 / 12,
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    for name in ("a", "b", "c"):
        assert 0 < got[f"val/{name}/response_length"] <= 4
    # metrics are reset between epochs: a second validation gives the same numbers
    trainer.validate(module, datamodule=dm)
    assert float(trainer.callback_metrics["val/accuracy"]) == pytest.approx(8 / 12, abs=1e-6)


# ---- the shipped eval config end to end -----------------------------------------------------------------
@pytest.mark.slow
def test_cli_test_eval_math_on_two_local_sets(tmp_path: Path) -> None:
    math_path = write_jsonl(tmp_path / "math500.jsonl", MATH_ROWS)
    arc_path = write_jsonl(tmp_path / "arc.jsonl", ARC_ROWS)
    proc = run_cli(
        "test",
        "--config",
        "configs/eval_math.yaml",
        f"--model.init_args.model={TINY_MODEL_PATH}",
        "--model.init_args.engine=echorl_lightning.rollout.hf_engine.HFGenerateEngine",
        "--model.init_args.dtype=float32",
        "--model.init_args.eval.max_new_tokens=32",
        "--model.init_args.eval.n=2",
        "--trainer.accelerator=cpu",
        "--trainer.precision=32-true",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--data.init_args.eval.sets=[math500, arc_challenge]",
        f"--data.init_args.eval.paths={{math500: {math_path}, arc_challenge: {arc_path}}}",
    )
    keys = (
        "test/math500/avg@2",
        "test/math500/maj@2",
        "test/math500/pass@1",
        "test/arc_challenge/pass@2",
        "test/arc_challenge/avg@2",
        "test/id_avg",
        "test/ood_avg",
        "test/accuracy",
    )
    logged = {tag: values[-1][1] for tag, values in scalars(tmp_path).items()}
    for key in keys:
        assert key in logged, f"{key} not logged; have {sorted(logged)}"
        assert 0.0 <= logged[key] <= 1.0, (key, logged[key])
    assert re.search(r"\[test\] step 0: accuracy \d\.\d{4}\n", proc.stdout)
    assert re.search(r"\[test\] step 0: avg@2 math500 \d\.\d{4}, arc_challenge \d\.\d{4}\n", proc.stdout)
    assert "test/math500/avg@2" in proc.stdout  # the results table (long keys are cut to the width)
    # one set per group: the group mean is that set's avg@2; accuracy weighs samples (3 vs 2 prompts)
    assert logged["test/id_avg"] == pytest.approx(logged["test/math500/avg@2"], abs=1e-6)
    assert logged["test/ood_avg"] == pytest.approx(logged["test/arc_challenge/avg@2"], abs=1e-6)
    overall = (3 * logged["test/math500/avg@2"] + 2 * logged["test/arc_challenge/avg@2"]) / 5
    assert logged["test/accuracy"] == pytest.approx(overall, abs=1e-6)
