"""The procedural arithmetic task: reproducible, disjoint splits, correct worked solutions."""

from __future__ import annotations

import re

import pytest

from echorl_lightning.data.types import PromptExample
from echorl_lightning.rewards.exact_match import ExactMatchVerifier
from echorl_lightning.tasks import EvalSpec, ProceduralDataModule
from echorl_lightning.tasks.arithmetic import ArithmeticTask
from echorl_lightning.tasks.arithmetic.problems import (
    DEFAULT_DIFFICULTY,
    Difficulty,
    expression_bucket,
    make_problem,
    make_problems,
    ood_difficulty,
)
from echorl_lightning.tasks.arithmetic.solver import solve
from echorl_lightning.tasks.arithmetic.steps import ArithmeticStepChecker, check_steps
from echorl_lightning.tasks.arithmetic.steps import parse_expression as parse_arith
from recipes.tiny.sft_data import SFTDataModule, sft_collate
from recipes.tiny.tokenizer import build_tokenizer

STEP = re.compile(r"(-?\d+)([-+*])(\d+)=(-?\d+)")


def test_hand_worked_example() -> None:
    # 47+8*3-12: multiplication first 8*3=24, then left to right 47+24=71, 71-12=59
    steps, value = solve([47, 8, 3, 12], ["+", "*", "-"])
    assert steps == ["8*3=24", "47+24=71", "71-12=59"]
    assert value == 59
    # 12-47+2*3*4: 2*3=6, 6*4=24, 12-47=-35, -35+24=-11
    assert solve([12, 47, 2, 3, 4], ["-", "+", "*", "*"]) == (
        ["2*3=6", "6*4=24", "12-47=-35", "-35+24=-11"],
        -11,
    )


def test_reproducible_random_access() -> None:
    for split in ("train", "val", "test", "ood"):
        problems = make_problems(split, 20, seed=3)
        assert problems == make_problems(split, 20, seed=3)
        assert make_problem(split, 7, seed=3) == problems[7]  # random access: index 7 alone
        assert make_problems(split, 5, seed=3, start=10) == problems[10:15]
    assert make_problems("val", 20, seed=3) != make_problems("val", 20, seed=4)


def test_splits_are_disjoint() -> None:
    expressions = {
        split: {p.expression for p in make_problems(split, n, seed=0)}
        for split, n in (("train", 3000), ("val", 300), ("test", 300), ("ood", 300))
    }
    buckets = {split: {expression_bucket(e) for e in exprs} for split, exprs in expressions.items()}
    assert buckets["val"] == {0} and buckets["test"] == {1} and buckets["ood"] == {2}
    assert not buckets["train"] & {0, 1, 2}
    splits = list(expressions)
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            assert not expressions[a] & expressions[b], (a, b)


@pytest.mark.parametrize("split", ["train", "val", "ood"])
def test_solutions_are_arithmetically_right(split: str) -> None:
    difficulty = ood_difficulty(DEFAULT_DIFFICULTY) if split == "ood" else DEFAULT_DIFFICULTY
    verifier = ExactMatchVerifier()
    for problem in make_problems(split, 300, seed=1):
        assert problem.prompt == f"Q: {problem.expression}\n"
        operands = [int(x) for x in re.split(r"[-+*]", problem.expression)]
        assert difficulty.min_operands <= len(operands) <= difficulty.max_operands
        assert problem.answer == str(eval(problem.expression))  # Python's precedence agrees with the steps
        *step_lines, answer_line = problem.solution.split("\n")
        assert answer_line == f"Answer: {problem.answer}"
        assert len(step_lines) == len(operands) - 1  # one operation per line
        for line in step_lines:
            a, op, b, c = STEP.fullmatch(line).groups()
            assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op] == int(c), line
        assert verifier([problem.solution], [problem.answer]) == [1.0]


