"""Where the tests find the repository: :data:`ROOT`, its root (``cli.py``, ``configs/``, ``docs/``), whichever
folder under ``tests/`` a test file sits in."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
