"""The shape of the code base: no import cycle between modules, no import from a higher layer, and no file over
400 lines in ``echorl_lightning/`` and ``callbacks/`` (shared/STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers.paths import ROOT

MAX_LINES = 400

# A package may import its own layer and the layers below it, never one above.
LAYERS = {
    "registry": 0,
    "bounds": 0,
    "ops": 0,
    "algorithms": 1,
    "files": 1,
    "echo": 1,
    "rewards": 2,
    "data": 2,
    "tiny": 2,
    "rollout": 2,
    "eval": 3,
    "training": 3,
    "config_checks": 3,
    "tasks": 3,
    "pipeline": 4,
    "module": 4,
    "callbacks": 5,
    "cli": 6,
}


def source_files() -> dict[str, Path]:
    files = sorted((ROOT / "echorl_lightning").rglob("*.py")) + sorted((ROOT / "callbacks").glob("*.py"))
    modules = {}
    for path in files:
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[0] == "callbacks":  # installed as echorl_lightning.callbacks (pyproject's package-dir)
            parts = ("echorl_lightning", *parts)
        modules[".".join(parts).removesuffix(".__init__")] = path
    return modules


def imports(path: Path) -> set[str]:
    """Project modules imported anywhere in the file (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found.update(n for n in names if n and n.split(".")[0] in ("echorl_lightning", "callbacks"))
    return found


def layer_key(module: str) -> str:
    parts = module.split(".")
    return parts[1] if parts[0] == "echorl_lightning" and len(parts) > 1 else parts[0]


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an import names (``from pkg import mod`` may name a package)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def test_no_import_cycle() -> None:
    modules = source_files()
    graph = {m: {r for i in imports(p) if (r := resolve(i, modules)) and r != m} for m, p in modules.items()}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_upward_import() -> None:
    modules = source_files()
    upward = []
    for module, path in modules.items():
        if module in ("echorl_lightning",):  # the package facade may re-export anything
            continue
        own = LAYERS[layer_key(module)]
        for name in imports(path):
            target = layer_key(name)
            if target in LAYERS and LAYERS[target] > own:
                upward.append(f"{module} imports {name} (layer {LAYERS[target]} > {own})")
    assert not upward, "\n".join(upward)


def test_every_package_has_a_layer() -> None:
    unknown = {layer_key(m) for m in source_files()} - set(LAYERS) - {"echorl_lightning"}
    assert not unknown, f"add these to LAYERS: {sorted(unknown)}"


def test_no_file_over_400_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in source_files().values()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_pyproject_installs_every_package_under_the_project_name() -> None:
    """The installed packages are exactly the package folders (nothing forgotten, no generic top-level name)."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "echorl_lightning").rglob("__init__.py")
    } | {"echorl_lightning.callbacks"}
    assert set(config["packages"]) == folders
    assert config["package-dir"] == {"echorl_lightning.callbacks": "callbacks"}
    assert all(name.split(".")[0] == "echorl_lightning" for name in config["packages"])


# tests/ mirrors the code: tests/<folder>/ for echorl_lightning/<folder>/ (tasks/<task>/ for each task), the
# repository's callbacks/, recipes/, experiments/ and benchmarks/, plus e2e/ (whole-program runs) and helpers/ (no tests)
TEST_FOLDERS_OUTSIDE_THE_PACKAGE = {"callbacks", "recipes", "experiments", "benchmarks", "e2e", "helpers"}


def test_tests_mirror_the_code_and_share_helpers_only() -> None:
    tests = ROOT / "tests"
    package = ROOT / "echorl_lightning"
    misplaced, cross = [], []
    for path in sorted(tests.rglob("*.py")):
        rel = path.relative_to(tests)
        if rel.parts[0] == "helpers":
            misplaced += [str(rel)] if path.name.startswith("test_") else []
        elif path.name.startswith("test_"):
            folder = rel.parent
            mirrors = (package / folder).is_dir() or folder.parts[0] in TEST_FOLDERS_OUTSIDE_THE_PACKAGE
            misplaced += [] if len(rel.parts) > 1 and mirrors else [str(rel)]
        for name in imports_of_tests(path):
            if not name.startswith("tests.helpers"):
                cross.append(f"{rel} imports {name}")
    assert not misplaced, (
        f"test files outside a folder that mirrors the code (or tests in helpers/): {misplaced}"
    )
    assert not cross, "tests import shared code from tests.helpers only:\n" + "\n".join(cross)


def imports_of_tests(path: Path) -> set[str]:
    """Modules under ``tests`` that the file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "tests" or name.startswith("tests.")}