def test_difficulty_knobs() -> None:
    easy = Difficulty(min_operands=2, max_operands=2, min_digits=3, max_digits=3, ops="+")
    for problem in make_problems("train", 50, difficulty=easy):
        a, b = problem.expression.split("+")
        assert 100 <= int(a) <= 999 and 100 <= int(b) <= 999
    mul = Difficulty(
        min_operands=3, max_operands=3, min_digits=2, max_digits=2, mul_digits=1, ops="*", chain_mul=True
    )
    for problem in make_problems("train", 50, difficulty=mul):
        assert all(1 <= int(x) <= 9 for x in problem.expression.split("*"))
    no_chain = Difficulty(min_operands=4, max_operands=4, ops="+*", chain_mul=False)
    for problem in make_problems("train", 100, difficulty=no_chain):
        assert "*" not in re.sub(r"\d+\*\d+", "P", problem.expression)  # every product has two factors
    with pytest.raises(ValueError, match="chain_mul"):
        Difficulty(ops="*")
    with pytest.raises(ValueError, match="ops"):
        Difficulty(ops="+/")
    with pytest.raises(ValueError, match="min_operands"):
        Difficulty(min_operands=1)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        make_problem("dev", 0)  # type: ignore[arg-type]


def test_rlvr_datamodule() -> None:
    dm = ProceduralDataModule(
        ArithmeticTask(), num_train=16, num_val=8, seed=2, eval_sets=[EvalSpec("val", "test", None, None)]
    )
    assert len(dm.train_prompts) == 16 and len(dm.val_prompts) == 8
    example = dm.val_prompts[3]
    problem = make_problem("test", 3, seed=2)
    assert (example.prompt, example.reference, example.expert) == (
        problem.prompt,
        problem.answer,
        problem.solution,
    )
    assert example.uid == "test-2-3"
    assert isinstance(dm.verifier, ExactMatchVerifier)
    assert dm.verifier([example.expert], [example.reference]) == [1.0]


def test_named_eval_sets() -> None:
    harder = Difficulty(min_operands=4, max_operands=4)
    dm = ProceduralDataModule(
        ArithmeticTask(Difficulty(min_operands=3, max_operands=3)),
        num_train=8,
        num_val=5,
        eval_sets=[
            EvalSpec("id", split="val", group="id"),
            EvalSpec("ood_steps", split="test", task=ArithmeticTask(harder), group="ood", num=3),
        ],
    )
    id_set, ood_set = dm.eval_sets()
    assert (id_set.name, id_set.group, len(id_set.prompts)) == ("id", "id", 5)
    assert (ood_set.name, ood_set.group, len(ood_set.prompts)) == ("ood_steps", "ood", 3)
    # operands are positive integers, so a prompt holds one number per operand ("Q: 7-8*6-2" holds 4)
    assert all(len(re.findall(r"\d+", ex.prompt)) == 3 for ex in id_set.prompts)
    assert all(len(re.findall(r"\d+", ex.prompt)) == 4 for ex in ood_set.prompts)
    assert ood_set.prompts[1].prompt == make_problem("test", 1, 0, harder).prompt
    assert id_set.verifier is dm.verifier
    # without eval_sets: the single set "val" of the configured split
    (only,) = ProceduralDataModule(ArithmeticTask(), num_train=8, num_val=2).eval_sets()
    assert (only.name, len(only.prompts)) == ("val", 2)
    with pytest.raises(ValueError, match="eval_sets\\['bad'\\].num must be >= 1, got 0"):
        ProceduralDataModule(ArithmeticTask(), eval_sets=[EvalSpec("bad", num=0)])


