"""`repid dead list|requeue|purge`: the dead letters of a queue."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from repid.cli.operations import DeadFilter, list_dead, purge_dead, requeue_dead
from repid.cli.options import add_connection_options, add_target, duration, positive_int
from repid.cli.session import connect
from repid.connection import Connection
from repid.data import DeadLetterReason
from repid.records import BucketRecordStore, RecordStore

__all__ = ["add_parser", "command_dead", "one_line"]


def one_line(text: str) -> str:
    """`text` (a pydantic validation error, a traceback's last line, ...) on one line."""
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `repid dead` and its three actions."""
    dead = subparsers.add_parser(
        "dead", help="list, requeue or purge dead letters", description="Manage dead letters."
    )
    dead.set_defaults(handler=command_dead)
    actions = dead.add_subparsers(dest="dead_command", metavar="ACTION", required=True)
    for name, text in (
        ("list", "list the dead messages of QUEUE"),
        ("requeue", "send the dead messages of QUEUE back to work, with fresh retries"),
        ("purge", "delete the dead messages of QUEUE"),
    ):
        sub = actions.add_parser(
            name,
            help=text,
            description=text[0].upper() + text[1:] + " (all of them, or those the options select)",
        )
        sub.add_argument("queue", metavar="QUEUE")
        add_target(sub)
        sub.add_argument(
            "--id",
            dest="ids",
            action="append",
            metavar="MESSAGE_ID",
            help="only this message (repeatable)",
        )
        sub.add_argument(
            "--reason",
            choices=[str(reason) for reason in DeadLetterReason],
            help="only messages dead for this reason",
        )
        sub.add_argument("--actor", metavar="NAME", help="only jobs of this actor")
        sub.add_argument("--limit", type=positive_int, help="at most this many, oldest first")
        sub.add_argument(
            "--older-than",
            type=duration,
            metavar="DURATION",
            help="only messages dead for longer than this (90s, 30m, 12h, 7d, 2w)",
        )
        if name == "list":
            sub.add_argument("--json", action="store_true", help="print JSON lines")
            sub.add_argument(
                "--errors",
                action="store_true",
                help="also show each job's error history (from its job record, if kept)",
            )
        add_connection_options(sub)


async def _histories(
    connection: Connection, ids: list[str], wanted: bool
) -> dict[str, list[dict[str, Any]]]:
    """The error history of each job id, from its record (`repid job` shows the same)."""
    bucket = connection.raw_results_bucket_broker
    store: RecordStore
    if not wanted:
        return {}
    if connection.records is not None:
        store = connection.records.store
    elif bucket is not None:
        store = BucketRecordStore(bucket)
    else:
        return {}
    out: dict[str, list[dict[str, Any]]] = {}
    for id_ in ids:
        record = await store.get(id_)
        if record is not None:
            out[id_] = [asdict(entry) for entry in record.errors]
    return out


async def command_dead(args: argparse.Namespace) -> int:
    """List, requeue or purge the dead letters of `args.queue`."""
    _, connection = await connect(args)
    which = DeadFilter(
        ids=None if args.ids is None else frozenset(args.ids),
        reason=args.reason,
        actor=args.actor,
        limit=args.limit,
        dead_before=None if args.older_than is None else time.time() - args.older_than,
    )
    if args.dead_command == "list":
        letters = await list_dead(connection, args.queue, which=which)
        history = await _histories(connection, [letter.id_ for letter in letters], args.errors)
        for letter in letters:
            errors = history.get(letter.id_) or (
                [asdict(entry) for entry in letter.errors] if args.errors else []
            )
            when = datetime.fromtimestamp(letter.dead_at, UTC).isoformat(timespec="seconds")
            error = one_line(letter.error)
            if args.json:
                extra = {"errors": errors} if args.errors else {}
                fields = {k: v for k, v in asdict(letter).items() if k != "errors"}
                print(json.dumps({**fields, "dead_at": when, "error": error, **extra}))
                continue
            print(
                f"{letter.id_}  {letter.actor}  {letter.reason}  attempts={letter.attempts}  "
                f"{when}  {error}".rstrip()
            )
            for entry in errors:
                print(
                    f"    attempt {entry['attempt']}  {entry['worker'] or '-'}  "
                    f"{entry['type']}: {entry['message']}"
                )
        if not args.json:
            print(f"{len(letters)} dead message(s) in {args.queue!r}", file=sys.stderr)
    elif args.dead_command == "requeue":
        count = await requeue_dead(connection, args.queue, which=which)
        print(f"requeued {count} dead message(s) of {args.queue!r}")
    else:
        count = await purge_dead(connection, args.queue, which=which)
        print(f"purged {count} dead message(s) of {args.queue!r}")
    return 0
