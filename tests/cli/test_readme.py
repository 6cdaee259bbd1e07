"""The README's commands, flags, settings and variables against the code.

The README is the user's reference, so what it names must exist: every `demi` subcommand in its
command table is a real subcommand, the table lists every subcommand the parser has, and every
`--flag` written next to a command (in the table, in code spans, in the example blocks) is one that
command's parser accepts. The settings of its `config.toml` example are real settings, and the `DEMI_*`
variables it names are read by the code. Everything is read from the README's text and checked against
the real argparse trees (`demi`, `demi-chat`, `demi-lsp`) and `demi.assistant.config.SETTINGS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from demi.assistant.config import SETTINGS
from demi.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PACKAGE_DIRS = ("demi", "cli", "lsp", "tui", "serve", "assistant", "model", "train")
# Added by the console scripts' main() beside the arguments their parsers are built from.
SCRIPT_FLAGS = {"--help", "--version"}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def _chat_parser() -> argparse.ArgumentParser:
    from demi.tui.arguments import build_parser as build_chat_parser

    return build_chat_parser()


def _lsp_parser() -> argparse.ArgumentParser:
    from demi.lsp.server import add_arguments

    parser = argparse.ArgumentParser(prog="demi-lsp")
    add_arguments(parser)
    return parser


PROGRAMS = {"demi": build_parser, "demi-chat": _chat_parser, "demi-lsp": _lsp_parser}


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every runnable command: the leaves, and the parents that run on their own (`demi models`)."""
    subs = _subparsers(parser)
    if not subs or parser.get_default("func"):
        if path:
            yield path
    for name, sub in subs.items():
        yield from _leaves(sub, (*path, name))


def _words(text: str) -> list[str]:
    text = text.replace("\\|", "|")  # a pipe escaped in a Markdown table cell
    try:
        return shlex.split(text, comments=True)
    except ValueError:  # an unbalanced quote in prose: plain words will do
        return text.split()


def _resolve(words: list[str]) -> tuple[str, tuple[str, ...], argparse.ArgumentParser, list[str]] | None:
    """(program, subcommand path, its parser, the words after the path) for words that run a program."""
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):  # `DEMI_THREADS=1 demi bench`
        words = words[1:]
    if words and words[0] == "$":
        words = words[1:]
    if not words or words[0] not in PROGRAMS:
        return None
    program, parser, path, rest = words[0], PROGRAMS[words[0]](), (), words[1:]
    while rest and rest[0] in _subparsers(parser):
        parser, path, rest = _subparsers(parser)[rest[0]], (*path, rest[0]), rest[1:]
    return program, path, parser, rest


def _flags_in(words: list[str]) -> set[str]:
    out = set()
    for word in words:
        word = word.strip("[](),;").split("=", 1)[0]
        if re.fullmatch(r"--[a-z][a-z0-9-]*", word):
            out.add(word)
    return out


def _command_table() -> list[str]:
    """The first cells of the table under `## Commands`."""
    section = README.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    cells = [line.split(" | ", 1)[0].lstrip("| ").strip() for line in section.splitlines() if line.startswith("| `")]
    return [cell.strip("`") for cell in cells]


def _mentions() -> Iterator[tuple[str, str]]:
    """(where, text) for each command the README writes: code spans and the lines of code blocks."""
    in_block, pending = False, ""
    for number, line in enumerate(README.splitlines(), 1):
        if line.startswith("```"):
            in_block, pending = not in_block, ""
            continue
        if in_block:
            pending += line.rstrip("\\")
            if not line.endswith("\\"):
                yield f"README.md:{number}", pending
                pending = ""
            continue
        for span in re.findall(r"`([^`]+)`", line):
            yield f"README.md:{number}", span


def test_the_command_table_names_real_subcommands_and_flags():
    rows = _command_table()
    assert len(rows) > 20, "the README's command table was not found under `## Commands`"
    for row in rows:
        resolved = _resolve(_words(row))
        assert resolved is not None and resolved[0] == "demi", f"not a `demi` command: {row!r}"
        _, path, parser, rest = resolved
        assert path, f"{row!r}: no such subcommand of demi"
        bare = [w for w in rest if re.fullmatch(r"[a-z][a-z0-9-]*", w)]
        if _subparsers(parser) and bare:
            pytest.fail(f"{row!r}: demi {' '.join(path)} has no subcommand {bare[0]!r}")
        unknown = _flags_in(rest) - _flags(parser)
        assert not unknown, f"{row!r}: demi {' '.join(path)} does not accept {sorted(unknown)}"


def test_the_command_table_lists_every_subcommand():
    listed = set()
    for row in _command_table():
        resolved = _resolve(_words(row))
        if resolved is not None:
            listed.add(resolved[1])
    missing = [" ".join(p) for p in _leaves(build_parser()) if p not in listed]
    assert not missing, f"subcommands missing from the README's command table: {missing}"


def test_every_flag_next_to_a_command_is_accepted():
    checked, wrong = 0, []
    for where, text in _mentions():
        resolved = _resolve(_words(text))
        if resolved is None:
            continue
        program, path, parser, rest = resolved
        checked += 1
        unknown = _flags_in(rest) - _flags(parser) - SCRIPT_FLAGS
        if unknown:
            wrong.append(f"{where}: `{program} {' '.join(path)}` does not accept {sorted(unknown)}: {text!r}")
    assert checked > 50, checked
    assert not wrong, "\n".join(wrong)


def test_the_config_example_uses_real_settings():
    block = re.search(r"```toml\n(.*?)```", README, re.S)
    assert block, "no config.toml example in the README"
    known = {s.key for s in SETTINGS}
    section, used = "", []
    for line in block.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("["):
            section = line.strip("[]") + "."
        elif "=" in line:
            used.append(section + line.split("=", 1)[0].strip())
    assert used
    unknown = [k for k in used if k not in known]
    assert not unknown, f"settings in the README's config.toml example that Demi does not have: {unknown}"


def test_the_language_server_settings_named_exist():
    """The editor settings the README lists (camelCase or snake_case, as demi-lsp reads them)."""
    from demi.lsp.settings import LspSettings

    _, found, rest = README.partition('optionally under `"demi"`):')
    assert found, "the README's list of language server settings was not found"
    names = set(re.findall(r"`([a-z][A-Za-z_]*)`", rest.split("The server sends", 1)[0])) - {"true", "false"}
    fields = {f.name.replace("_", "") for f in dataclasses.fields(LspSettings)}
    assert len(names) > 10, names
    unknown = sorted(n for n in names if n.replace("_", "").lower() not in fields)
    assert not unknown, f"settings the README lists that demi-lsp does not read: {unknown}"


def test_the_environment_variables_named_exist():
    files = [p for folder in PACKAGE_DIRS for p in (ROOT / folder).rglob("*.py")]
    files += [ROOT / "Makefile", *(ROOT / "tests").glob("*.py")]  # the test tools' own (DEMI_PEERS_DIR)
    source = "\n".join(path.read_text(encoding="utf-8", errors="replace") for path in files)
    setting_envs = {s.env for s in SETTINGS}
    named = set(re.findall(r"\bDEMI_[A-Z0-9_]+", README))
    assert named
    unknown = []
    for name in sorted(named):
        if name.endswith("_"):  # a family of variables: `DEMI_CHAT_*`
            ok = any(env.startswith(name) for env in setting_envs)
        else:
            ok = name in setting_envs or name in source
        if not ok:
            unknown.append(name)
    assert not unknown, f"variables the README names that no code reads: {unknown}"
