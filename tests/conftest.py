"""Fixtures shared by the test files (helpers that are not fixtures live in ``tests/helpers/``).

``tiny_tokenizer`` and ``tiny_random_model``: a real tiny byte-level tokenizer and a random-init tiny Qwen2,
built without hub access. Both are session-scoped and shared by every test file: a test that changes the model
(weights, train mode, generation_config) must work on ``copy.deepcopy(tiny_random_model)``.

``plain_argv`` and ``no_weights``: for tests that call ``echorl_lightning.cli.main`` in-process.

``one_thread``: one intra-op torch thread for the test (real tiny fits whose console output is checked).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One torch thread per process (subprocesses inherit it): the tests run tiny models, often several processes at
# once (DDP/FSDP ranks, verifier workers, cli.py subprocesses), and on 2 cores competing thread pools slowed a
# tiny generate from 1 s to 29 s.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from tests.helpers.tiny_models import build_tiny_model, build_tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_random_model(tiny_tokenizer: PreTrainedTokenizerFast) -> Qwen2ForCausalLM:
    return build_tiny_model(tiny_tokenizer)


@pytest.fixture
def plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sys.argv`` without pytest's own arguments (``main(args=...)`` warns when they are there)."""
    monkeypatch.setattr("sys.argv", ["cli.py"])


@pytest.fixture
def no_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """``echorl_lightning.module.load_policy`` fails the test: a config check must come before any weight loads."""

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_policy was called: the config check came too late")

    monkeypatch.setattr("echorl_lightning.module.load_policy", fail)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine two spinning threads made tiny generate calls 30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
