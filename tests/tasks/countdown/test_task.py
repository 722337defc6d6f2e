"""The Countdown task: generator determinism and splits, the solver's traces, the datamodule's sets."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest

from echorl_lightning.data.types import PromptExample
from echorl_lightning.tasks import EvalSpec, ProceduralDataModule
from echorl_lightning.tasks.countdown import CountdownTask
from echorl_lightning.tasks.countdown.difficulty import (
    DEFAULT_DIFFICULTY,
    CountdownDifficulty,
    larger_numbers,
    more_numbers,
)
from echorl_lightning.tasks.countdown.problems import (
    make_problem,
    make_problems,
    parse_reference,
    problem_bucket,
)
from echorl_lightning.tasks.countdown.solver import (
    Term,
    apply_op,
    combine_text,
    count_solutions,
    moves,
    reachable,
    search_trace,
)
from echorl_lightning.tasks.countdown.steps import CountdownStepChecker
from echorl_lightning.tasks.countdown.verifier import CountdownVerifier, countdown_answer, parse_expression
from recipes.tiny.sft_data import SFTDataModule
from recipes.tiny.tokenizer import build_tokenizer


def test_rule_of_one_move() -> None:
    # positive integers only: 7-9 would be -2, 7/2 = 3.5, both forbidden; 8/2 = 4 exact
    assert (apply_op(9, "-", 7), apply_op(7, "-", 9), apply_op(7, "-", 7)) == (2, None, None)
    assert (apply_op(8, "/", 2), apply_op(7, "/", 2), apply_op(6, "*", 7)) == (4, None, 42)


def test_moves_hand_listed() -> None:
    # pool (6, 2, 1): pairs (6,2): 8, 4, 12, 3; (6,1): 7, 5 (6*1 and 6/1 change nothing); (2,1): 3, 1
    assert moves([6, 2, 1], cap=200) == [
        (6, "+", 2, 8),
        (6, "-", 2, 4),
        (6, "*", 2, 12),
        (6, "/", 2, 3),
        (6, "+", 1, 7),
        (6, "-", 1, 5),
        (2, "+", 1, 3),
        (2, "-", 1, 1),
    ]
    # a repeated number gives one move per operator, and the cap drops 9*9=81
    assert moves([9, 9], cap=50) == [(9, "+", 9, 18), (9, "/", 9, 1)]


def test_reachable_and_solutions_hand_counted() -> None:
    # from (2, 3, 4): 1=3-2, 2=4-2, 3=4-(3-2), 5=2+3, 6=2*3, 7=3+4, 8=2*4, 9=2+3+4, 10=2*3+4, 11=2*4+3,
    # 12=3*4, 14=3*4+2, 18=(2+4)*3, 20=(2+3)*4, 24=2*3*4; 4 only as 4*(3-2), a no-op move the solver skips
    assert sorted(reachable([2, 3, 4], cap=200)) == [1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 14, 18, 20, 24]
    assert max(reachable([2, 3, 4], cap=20)) == 20  # the cap drops 24 (and every move through 24)
    # 24 from (2, 3, 4): (2*3)*4, (2*4)*3, (3*4)*2 are three distinct expressions, nothing else reaches 24
    assert count_solutions([2, 3, 4], 24, cap=200) == 3
    assert count_solutions([2, 3, 4], 24, cap=200, limit=2) == 2
    # 9 from (2, 3, 4): only the sums (2+3)+4, (2+4)+3, (3+4)+2
    assert count_solutions([2, 3, 4], 9, cap=200) == 3


def test_expression_text_minimal_parentheses() -> None:
    a, b, c = Term(25, "25", 3), Term(5, "5", 3), Term(3, "3", 3)
    diff = Term(20, combine_text(a, "-", b), 1)
    assert diff.text == "25-5"
    assert combine_text(diff, "*", c) == "(25-5)*3"  # a lower-precedence left operand needs parentheses
    assert combine_text(c, "-", diff) == "3-(25-5)"  # right of '-': same precedence still needs them
    assert combine_text(diff, "+", c) == "25-5+3"  # left-associative: no parentheses needed
    prod = Term(15, "5*3", 2)
    assert combine_text(a, "/", prod) == "25/(5*3)" and combine_text(a, "+", prod) == "25+5*3"


def test_search_trace_is_seeded_valid_and_in_length() -> None:
    trace = search_trace([25, 5, 3, 7], 27, random.Random(1), cap=200)
    assert trace == search_trace([25, 5, 3, 7], 27, random.Random(1), cap=200)
    assert trace is not None and 6 <= len(trace) <= 20 and trace[-1].startswith("Answer: ")
    value, used = parse_expression(trace[-1][len("Answer: ") :])
    assert value == 27 and not Counter(used) - Counter([25, 5, 3, 7])
    assert CountdownStepChecker()(["\n".join(trace)], [PromptExample("", "25 5 3 7 -> 27")]) == [True]
    with pytest.raises(ValueError, match="at least 3 numbers"):
        search_trace([5, 3], 8, random.Random(0), cap=200)


def test_search_trace_writes_the_pool_and_target_on_every_line() -> None:
    # seed 1 on {25, 5, 3, 7} -> 27: 25-3=22 leaves [22 5 7] (result first, then the rest in order);
    # 22-5=17 leaves [17 7]; two numbers left, so every leaf move is tried: 17-7=10, 17*7=119, 17+7=24
    # miss and keep [17 7] (17/7 is inexact, no move); back restores [22 5 7]; 22+5=27 leaves [27 7].
    # Every pool ends with the target, "-> 27"
    assert search_trace([25, 5, 3, 7], 27, random.Random(1), cap=200) == [
        "25-3=22 [22 5 7 -> 27]",
        "22-5=17 [17 7 -> 27]",
        "17-7=10 (no) [17 7 -> 27]",
        "17*7=119 (no) [17 7 -> 27]",
        "17+7=24 (no) [17 7 -> 27]",
        "back [22 5 7 -> 27]",
        "22+5=27 [27 7 -> 27]",
        "Answer: 25-3+5",
    ]


def test_generator_is_deterministic_random_access() -> None:
    problems = make_problems("train", 12, seed=3)
    assert problems == make_problems("train", 12, seed=3)
    assert make_problem("train", 7, seed=3) == problems[7]
    assert make_problems("train", 4, seed=3, start=5) == problems[5:9]
    assert make_problems("train", 12, seed=4) != problems
    p = problems[0]
    assert p.prompt == f"Q: {p.reference}\n" and parse_reference(p.reference) == (list(p.numbers), p.target)


def test_splits_are_disjoint_by_hash() -> None:
    # the bucket hashes the sorted numbers and the target, so order does not matter
    assert problem_bucket((25, 5, 3, 7), 27) == problem_bucket((3, 5, 7, 25), 27)
    buckets = {
        split: {problem_bucket(p.numbers, p.target) for p in make_problems(split, n)}
        for split, n in (("train", 100), ("val", 20), ("test", 20))
    }
    assert buckets["val"] == {0} and buckets["test"] == {1} and not buckets["train"] & {0, 1}
    with pytest.raises(ValueError, match="unknown split"):
        make_problem("ood", 0)  # type: ignore[arg-type]


def test_problems_respect_difficulty_and_are_solved_by_their_trace() -> None:
    verifier, checker = CountdownVerifier(), CountdownStepChecker()
    for difficulty in (
        DEFAULT_DIFFICULTY,
        more_numbers(DEFAULT_DIFFICULTY),
        larger_numbers(DEFAULT_DIFFICULTY),
    ):
        problems = make_problems("val", 15, difficulty=difficulty)
        for p in problems:
            d = difficulty
            assert d.min_numbers <= len(p.numbers) <= d.max_numbers
            assert all(d.min_number <= n <= d.max_number for n in p.numbers)
            assert d.min_target <= p.target <= d.max_target and p.target not in p.numbers
            assert d.min_steps <= len(p.solution.split("\n")) <= d.max_steps
            assert count_solutions(p.numbers, p.target, d.max_intermediate, limit=2) >= d.min_solutions
        solutions = [p.solution for p in problems]
        assert verifier(solutions, [p.reference for p in problems]) == [1.0] * 15
        assert checker(solutions, [PromptExample(p.prompt, p.reference) for p in problems]) == [True] * 15


def test_ood_knobs() -> None:
    # default: 3 numbers in 1..20, targets up to 99, intermediates up to 200, traces up to 20 lines
    more = more_numbers(DEFAULT_DIFFICULTY)
    assert (more.min_numbers, more.max_numbers) == (4, 4)
    assert more_numbers(DEFAULT_DIFFICULTY).max_steps == 24
    large = larger_numbers(DEFAULT_DIFFICULTY)
    # numbers up to 2.5 x 20 = 50, targets up to 2 x 99 + 1 = 199, intermediates up to 2 x 200 = 400
    assert (large.max_number, large.max_target, large.max_intermediate) == (50, 199, 400)
    with pytest.raises(ValueError, match="min_numbers"):
        CountdownDifficulty(min_numbers=2)
    with pytest.raises(ValueError, match="max_intermediate"):
        replace(DEFAULT_DIFFICULTY, max_target=500)


def test_countdown_answer_is_the_value() -> None:
    assert countdown_answer("9+8=17\nAnswer: (25-5)+7") == "27"
    assert countdown_answer("Answer: 5-7") is None and countdown_answer("no answer") is None


def test_datamodule_sets_verifier_and_step_checker() -> None:
    dm = ProceduralDataModule(CountdownTask(), num_train=5, num_val=3, eval_sets=None)
    sets = dm.eval_sets()
    assert [(s.name, s.group, len(s.prompts)) for s in sets] == [
        ("id", "id", 3),
        ("ood_numbers", "ood", 3),
        ("ood_large", "ood", 3),
    ]
    assert all(len(parse_reference(ex.reference)[0]) == 4 for ex in sets[1].prompts)
    assert isinstance(sets[0].step_checker, CountdownStepChecker)
    assert len(dm.train_prompts) == 5 and dm.train_prompts[0].expert is not None
    ex = sets[0].prompts[0]
    assert sets[0].verifier([ex.expert, "Answer: 1"], [ex.reference] * 2) == [1.0, 0.0]
    assert sets[0].answer_fn(ex.expert) == ex.reference.split(" -> ")[1]
    custom = ProceduralDataModule(
        CountdownTask(), num_val=2, eval_sets=[EvalSpec("x", "test", None, None, num=1)]
    )
    assert [(s.name, s.group, len(s.prompts)) for s in custom.eval_sets()] == [("x", None, 1)]
    with pytest.raises(ValueError, match="num must be >= 1"):
        ProceduralDataModule(CountdownTask(), eval_sets=[EvalSpec("x", num=0)])


def test_distinct_problems_and_the_narrow_id_set_warning(caplog) -> None:
    # the same numbers in another order and the same target are one problem; another target is another
    examples = [PromptExample("", r) for r in ("3 9 2 -> 21", "2 3 9 -> 21", "3 9 2 -> 12", "1 2 3 -> 21")]
    task = CountdownTask()
    assert task.distinct_problems(examples) == 3
    # evaluation sets hold distinct problems by default: every prompt is another problem, and the draws it
    # skipped are repeats of earlier ones (the uid carries the draw index)
    sets = ProceduralDataModule(task, num_val=64).eval_sets()
    for eval_set in sets:
        assert task.distinct_problems(eval_set.prompts) == len(eval_set.prompts) == 64, eval_set.name
    drawn = task.prompts("val", 64)  # the generator's own draws repeat problems even at 1..20
    assert task.distinct_problems(drawn) < 64
    indices = [int(ex.uid.rsplit("-", 1)[1]) for ex in sets[0].prompts]
    assert indices[0] == 0 and indices == sorted(indices) and indices[-1] > 63
    raw = task.prompts("val", indices[-1] + 1)
    assert [ex.prompt for ex in sets[0].prompts] == [raw[i].prompt for i in indices]
    assert all(  # every skipped draw repeats a problem taken before it
        task.distinct_problems([raw[j] for j in indices if j < i] + [raw[i]]) == sum(j < i for j in indices)
        for i in range(indices[-1] + 1)
        if i not in indices
    )
    # a narrow difficulty (numbers in 1..10: 22 problems in the val bucket) cannot fill a set of 64: the set
    # is shorter, and the datamodule says so, naming it; without distinct_eval the repeats stay, also named
    narrow = CountdownDifficulty(max_number=10)
    spec = [EvalSpec("narrow", "val", CountdownTask(narrow), "id")]
    with caplog.at_level("WARNING", logger="echorl_lightning.tasks.datamodule"):
        short = ProceduralDataModule(task, num_val=64, eval_sets=spec).eval_sets()[0]
    assert task.distinct_problems(short.prompts) == len(short.prompts) < 32
    assert f"eval set 'narrow' has {len(short.prompts)} distinct problems for the 64 prompts" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="echorl_lightning.tasks.datamodule"):
        kept = ProceduralDataModule(task, num_val=64, eval_sets=spec, distinct_eval=False).eval_sets()[0]
    assert len(kept.prompts) == 64 and task.distinct_problems(kept.prompts) <= len(short.prompts)  # 64 draws
    assert "64 prompts, repeats included" in caplog.text
    # the validation loop's prompts are the first set's
    dm = ProceduralDataModule(task, num_val=8)
    assert [ex.prompt for ex in dm.load_val_prompts()] == [ex.prompt for ex in dm.eval_sets()[0].prompts][:8]


def test_sft_datamodule_batches() -> None:
    dm = SFTDataModule(CountdownTask(), batch_size=4, num_val=2)
    dm.connect(build_tokenizer())
    batch = next(iter(dm.train_dataloader()))
    first = make_problem("train", 0)
    # row 0 = prompt bytes + trace bytes + EOS (256); the loss mask starts after the prompt
    row = batch["input_ids"][0, : batch["attention_mask"][0].sum()].tolist()
    assert row == [*first.prompt.encode(), *first.solution.encode(), 256]
    assert batch["loss_mask"][0].sum() == len(first.solution) + 1
    val = next(iter(dm.val_dataloader()))
    assert len(val["prompts"]) == 2 and val["references"][0] == make_problem("val", 0).reference