def test_sft_collate_masks_from_lengths() -> None:
    # EOS (=9) doubles as pad here, the case where a `!= pad` mask would drop EOS from the loss.
    # Row 0: prompt [1, 2] + response [4] + EOS -> length 4; row 1: prompt [3] + [6, 7] + EOS -> length 4,
    # row 2: prompt [1] + [5] + EOS -> length 3, padded with one 9.
    batch = sft_collate([[1, 2], [3], [1]], [[4], [6, 7], [5]], eos_id=9, pad_id=9)
    assert batch["input_ids"].tolist() == [[1, 2, 4, 9], [3, 6, 7, 9], [1, 5, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["loss_mask"].tolist() == [[0, 0, 1, 1], [0, 1, 1, 1], [0, 1, 1, 0]]  # response + EOS only
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        sft_collate([[1], [2]], [[3]], eos_id=9, pad_id=8)


def test_sft_datamodule_batches() -> None:
    tok = build_tokenizer()
    dm = SFTDataModule(ArithmeticTask(), batch_size=4, num_val=6, val_batch_size=4)
    dm.connect(tok)
    batch = next(iter(dm.train_dataloader()))
    problems = make_problems("train", 4)
    for i, problem in enumerate(problems):
        n = int(batch["attention_mask"][i].sum())
        ids = batch["input_ids"][i, :n].tolist()
        assert ids[-1] == tok.eos_token_id
        assert tok.decode(ids[:-1]) == problem.prompt + problem.solution
        target = [t for t, m in zip(ids, batch["loss_mask"][i].tolist(), strict=False) if m]
        assert tok.decode(target) == problem.solution + tok.eos_token  # response and EOS, no prompt
    val = list(dm.val_dataloader())
    assert [len(b["prompts"]) for b in val] == [4, 2]
    assert val[0]["references"][0] == make_problem("val", 0).answer


def test_step_checker_hand_written_traces() -> None:
    ops = ([7, 8, 6, 2], ["-", "*", "-"])  # 7-8*6-2: 8*6=48, 7-48=-41, -41-2=-43
    assert parse_arith("Q: 7-8*6-2\n") == ops
    assert check_steps("8*6=48\n7-48=-41\n-41-2=-43\nAnswer: -43", *ops) is True
    assert check_steps("8*6=48\n7-48=-41\n-41-2=-43", *ops) is True  # no Answer line yet: steps still fine
    assert check_steps("8*6=47\n7-47=-40\n-40-2=-42\nAnswer: -42", *ops) is False  # 8*6 is 48
    assert check_steps("7-8=-1\n-1*6=-6\n-6-2=-8\nAnswer: -8", *ops) is False  # right arithmetic, wrong order
    assert check_steps("8*6=48\n7-48=-41\nAnswer: -41", *ops) is False  # answer before the last step
    assert check_steps("8*6=48\n48-2=46\n7-46=-39\nAnswer: -39", *ops) is False  # 48-2 is not adjacent-left
    assert check_steps("8*6=48\n7-48=-41\n-41-2=-43\nAnswer: -44", *ops) is False  # answer not the value
    assert check_steps("8*6=48\nso 7-48=-41\n-41-2=-43\nAnswer: -43", *ops) is False  # not a step line
    assert check_steps("\n", *ops) is None
    # a chain of products may go in any order: 2*3*4 = (3*4)*2 = 2*12; but 2+3*4 must multiply first
    assert check_steps("3*4=12\n2*12=24\nAnswer: 24", [2, 3, 4], ["*", "*"]) is True
    assert check_steps("2+3=5\n5*4=20\nAnswer: 20", [2, 3, 4], ["+", "*"]) is False
    # 2+3-4: left to right only (3-4 first would be 2+(-1), the right value by luck, not a legal step)
    assert check_steps("3-4=-1\n2+-1=1\nAnswer: 1", [2, 3, 4], ["+", "-"]) is False


def test_step_checker_accepts_every_reference_solution() -> None:
    checker = ArithmeticStepChecker()
    for split in ("train", "ood"):
        problems = make_problems(split, 200, seed=5)
        examples = [PromptExample(p.prompt, p.answer) for p in problems]
        assert checker([p.solution for p in problems], examples) == [True] * 200
    assert checker(["Answer: 1"], [PromptExample("not a problem", "1")]) == [None]
    dm = ProceduralDataModule(ArithmeticTask(), num_train=4, num_val=2, eval_sets=[EvalSpec("id")])
    assert isinstance(dm.default_step_checker(), ArithmeticStepChecker)
    assert isinstance(dm.eval_sets()[0].step_checker, ArithmeticStepChecker)
