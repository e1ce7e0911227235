"""The `repid` command's top level: the parser built from `SUBCOMMANDS`, logging, `main`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import logging
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Protocol

from repid._redact import mask_urls
from repid.cli import dashboard, db, dead, describe, job, migrate, queues, run, workflows
from repid.cli import enqueue as enqueue_command
from repid.cli.options import target_from_app
from repid.cli.session import close_opened
from repid.errors import RepidError

__all__ = ["SUBCOMMANDS", "Subcommand", "build_parser", "main"]


class Subcommand(Protocol):
    """A module of `repid/cli/` that adds one or more subcommands (see the package docstring)."""

    def add_parser(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        """Add the parser(s), each bound to its handler by `set_defaults(handler=...)`."""


SUBCOMMANDS: tuple[Subcommand, ...] = (
    run,
    describe,
    queues,
    dead,
    enqueue_command,
    db,
    dashboard,
    workflows,
    migrate,
    job,
)
"""Every subcommand module, in the order of `repid --help`: the one place to register one."""


def build_parser() -> argparse.ArgumentParser:
    """The `repid` parser: global options and every subcommand of `SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="repid", description="Run repid workers and operate their queues."
    )
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error"
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default INFO)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(commands)
    return parser


async def _one_shot(
    handler: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace
) -> int:
    """Run an async command, then close what it opened (cleanly, whatever the outcome)."""
    try:
        return await handler(args)
    finally:
        await close_opened()


@contextlib.contextmanager
def _logging(level: str, *, libraries: bool) -> Iterator[None]:
    """repid's logs at `level` on stderr; client libraries' warnings too when `libraries`.

    A worker (`run`) shows what its broker client says (reconnects, for instance). One-shot
    commands do not: their failure is reported once, as the one-line error, so the client
    library's own log line (which Python would print through its last-resort handler) is
    dropped.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ours = logging.getLogger("repid")
    root = logging.getLogger()
    previous = ours.level
    ours.setLevel(level)
    others: logging.Handler = handler if libraries else logging.NullHandler()
    if libraries:
        root.addHandler(handler)
    else:
        ours.addHandler(handler)
        ours.propagate = False
        root.addHandler(others)
    try:
        yield
    finally:
        ours.removeHandler(handler)
        ours.propagate = True
        root.removeHandler(others)
        ours.setLevel(previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `repid` command; returns the exit status (errors: one line on stderr, 1)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    target_from_app(parser, args)
    handler = args.handler
    one_shot = inspect.iscoroutinefunction(handler)
    with _logging(args.log_level, libraries=not one_shot):
        try:
            if one_shot:
                return asyncio.run(_one_shot(handler, args))
            return int(handler(args))
        except (RepidError, ValueError) as exc:
            if args.traceback:
                sys.stderr.write(mask_urls(traceback.format_exc()))
            message = mask_urls(" ".join(str(exc).split())) or type(exc).__name__
            print(f"repid: error: {message}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
