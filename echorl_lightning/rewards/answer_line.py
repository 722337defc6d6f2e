"""The final ``Answer:`` line of a completion, as the strict verifiers of the generated tasks read it.

Implements :func:`answer_line_text`, shared by the arithmetic task's
:class:`~echorl_lightning.rewards.exact_match.ExactMatchVerifier` and the Countdown task's
:class:`~echorl_lightning.tasks.countdown.verifier.CountdownVerifier`: the text after ``Answer: `` on the LAST
non-empty line of a completion (a line counts when it holds anything but whitespace), or None when that line
does not start with ``Answer: ``. The text comes back as written (no trimming), so each verifier judges its
own format strictly: a canonical integer, a Countdown expression.

Leaves out any leniency on purpose (an ``Answer:`` line before the last line, ``answer:``, no space after the
colon): RL amplifies whatever format drift a verifier lets through.
"""

from __future__ import annotations

ANSWER_PREFIX = "Answer: "  # the one definition: the task generators write it, the verifiers read it


def answer_line_text(completion: str) -> str | None:
    """The text after ``Answer: `` on the completion's last non-empty line, or None when there is no such
    line or it does not start with ``Answer: `` (``"5+3=8\\nAnswer: 8\\n\\n"`` -> ``"8"``)."""
    lines = [line for line in completion.split("\n") if line.strip()]
    if not lines or not lines[-1].startswith(ANSWER_PREFIX):
        return None
    return lines[-1][len(ANSWER_PREFIX) :]
