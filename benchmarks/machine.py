"""The machine kind a benchmark figure holds for: CPU model, family/model numbers and the vector extensions that
change kernel speed (AVX2, AVX-512, AVX-512 BF16, AMX), core count, torch and its thread count.

Every benchmark prints :func:`machine_line` with its figures, so a figure never travels without its machine.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_info(text: str | None = None) -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (``text``: its contents; default read from disk)."""
    if text is None:
        path = Path("/proc/cpuinfo")
        text = path.read_text() if path.exists() else ""
    info: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if info:
                break
            continue
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def machine_line(text: str | None = None) -> str:
    """``"AMD EPYC (family 25 model 17), 2 cores, avx2 fma avx512f avx512_bf16; torch 2.13.0, 2 threads"``."""
    info = cpu_info(text)
    flags = set(info.get("flags", "").split())
    vector = " ".join(f for f in VECTOR_FLAGS if f in flags) or "no AVX2"
    model = info.get("model name", platform.processor() or platform.machine())
    try:
        import torch

        runtime = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        runtime = "no torch"
    return (
        f"{model} (family {info.get('cpu family', '?')} model {info.get('model', '?')}), {os.cpu_count()} cores, "
        f"{vector}; {runtime}"
    )


if __name__ == "__main__":
    print(machine_line())
