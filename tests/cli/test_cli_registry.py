"""`repid.cli.app.SUBCOMMANDS`, the one registration point of the `repid` subcommands."""

from __future__ import annotations

import argparse
import inspect
import types

import pytest

import repid.cli.app
from repid.cli import SUBCOMMANDS, main


def test_every_registered_parser_is_bound_to_a_handler() -> None:
    seen = []
    for module in SUBCOMMANDS:
        subparsers = argparse.ArgumentParser().add_subparsers()
        module.add_parser(subparsers)
        for name, parser in subparsers.choices.items():
            assert callable(parser.get_default("handler")), name
            seen.append(name)
    assert seen == ["run", "asyncapi", "queues", "declare", "workers", "dead", "enqueue"]


def test_only_run_owns_the_process() -> None:
    """A plain-function handler owns the process (and shows client libraries' logs)."""
    owners = []
    for module in SUBCOMMANDS:
        subparsers = argparse.ArgumentParser().add_subparsers()
        module.add_parser(subparsers)
        for name, parser in subparsers.choices.items():
            if not inspect.iscoroutinefunction(parser.get_default("handler")):
                owners.append(name)
    assert owners == ["run"]


def test_a_module_added_to_subcommands_is_a_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def hello(args: argparse.Namespace) -> int:
        print(f"hello {args.who}")
        return 3

    def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        parser = subparsers.add_parser("hello", help="say hello")
        parser.add_argument("who")
        parser.set_defaults(handler=hello)

    module = types.SimpleNamespace(add_parser=add_parser)
    monkeypatch.setattr(repid.cli.app, "SUBCOMMANDS", (*SUBCOMMANDS, module))
    assert main(["hello", "world"]) == 3
    assert capsys.readouterr().out == "hello world\n"
