"""YAML config files: checked before the parser reads them, and the parser's errors as one line that names the
file, the line and the key.

:func:`config_file_problem` reads each ``--config`` file as a user wrote it: a missing file or a folder; text
that is not UTF-8 (a UTF-8 byte-order mark is fine; UTF-16 is refused, as jsonargparse reads UTF-8 only) or is
binary (:mod:`echorl_lightning.files.text`); an empty file; YAML that does not parse (the line and column, and a
tab in the indentation said as such); a top level that is not a mapping.
:func:`parse_error_line` turns a message of jsonargparse (an unknown key, a value of the wrong type, a missing
group) into ``config file 'x.yaml', line 27: model.init_args.lr='fast': expected float``, with the line of
the key in the last file that sets it (or "the command line"), and the nearest known key for a misspelt one.

Left out: keys that come from an environment variable or a ``--<group> file.yaml`` option (named by key only),
and messages of jsonargparse that name no key (passed on whole, joined into one line, after the command line or
the config files).
"""

from __future__ import annotations

import codecs
import difflib
import importlib
import inspect
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml

from echorl_lightning.files.text import TextFileError, decode_text

_PARSER_KEY = re.compile(r'^Parser key "([^"]+)"')
_CLASS_PATH = re.compile(r"^Problem with given class_path '([^']+)'")
_NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted|does not accept option '([^']+)'")
_EXPECTED = re.compile(r"^Expected a (.+?)\.(?: Got value: (.*))?$")
_REQUIRED = re.compile(r"the following arguments are required: (.+)")
_HEADERS = ("Does not validate", "Subtypes:", "Errors:", "Given value")
SHOWN_KEYS = 24  # accepted keys listed for an unknown one


def config_paths(args: Sequence[str]) -> list[str]:
    """The files given with ``--config`` / ``-c`` (``--config x`` or ``--config=x``), in order."""
    paths = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            paths.append(args[i + 1])
        elif arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
    return paths


def config_file_problem(path: str) -> str | None:
    """A message naming ``path`` (and the line and column) when it is not a readable YAML mapping, else None."""
    file, name = Path(path).expanduser(), f"config file {path!r}"
    if not file.exists():
        return f"{name} does not exist (from {os.getcwd()})"
    if not file.is_file():
        return f"{name} is a folder, not a file"
    data = file.read_bytes()
    try:
        text = decode_text(data, name)
    except TextFileError as error:
        return str(error)
    wide = (
        codecs.BOM_UTF16_LE,
        codecs.BOM_UTF16_BE,
        codecs.BOM_UTF32_BE,
    )  # UTF-32 LE's starts as UTF-16 LE's
    if data.startswith(wide):
        return f"{name}: UTF-16 or UTF-32 text (it starts with a byte-order mark); the parser reads UTF-8: save it as UTF-8"
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        return f"{name}{_yaml_error(error, text)}"
    if value is None:
        return f"{name} is empty: a config is a YAML mapping of keys (trainer:, model:, data:, ...)"
    if not isinstance(value, dict):
        kind = "list" if isinstance(value, list) else f"{type(value).__name__} {str(value)[:40]!r}"
        return f"{name}: a YAML {kind} at the top level; a config is a mapping of keys (trainer:, model:, data:, ...)"
    return None


def _yaml_error(error: yaml.YAMLError, text: str) -> str:
    """``", line 3, column 1: <what>"`` for a YAML error with a position, else ``": <what>"``."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = " ".join(str(getattr(error, "problem", None) or error).split())
    if mark is None:
        return f": not YAML ({problem})"
    line = text.splitlines()[mark.line] if mark.line < len(text.splitlines()) else ""
    if "\t" in line[: mark.column + 1]:
        try:
            json.loads(text)
            return f", line {mark.line + 1}: JSON indented with tabs, which YAML does not allow; indent with spaces"
        except json.JSONDecodeError:
            return f", line {mark.line + 1}, column {mark.column + 1}: a tab character; YAML indents with spaces, never tabs"
    context = getattr(error, "context", None)
    opened = getattr(error, "context_mark", None)
    where = f" ({context} opened at line {opened.line + 1})" if context and opened is not None else ""
    return f", line {mark.line + 1}, column {mark.column + 1}: not YAML: {problem}{where}"


def key_line(path: str, key: str) -> int | None:
    """The line (from 1) of dotted ``key`` in the YAML file ``path``, or None when the file does not hold it
    (an ``init_args`` level may be left out, as jsonargparse allows)."""
    try:
        node = yaml.compose(decode_text(Path(path).expanduser().read_bytes(), path))
    except (OSError, TextFileError, yaml.YAMLError):
        return None
    line = None
    for part in key.split("."):
        if not isinstance(node, yaml.MappingNode):
            return None
        match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None)
        if match is None and part == "init_args":  # jsonargparse also takes init_args beside class_path
            continue
        if match is None:
            return None
        line, node = match[0].start_mark.line + 1, match[1]
    return line


def key_source(key: str, files: Sequence[str], args: Sequence[str]) -> str | None:
    """Where ``key`` was given: ``"the command line"``, or the last config file that holds it, with the line;
    None when neither does (a default value)."""
    if any(arg == f"--{key}" or arg.startswith(f"--{key}=") for arg in args):
        return "the command line"
    for path in reversed(files):
        line = key_line(path, key)
        if line is not None:
            return f"config file {path!r}, line {line}"
    return None


def where_set(key: str, files: Sequence[str], args: Sequence[str]) -> str:
    """:func:`key_source`, or the config files (or the command line) when the key is in none of them."""
    found = key_source(key, files, args)
    return found or ", ".join(f"config file {p!r}" for p in files) or "the command line"


def locate(problem: str, files: Sequence[str], args: Sequence[str]) -> str:
    """``problem`` (a config check's message, starting with its key) prefixed with where the key was given."""
    match = re.match(r"([A-Za-z_][\w.]*)(?:\[\d+\])?[=:]", problem)
    found = key_source(match.group(1), files, args) if match else None
    return f"{found}: {problem}" if found else problem


def class_parameters(class_path: str) -> list[str]:
    """The ``__init__`` parameter names of the class at ``class_path`` ([] when it cannot be imported)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    except (ImportError, AttributeError, ValueError, TypeError):
        return []


def nearest(key: str, known: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest known key, or ``""``."""
    match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.7)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _unknown_key(key: str, name: str, options: list[str], known: list[str]) -> str:
    """``"<key> is not a config key (did you mean ...?)"``, or with the accepted keys listed."""
    if options:  # a key inside a class_path object: its __init__ parameters
        hint = nearest(name, options) or f" (accepted: {', '.join(options[:SHOWN_KEYS])})"
        return f"{key} is not a config key{hint}"
    hint = nearest(key, known)
    roots = sorted({k.split(".")[0] for k in known if k and not k.startswith(("config", "help"))})
    if not hint and key.split(".")[0] not in roots:
        hint = (
            nearest(key.split(".")[0], roots) or f" (the keys at the top are {', '.join(roots[:SHOWN_KEYS])})"
        )
    return f"{key} is not a config key{hint}"


