"""`repid asyncapi`: write the AsyncAPI 3.0 document of the target's actors."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from repid.asyncapi import build_asyncapi
from repid.cli.options import add_target
from repid.cli.target import CLIError, resolve_target

__all__ = ["add_parser", "command_asyncapi"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `repid asyncapi`."""
    asyncapi = subparsers.add_parser(
        "asyncapi",
        help="write the AsyncAPI 3.0 document of the actors",
        description="Write an AsyncAPI 3.0 document: a channel per queue, a receive "
        "operation per actor, the actor's arguments as the message payload.",
    )
    add_target(asyncapi)
    asyncapi.add_argument("-A", "--app", metavar="MODULE:ATTR", help="the app (stands for TARGET)")
    asyncapi.add_argument("--output", "-o", metavar="FILE", help="write here (default stdout)")
    asyncapi.add_argument("--title", help="info.title (default: the target's module name)")
    asyncapi.add_argument(
        "--app-version", default="1.0.0", help="info.version: your application's version"
    )
    asyncapi.set_defaults(handler=command_asyncapi)


async def command_asyncapi(args: argparse.Namespace) -> int:
    """Write the document to `--output` or stdout."""
    module, target = await resolve_target(args.target)
    document = build_asyncapi(
        target.routers,
        title=args.title or module.__name__,
        version=args.app_version,
    )
    text = json.dumps(document, indent=2) + "\n"
    if args.output:
        try:
            await asyncio.to_thread(Path(args.output).write_text, text, encoding="utf-8")
        except OSError as exc:
            raise CLIError(f"cannot write {args.output!r}: {exc.strerror}") from exc
    else:
        sys.stdout.write(text)
    return 0
