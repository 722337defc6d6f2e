"""docs/architecture.md stays true: every link points at a file of the repository, and every code name it links
(`EngineSync.engine_for`) is defined in that file (each dotted part as a def, a class or an assignment)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers.paths import ROOT

DOC = ROOT / "docs" / "architecture.md"
LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
NAME = re.compile(r"^`([A-Za-z_][\w.]*)`$")


def links() -> list[tuple[str, str]]:
    return LINK.findall(DOC.read_text())


def defines(source: str, name: str) -> bool:
    pattern = rf"^\s*(?:def|class)\s+{re.escape(name)}\b|^\s*{re.escape(name)}\s*(?::[^=\n]+)?="
    return re.search(pattern, source, re.MULTILINE) is not None


def test_the_page_links_into_the_code() -> None:
    found = links()
    assert len(found) > 50  # the page names the code it describes
    named = [text for text, _ in found if NAME.match(text)]
    assert len(named) > 40


def test_every_link_target_exists_and_defines_the_name_it_shows() -> None:
    broken = []
    for text, target in links():
        if target.startswith(("http://", "https://", "#")):
            continue
        path = (DOC.parent / target.split("#")[0]).resolve()
        if not path.is_file():
            broken.append(f"[{text}]({target}): no such file")
            continue
        match = NAME.match(text)
        if match is None or match.group(1).endswith(".py"):
            continue
        source = path.read_text()
        missing = [part for part in match.group(1).split(".") if not defines(source, part)]
        if missing:
            broken.append(f"[{text}]({target}): {path.relative_to(ROOT)} defines no {missing}")
    assert not broken, "\n".join(broken)


def test_a_renamed_function_is_caught(tmp_path: Path) -> None:
    # the check itself: a name that is not defined in the linked file is reported
    assert defines("def run(x):\n    pass\n", "run")
    assert defines("class RolloutResult:\n", "RolloutResult")
    assert defines("STEPS: tuple = ()\n", "STEPS")
    assert not defines("def running(x):\n", "run")
    assert not defines("    return run(x)\n", "run")
