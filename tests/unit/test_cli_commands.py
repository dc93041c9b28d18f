"""vzpkg builds only the parser of the command it runs: the table that says which
module registers which command must match what the modules register."""

from __future__ import annotations

import argparse

from vzpkg.cli.vzpkg import COMMANDS, MODULES, build_parser, command_module, command_of


def _commands(p: argparse.ArgumentParser) -> set[str]:
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_the_command_table_matches_the_modules() -> None:
    assert _commands(build_parser()) == set(COMMANDS)
    for module in MODULES:
        p = argparse.ArgumentParser()
        command_module(module).register(p.add_subparsers())
        assert _commands(p) == {c for c, m in COMMANDS.items() if m is module}


def test_only_the_named_command_is_built_and_help_keeps_all() -> None:
    assert _commands(build_parser(["--cache-dir", "pull", "pull", "x"])) == {"publish", "pull"}
    assert command_of(["--workspace", "w", "export", "n"]) == "export"
    assert _commands(build_parser(["--help", "pull"])) == set(COMMANDS)
    assert _commands(build_parser(["nosuchcommand"])) == set(COMMANDS)
