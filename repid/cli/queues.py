"""`repid queues`, `repid declare`, `repid workers`: look at and prepare the target's queues."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict

from repid.cli.operations import queue_sizes
from repid.cli.options import add_connection_options, add_target
from repid.cli.session import actors_of, connect, explicit_connection, open_connection
from repid.cli.target import CLIError
from repid.connection import Connection
from repid.errors import BrokerError, QueueNotDeclaredError
from repid.queue import Queue

__all__ = [
    "add_parser",
    "command_declare",
    "command_queue",
    "command_queues",
    "command_workers",
]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `repid queues`, `repid declare` and `repid workers`."""
    queues = subparsers.add_parser(
        "queues",
        help="show queue sizes",
        description="Show ready, delayed, in-flight and dead messages per queue.",
    )
    add_target(queues)
    queues.add_argument("--json", action="store_true", help="print JSON")
    add_connection_options(queues)
    queues.set_defaults(handler=command_queues)

    declare = subparsers.add_parser(
        "declare",
        help="declare the queues of the actors",
        description="Declare every queue the target's actors use (and its delayed and dead "
        "parts), as `repid run` does at start-up; a deployment step before producers start.",
    )
    add_target(declare)
    add_connection_options(declare)
    declare.set_defaults(handler=command_declare)

    workers = subparsers.add_parser(
        "workers",
        help="list live workers",
        description="List the workers that heartbeat on the broker: queues, concurrency, "
        "jobs in flight and when each was last heard from.",
    )
    add_target(workers)
    workers.add_argument("--json", action="store_true", help="print JSON")
    add_connection_options(workers)
    workers.set_defaults(handler=command_workers)

    queue = subparsers.add_parser(
        "queue",
        help="flush or delete one queue",
        description="Flush (drop every message, keep the queue) or delete one queue, with its "
        "delayed and dead parts.",
    )
    queue.set_defaults(handler=command_queue)
    actions = queue.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    for name, text in (
        ("flush", "drop every message of QUEUE (ready, delayed and dead); keep the queue"),
        ("delete", "delete QUEUE and its messages"),
    ):
        sub = actions.add_parser(name, help=text, description=text[0].upper() + text[1:])
        sub.add_argument("queue", metavar="QUEUE")
        sub.add_argument(
            "--yes", action="store_true", help="do it without asking (needed off a terminal)"
        )
        add_connection_options(sub)


async def command_queues(args: argparse.Namespace) -> int:
    """Print the sizes of every queue an actor of the target listens on."""
    target, connection = await connect(args)
    listened = sorted({a.queue for a in actors_of(target.routers).values()})
    sizes = await queue_sizes(connection, listened)
    if args.json:
        print(json.dumps([asdict(s) for s in sizes]))
        return 0
    header = ("QUEUE", "READY", "DELAYED", "IN_FLIGHT", "DEAD")
    rows = [header] + [
        (s.name, *(str(n) for n in (s.ready, s.delayed, s.in_flight, s.dead)))
        if s.declared
        else (s.name, "-", "-", "-", "-")
        for s in sizes
    ]
    width = max(len(row[0]) for row in rows)
    for row in rows:
        print(row[0].ljust(width) + "".join(cell.rjust(10) for cell in row[1:]))
    return 0


async def command_declare(args: argparse.Namespace) -> int:
    """Declare every queue an actor of the target listens on."""
    target, connection = await connect(args)
    names = sorted({a.queue for a in actors_of(target.routers).values()})
    for name in names:
        await Queue(name, _connection=connection).declare()
        print(f"declared {name}")
    return 0


async def command_workers(args: argparse.Namespace) -> int:
    """Print the live workers the broker knows of."""
    _, connection = await connect(args)
    try:
        workers = await connection.live_workers()
    except BrokerError as exc:
        raise CLIError(str(exc)) from exc
    note = _process_local_note(connection)
    if note is not None:
        print(note, file=sys.stderr)
    if args.json:
        print(json.dumps([asdict(w) for w in workers]))
        return 0
    now = time.time()
    rows = [("WORKER", "QUEUES", "CONCURRENCY", "IN_FLIGHT", "LAST_SEEN")]
    rows += [
        (
            w.id,
            ",".join(w.queues),
            str(w.concurrency),
            str(w.in_flight),
            f"{max(0.0, now - w.last_seen):.0f}s ago",
        )
        for w in workers
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


def _process_local_note(connection: Connection) -> str | None:
    """Why the list may miss workers: the broker keeps its registry in each process."""
    broker = connection.raw_message_broker
    capabilities = getattr(broker, "capabilities", None)
    if capabilities is None or getattr(capabilities, "shared_state", True):
        return None
    kind = type(broker).__name__
    if kind == "InMemoryMessageBroker":
        return (
            "note: the in-memory broker lives in one process: only workers of this command's "
            "own process are listed"
        )
    return (
        f"note: {kind} has no shared state here, so each process keeps its own worker registry "
        "and workers of other processes are not listed; pass --state redis://... (the state "
        "URL the workers use) to see them"
    )


async def command_queue(args: argparse.Namespace) -> int:
    """Flush or delete `args.queue` on the `--broker` / `--app` connection."""
    action = args.queue_command
    connection = explicit_connection(args)
    if connection is None:
        raise CLIError(f"queue {action} needs --broker URL (or --app MODULE:APP)")
    if not args.yes:
        if not sys.stdin.isatty():
            raise CLIError(f"queue {action} {args.queue!r} drops messages: pass --yes to confirm")
        question = f"{action} queue {args.queue!r} and drop its messages? [y/N] "
        answer = await asyncio.to_thread(input, question)
        if answer.strip().lower() not in {"y", "yes"}:
            print("nothing done", file=sys.stderr)
            return 1
    await open_connection(connection)
    queue = Queue(args.queue, _connection=connection)
    try:
        await (queue.flush() if action == "flush" else queue.delete())
    except QueueNotDeclaredError as exc:
        raise CLIError(f"queue {args.queue!r} is not declared on the broker") from exc
    print(f"{'flushed' if action == 'flush' else 'deleted'} {args.queue}")
    return 0
