"""Docs that cannot drift: every command in README.md and in the docs' command blocks is checked against the
parser of the program it runs (a renamed flag, a removed subcommand or a missing argument fails here), and every
script it names exists. What the commands print is tested where it is produced; this is about what a reader
types."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _parsers() -> dict[str, Callable[[], argparse.ArgumentParser]]:
    from inspector.build import cli as build_cli
    from inspector.build import onnx_check
    from inspector.cli import build_parser
    from inspector.train import cli as train_cli

    return {
        "inspector": build_parser,
        "inspector.cli": build_parser,
        "inspector-train": train_cli.build_parser,
        "inspector.train.cli": train_cli.build_parser,
        "inspector-build-engine": build_cli.build_parser,
        "inspector.build": build_cli.build_parser,
        "inspector.build.cli": build_cli.build_parser,
        "inspector.build.onnx_check": onnx_check.build_parser,
    }


def blocks(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, command line) of the shell blocks of a markdown file: fenced sh/bash/console blocks and
    indented blocks, with backslash continuations joined."""
    lines = path.read_text().splitlines()
    fenced, lang = False, ""
    pending, start = "", 0
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fenced, lang = (not fenced), stripped[3:].strip()
            continue
        in_shell = (fenced and lang in ("sh", "bash", "console", "shell", "")) or (
            not fenced and line.startswith("    ") and not line.lstrip().startswith(("-", "|", "*"))
        )
        if not in_shell:
            pending = ""
            continue
        text = stripped.removeprefix("$ ")
        if pending:
            text = pending + " " + text
        else:
            start = number
        if text.endswith("\\"):
            pending = text[:-1]
            continue
        pending = ""
        yield start, text


def commands(text: str) -> Iterator[list[str]]:
    """The simple commands of a shell line (&&, ||, ;, | split), comments dropped, as tokens."""
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError:
        return
    current: list[str] = []
    for token in tokens:
        if token in ("&&", "||", ";", "|"):
            if current:
                yield current
            current = []
        else:
            current.append(token)
    if current:
        yield current


def program(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(program key, its arguments) for a command this project provides; None for anything else."""
    while tokens and (tokens[0] in ("sudo", "env", "nice", "time") or re.match(r"^[A-Z_]+=", tokens[0])):
        tokens = tokens[1:]
    if not tokens:
        return None
    name = tokens[0].removeprefix(".venv/bin/")
    if name in ("python", "python3") and len(tokens) > 2 and tokens[1] == "-m":
        return tokens[2], tokens[3:]
    if name in ("inspector", "inspector-train", "inspector-build-engine"):
        return name, tokens[1:]
    if name.startswith("tools/") and name.endswith((".py", ".sh")):
        return name, tokens[1:]
    return None


def synopsis(args: list[str]) -> list[str] | None:
    """A usage synopsis (`inspector camera features DEVICE [--cti ...] [--all]`, `train ... --task x ...`): the
    arguments with its optional groups and ellipses left out, or None when it is a plain command."""
    if not any("..." in a or "…" in a or a.startswith("[") for a in args):
        return None
    kept, depth = [], 0
    for a in args:
        depth += a.count("[")
        if depth == 0 and "..." not in a and "…" not in a:
            kept.append(a)
        depth -= a.count("]")
    return kept


def documented() -> list[tuple[str, list[str]]]:
    found = []
    for path in DOCS:
        for number, line in blocks(path):
            for tokens in commands(line):
                cmd = program(tokens)
                if cmd is not None:
                    found.append((f"{path.relative_to(ROOT)}:{number}", [cmd[0], *cmd[1]]))
    return found


COMMANDS = documented()


def test_the_docs_name_commands_at_all():
    names = {cmd[0] for _, cmd in COMMANDS}
    assert {"inspector", "inspector-train", "inspector-build-engine"} <= names, names
    assert any(where.startswith("README.md") for where, _ in COMMANDS)


@pytest.mark.parametrize(("where", "cmd"), COMMANDS, ids=[f"{w} {' '.join(c)[:60]}" for w, c in COMMANDS])
def test_each_documented_command_parses(where, cmd):
    name, args = cmd[0], cmd[1:]
    if name.startswith("tools/"):
        assert (ROOT / name).is_file(), f"{where}: {name} does not exist"
        return
    parsers = _parsers()
    if name not in parsers:
        if name.startswith("inspector"):
            pytest.fail(f"{where}: `python -m {name}` is not a module with a command line")
        return  # another project's tool (pytest, pip, ...)
    short = synopsis(args)
    if short is not None:
        # Only the subcommands and the options it spells out must exist: required arguments may be elided.
        parser = parsers[name]()
        for token in short:
            if token.startswith("-"):
                assert any(token.split("=")[0] in _options(p) for p in _all_parsers(parser)), f"{where}: {token}"
            elif not _is_subcommand_path(parser, short, token):
                continue
        return
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parsers[name]().parse_args(args)
        except SystemExit as exc:
            if exc.code not in (0, None):  # --help exits 0
                pytest.fail(f"{where}: `{shlex.join(cmd)}` does not parse: {err.getvalue().strip()}")


# The runtime's and the engine builder's command lines (inspector-train's belongs to the training package).
HELP_CHECKED = ("inspector", "inspector-build-engine", "inspector.build.onnx_check")


def test_help_shows_the_defaults_and_no_module_internals():
    """Every option with a default says it in --help, and no help text talks about the code instead of the job."""
    internals = re.compile(r"\b(inspector\.[a-z_.]+|[a-z_]+\.py|self\.|_[a-z]+\(\))")
    for key in HELP_CHECKED:
        make = _parsers()[key]
        for parser in _all_parsers(make()):
            for action in parser._actions:
                if action.help in (None, argparse.SUPPRESS) or isinstance(action, argparse._HelpAction):
                    continue
                where = f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"
                assert not internals.search(action.help), f"{key}: {where}: help names code: {action.help!r}"
                shows = "%(default)" in action.help or (
                    isinstance(parser.formatter_class, type)
                    and issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
                )
                if action.default not in (None, False, argparse.SUPPRESS, []) and action.option_strings:
                    assert shows or "default" in action.help, f"{key}: {where}: default {action.default!r} not shown"


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for action in parser._actions for o in action.option_strings}


def _is_subcommand_path(parser: argparse.ArgumentParser, tokens: list[str], token: str) -> bool:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return token in action.choices
    return False


def _all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def test_the_reload_log_line_in_operations_is_the_one_the_daemon_writes():
    daemon = (ROOT / "inspector" / "daemon.py").read_text()
    ops = (ROOT / "docs" / "OPERATIONS.md").read_text()
    assert 'log.info("reloaded %s: config %s"' in daemon
    assert re.search(r'"reloaded \S+: config [0-9a-f]+…"', ops), "OPERATIONS.md quotes another reload line"
