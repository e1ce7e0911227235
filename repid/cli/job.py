"""`repid job ID TARGET`: the record of one job (status, attempts, worker, timings, errors),
read from the job records that producers and workers keep (`Connection(records=True)`)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime

from repid.cli.options import TARGET_HELP, add_connection_options
from repid.cli.session import connect
from repid.cli.target import CLIError
from repid.connection import Connection
from repid.records import BucketRecordStore, JobRecord, RecordStore

__all__ = ["add_parser", "command_job", "format_record"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `repid job`."""
    parser = subparsers.add_parser(
        "job",
        help="show the state of one job by id",
        description="Show the record of job ID: status, attempts, worker, timings and the "
        "errors of its last failed attempts (needs job records: Connection(records=True)).",
    )
    parser.add_argument("id", metavar="ID", help="the job (message) id")
    parser.add_argument("target", metavar="TARGET", help=TARGET_HELP)
    parser.add_argument("--json", action="store_true", help="print the record as JSON")
    parser.add_argument(
        "--tracebacks", action="store_true", help="print each error's traceback too"
    )
    add_connection_options(parser)
    parser.set_defaults(handler=command_job)


def _store(connection: Connection) -> RecordStore:
    if connection.records is not None:
        return connection.records.store
    if connection.raw_results_bucket_broker is None:
        raise CLIError(
            "job records live in the results bucket broker: the connection has none "
            "(give the target's app one, or --results URL)"
        )
    return BucketRecordStore(connection.raw_results_bucket_broker)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def format_record(record: JobRecord, *, tracebacks: bool = False) -> str:
    """The record as the lines `repid job` prints."""
    lines = [
        f"job       {record.id}",
        f"actor     {record.actor}  (queue {record.queue})",
        f"status    {record.status}",
        f"attempt   {record.attempt}  ({record.attempts} started)",
        f"worker    {record.worker or '-'}",
        f"enqueued  {_when(record.enqueued_at)}",
        f"started   {_when(record.started_at)}",
        f"finished  {_when(record.finished_at)}",
    ]
    if record.due is not None:
        lines.append(f"due       {_when(record.due)}")
    lines.append(f"errors    {len(record.errors)}")
    for entry in record.errors:
        lines.append(
            f"  attempt {entry.attempt}  {_when(entry.at)}  {entry.worker or '-'}  "
            f"{entry.type}: {entry.message}"
        )
        if tracebacks and entry.traceback:
            lines.extend("    " + line for line in entry.traceback.rstrip().splitlines())
    return "\n".join(lines)


async def command_job(args: argparse.Namespace) -> int:
    """Print the record of `args.id`; exit status 1 when there is none."""
    _, connection = await connect(args)
    record = await _store(connection).get(args.id)
    if record is None:
        print(
            f"no record of job {args.id!r} (never enqueued with records on, or expired)",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(json.dumps(asdict(record)))
    else:
        print(format_record(record, tracebacks=args.tracebacks))
    return 0
