"""`repid.cli.app.SUBCOMMANDS`, the one registration point of the `repid` subcommands."""

from __future__ import annotations

import argparse
import inspect
import types

import pytest

import repid.cli.app
from repid.cli import SUBCOMMANDS, main


def _registered() -> list[tuple[str, argparse.ArgumentParser]]:
    """Every (name, parser) the modules of SUBCOMMANDS add, in order."""
    found = []
    for module in SUBCOMMANDS:
        subparsers = argparse.ArgumentParser().add_subparsers()
        module.add_parser(subparsers)
        found += list(subparsers.choices.items())
    return found


def test_every_registered_parser_is_bound_to_a_handler() -> None:
    for name, parser in _registered():
        assert callable(parser.get_default("handler")), name
    names = [name for name, _ in _registered()]
    assert names == [
        "run",
        "asyncapi",
        "queues",
        "declare",
        "workers",
        "queue",
        "dead",
        "enqueue",
        "db",
        "dashboard",
        "workflows",
        "migrate",
        "job",
    ]


def test_only_run_owns_the_process() -> None:
    """A plain-function handler owns the process (and shows client libraries' logs): `run`, and
    `dashboard`, whose uvicorn server owns the event loop and the signals."""
    owners = [
        name
        for name, parser in _registered()
        if not inspect.iscoroutinefunction(parser.get_default("handler"))
    ]
    assert owners == ["run", "dashboard"]


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