def _expected(key: str, kind: str, got: str | None) -> str:
    """``"<key>='x': expected float"``, or ``"expected one of 'a', 'b' (did you mean 'a'?)"`` for a Literal."""
    kind = re.sub(r"<class '([^']+)'>", r"\1", kind)
    literal = re.fullmatch(r"typing\.Literal\[(.*)\]", kind)
    choices = re.findall(r"'([^']*)'", literal.group(1)) if literal else []
    value = f"={got!r}" if got is not None else ""
    if choices:
        return f"{key}{value}: expected one of {', '.join(map(repr, choices))}{nearest(got or '', choices)}"
    return f"{key}{value}: expected {kind}"


def parse_error_line(
    message: str, files: Sequence[str], args: Sequence[str], known: Iterable[str] = ()
) -> str:
    """One line for a jsonargparse error ``message``: where the key was set, the key and what is wrong.

    Args:
        message: the parser's message (a tree of indented lines for a value inside a ``class_path`` object: the
            first branch, the class the config names, is followed).
        files: the ``--config`` files, in order.
        args: the command line arguments.
        known: the keys the subcommand's parser accepts (for "did you mean").
    """
    known = list(known)
    required = _REQUIRED.search(message)
    if required:
        missing = [k.split(".", 1)[-1] for k in required.group(1).split(", ")]
        sub = required.group(1).split(".", 1)[0]
        if not files:
            return f"the command line: no {', '.join(missing)} given; required for {sub}: give --config <file>.yaml"
        place = ", ".join(f"config file {p!r}" for p in files)
        return (
            f"{place}: no {', '.join(missing)} given; required for {sub} (a file cut short, or a config of "
            "another program?)"
        )
    parts: list[str] = []
    classes: list[str] = []
    problem = None
    for raw in message.splitlines():
        line = raw.strip().removeprefix("- ").strip()
        if not line or line.startswith(_HEADERS):
            continue
        if m := _PARSER_KEY.match(line):
            parts.append(m.group(1))
        elif m := _CLASS_PATH.match(line):
            classes.append(m.group(1))
            parts.append("init_args")
        elif m := _NOT_ACCEPTED.search(line):
            name = m.group(1) or m.group(2)
            parts.append(name)
            options = class_parameters(classes[-1]) if classes else []
            problem = _unknown_key(".".join(parts), name, options, known)
            break
        elif m := _EXPECTED.match(line):
            problem = _expected(".".join(parts), m.group(1), m.group(2))
            break
        else:  # a message of its own: about the innermost key (a class_path that does not import, ...)
            if classes and parts[-1:] == ["init_args"]:
                parts[-1] = "class_path"
                problem = f"{'.'.join(parts)}={classes[-1]!r}: {line}"
            elif parts:
                problem = f"{'.'.join(parts)}: {line}"
            break
    key = ".".join(parts)
    if problem is None:  # a message about the command line itself, or one naming no key: all of it, one line
        problem = " ".join(line.strip() for line in message.splitlines() if line.strip())
        if not files or problem.startswith(("unrecognized arguments", "argument ", 'expected "subcommand"')):
            return f"the command line: {problem} (--help lists the options)"
    place = where_set(key, files, args) if key else ", ".join(f"config file {p!r}" for p in files)
    return f"{place or 'the command line'}: {problem}"
