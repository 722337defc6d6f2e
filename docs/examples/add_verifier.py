"""Add a verifier: a plain function, or a class whose answer() is what maj@k votes on.

Run from the repository root: HF_HUB_OFFLINE=1 python docs/examples/add_verifier.py
In a config: data.init_args.verifier: add_verifier.last_number  (a module on the import path), or
data.init_args.verifier: {class_path: add_verifier.LastNumber, init_args: {tolerance: 0.5}}.
"""

import re


def last_number(completions, references):  # no type hints needed; None = "could not judge"
    numbers = [re.findall(r"-?\d+", c) for c in completions]
    return [float(n[-1] == r) if n else None for n, r in zip(numbers, references, strict=True)]


class LastNumber:
    """Numeric answers within `tolerance`; `answer()` is the normalised answer maj@k votes on."""

    def __init__(self, tolerance: float = 0.0) -> None:
        self.tolerance = tolerance

    def answer(self, completion: str) -> str | None:
        numbers = re.findall(r"-?\d+(?:\.\d+)?", completion)
        return str(float(numbers[-1])) if numbers else None

    def __call__(self, completions, references):
        answers = [self.answer(c) for c in completions]
        return [
            None if a is None else float(abs(float(a) - float(r)) <= self.tolerance)
            for a, r in zip(answers, references, strict=True)
        ]


if __name__ == "__main__":
    from echorl_lightning.cli import main

    completions, references = ["2+3=5\nAnswer: 5", "about 4.6", "no idea"], ["5", "5", "5"]
    for verifier in [
        "add_verifier.last_number",
        '{"class_path": "add_verifier.LastNumber", "init_args": {"tolerance": 0.5}}',
    ]:
        cli = main(args=["--config", "configs/demo.yaml", f"--data.init_args.verifier={verifier}"], run=False)
        print(type(cli.datamodule).__name__, cli.datamodule.verifier(completions, references))
    print(LastNumber().answer("7-2=5\nAnswer: 5"))  # '5.0': maj@k counts "5", "5.0" and "05" as one vote
