"""Countdown difficulty mixtures: component choice by weight, determinism, OOD derivation, YAML parsing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from echorl_lightning.tasks import ProceduralDataModule
from echorl_lightning.tasks.countdown import CountdownTask
from echorl_lightning.tasks.countdown.difficulty import (
    CountdownDifficulty,
    CountdownMixture,
    larger_numbers,
    more_numbers,
)
from echorl_lightning.tasks.countdown.problems import make_problem
from experiments.countdown_traces import component_name

THREE = CountdownDifficulty(max_steps=12)
FOUR = CountdownDifficulty(min_numbers=4, max_numbers=4, max_steps=16)
MIX = CountdownMixture(components=(THREE, FOUR), weights=(3.0, 1.0), names=("three", "four"))


def test_components_follow_their_weights_and_each_problem_obeys_its_component() -> None:
    names = [component_name("train", i, 0, MIX) for i in range(2000)]
    counts = Counter(names)
    # weights 3 : 1 -> expected share 0.75 of "three"; 2,000 draws give a standard error of
    # sqrt(0.75 * 0.25 / 2000) = 0.0097, so 0.75 +- 0.04 is four standard errors
    assert abs(counts["three"] / 2000 - 0.75) < 0.04
    for i in range(40):
        problem = make_problem("train", i, 0, MIX)
        component = THREE if names[i] == "three" else FOUR
        assert problem == make_problem("train", i, 0, component)  # the component's own problem i
        assert len(problem.numbers) == (3 if names[i] == "three" else 4)
        assert component.min_steps <= len(problem.solution.split("\n")) <= component.max_steps


def test_mixture_is_deterministic_and_seeded() -> None:
    first = [make_problem("val", i, 0, MIX) for i in range(8)]
    assert first == [make_problem("val", i, 0, MIX) for i in range(8)]
    picks = [component_name("val", i, 0, MIX) for i in range(64)]
    assert picks != [component_name("val", i, 1, MIX) for i in range(64)]  # another seed, other picks


def test_a_one_component_mixture_is_that_difficulty() -> None:
    alone = CountdownMixture(components=(THREE,), weights=(1.0,))
    assert alone.names == ("c0",)
    assert [make_problem("train", i, 0, alone) for i in range(6)] == [
        make_problem("train", i, 0, THREE) for i in range(6)
    ]
    assert component_name("train", 0, 0, THREE) == ""


def test_ood_knobs_apply_to_every_component() -> None:
    more = more_numbers(MIX)
    assert isinstance(more, CountdownMixture) and more.weights == MIX.weights and more.names == MIX.names
    assert [c.min_numbers for c in more.components] == [4, 5]
    assert [c.max_steps for c in more.components] == [16, 20]  # 12 + 4, 16 + 4
    large = larger_numbers(MIX)
    # numbers up to int(20 * 2.5) = 50, targets up to 99 * 2 + 1 = 199, intermediates 200 * 2 = 400
    assert [(c.max_number, c.max_target, c.max_intermediate) for c in large.components] == [
        (50, 199, 400)
    ] * 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"components": (), "weights": ()}, "must not be empty"),
        ({"components": (THREE, FOUR), "weights": (1.0,)}, "need as many weights"),
        ({"components": (THREE, FOUR), "weights": (1.0, 0.0)}, "must be > 0"),
        ({"components": (THREE, FOUR), "weights": (1.0, 1.0), "names": ("a", "a")}, "names must differ"),
    ],
)
def test_bad_mixtures_say_what_is_wrong(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CountdownMixture(**kwargs)


def test_mixture_from_yaml_through_the_cli_parser(tmp_path: Path) -> None:
    """A YAML mixture reaches the datamodule as a CountdownMixture, a plain block as a CountdownDifficulty."""
    from lightning.pytorch.cli import LightningCLI

    from recipes.tiny.sft import SFTModule

    data = {
        "class_path": "echorl_lightning.tasks.ProceduralDataModule",
        "init_args": {
            "num_train": 8,
            "num_val": 4,
            "task": {
                "class_path": "echorl_lightning.tasks.countdown.CountdownTask",
                "init_args": {
                    "difficulty": {
                        "components": [
                            {"max_steps": 12},
                            {"min_numbers": 4, "max_numbers": 4, "max_steps": 16},
                        ],
                        "weights": [3, 1],
                        "names": ["three", "four"],
                    },
                },
            },
        },
    }
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump({"data": data}))
    cli = LightningCLI(SFTModule, args=["--config", str(path)], run=False, subclass_mode_data=True)
    assert isinstance(cli.datamodule, ProceduralDataModule)
    assert isinstance(cli.datamodule.task, CountdownTask)
    assert cli.datamodule.task.difficulty == MIX
    prompts = cli.datamodule.load_train_prompts()
    assert prompts == CountdownTask(MIX).prompts("train", 8, 0)
    # the default ood sets derive from the mixture: ood_numbers has 4 and 5 numbers, by component
    ood = {spec.name: spec.task.difficulty for spec in cli.datamodule.eval_specs}["ood_numbers"]
    assert ood == more_numbers(MIX)
