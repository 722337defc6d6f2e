"""The benchmarks' own parts: the machine line every figure carries, and real_shapes.py's tokenizer of an exact
vocabulary size and its reward (the model and the timed runs are the benchmark's, not a test's)."""

from __future__ import annotations

import sys

import pytest

from tests.helpers.paths import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import machine  # noqa: E402
import real_shapes  # noqa: E402

# two processors of a made-up machine: the first one's fields are read
CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Example Xeon CPU
flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 amx_tile

processor\t: 1
model name\t: another
"""


def test_machine_line_names_the_cpu_and_its_vector_extensions() -> None:
    line = machine.machine_line(CPUINFO)
    assert line.startswith("Example Xeon CPU (family 6 model 143), ")
    assert "avx2 fma avx512f avx512_bf16 amx_tile;" in line and "avx512_vnni" not in line
    assert "no AVX2" in machine.machine_line("model name\t: old\nflags\t\t: sse2\n")


@pytest.mark.parametrize("size", [300, 5000, 49152])
def test_smol_tokenizer_has_exactly_the_asked_size_and_round_trips(size: int) -> None:
    tokenizer = real_shapes.smol_tokenizer(size)
    assert len(tokenizer) == size
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    text = "Q: 47+8*3-12\nAnswer: 25 — ünïcode"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text and max(ids) < size
    # every id decodes (a random model samples any of them)
    assert isinstance(tokenizer.decode(list(range(3, size, 97)), skip_special_tokens=True), str)


def test_smol_tokenizer_refuses_a_size_it_cannot_fill() -> None:
    with pytest.raises(ValueError, match="could only build"):
        real_shapes.smol_tokenizer(10**6)


def test_parity_reward_is_the_parity_of_the_text_length() -> None:
    assert real_shapes.ParityVerifier()(["ab", "abc", ""], ["", "", ""]) == [1.0, 0.0, 1.0]
