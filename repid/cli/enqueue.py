"""`repid enqueue`: send one job for an actor, its arguments checked when the actor is known."""

from __future__ import annotations

import argparse

from repid.cli.operations import enqueue, parse_args_json
from repid.cli.options import add_connection_options, non_negative_float
from repid.cli.session import actors_of, explicit_connection, open_connection
from repid.cli.target import CLIError, import_object
from repid.data import PrioritiesT
from repid.router import ActorData, Router

__all__ = ["add_parser", "command_enqueue"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `repid enqueue`."""
    parser = subparsers.add_parser(
        "enqueue",
        help="enqueue one job",
        description="Enqueue one job for ACTOR; prints its message id. Arguments are checked "
        "against the actor when the app's module defines it.",
    )
    parser.add_argument("actor", metavar="ACTOR")
    parser.add_argument(
        "--args", default="{}", metavar="JSON", help="keyword arguments as a JSON object"
    )
    parser.add_argument("--queue", help="default: the actor's queue, else 'default'")
    parser.add_argument(
        "--priority",
        choices=["high", "medium", "low"],
        help="default: the actor's priority (@router.actor(priority=...)), else medium",
    )
    parser.add_argument(
        "--delay", type=non_negative_float, metavar="SECONDS", help="run no earlier than this"
    )
    add_connection_options(parser)
    parser.set_defaults(handler=command_enqueue)


async def command_enqueue(args: argparse.Namespace) -> int:
    """Enqueue the job and print its message id."""
    kwargs = parse_args_json(args.args)
    if not args.app and not args.broker:
        raise CLIError("enqueue needs --app MODULE:APP (or --broker URL)")
    actors: dict[str, ActorData] = {}
    if args.app:
        module, _ = import_object(args.app)
        actors = actors_of([v for v in vars(module).values() if isinstance(v, Router)])
    connection = explicit_connection(args)
    if connection is None:  # pragma: no cover - --app or --broker was checked above
        raise CLIError("enqueue needs --app MODULE:APP (or --broker URL)")
    await open_connection(connection)
    message_id = await enqueue(
        connection,
        args.actor,
        kwargs,
        queue=args.queue,
        priority=None if args.priority is None else PrioritiesT[args.priority.upper()],
        delay=args.delay,
        actors=actors,
    )
    print(message_id)
    return 0
