"""`repid migrate QUEUE --to quorum`: move a RabbitMQ classic queue's ready, delayed and dead
messages to the quorum layout (`repid.brokers.rabbitmq.migrate`), nothing lost.
"""

from __future__ import annotations

import argparse
import sys

from repid.cli.options import add_connection_options, positive_int
from repid.cli.session import explicit_connection
from repid.cli.target import CLIError

__all__ = ["add_parser", "command_migrate"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `repid migrate`."""
    migrate = subparsers.add_parser(
        "migrate",
        help="move a RabbitMQ classic queue to quorum queues",
        description="Move QUEUE's ready, delayed and dead messages from RabbitMQ classic "
        "queues to the quorum layout (one queue per priority), each batch confirmed before it "
        "is acknowledged at its source. Stop the queue's workers and producers first. If it "
        "is interrupted, run it again: it goes on where it stopped.",
    )
    migrate.add_argument("queue", metavar="QUEUE", help="the repid queue name (no prefix)")
    migrate.add_argument(
        "--to", required=True, choices=["quorum"], help="the queue type to move to"
    )
    migrate.add_argument(
        "--prefix", default=None, help="the broker's queue prefix (default: the app's, or none)"
    )
    migrate.add_argument(
        "--batch", type=positive_int, default=100, help="messages per confirmed batch (100)"
    )
    add_connection_options(migrate)
    migrate.set_defaults(handler=command_migrate)


async def command_migrate(args: argparse.Namespace) -> int:
    """Migrate one queue; print what moved."""
    from repid.brokers.rabbitmq import RabbitMessageBroker
    from repid.brokers.rabbitmq.migrate import migrate_to_quorum

    connection = explicit_connection(args)
    if connection is None:
        raise CLIError("repid migrate needs --broker amqp://... (or --app MODULE:APP)")
    source = connection.message_broker
    if not isinstance(source, RabbitMessageBroker):
        raise CLIError("repid migrate moves RabbitMQ queues: give an amqp:// broker")
    broker = RabbitMessageBroker(
        source.dsn,
        prefix=source.prefix if args.prefix is None else args.prefix,
        queue_type="quorum",
        delivery_limit=source.delivery_limit,
        connect_timeout=source.connection_policy.connect_timeout,
        operation_timeout=source.connection_policy.operation_timeout,
    )

    def progress(step: str, count: int) -> None:
        print(f"{step} {count}", file=sys.stderr)

    await broker.connect()
    try:
        report = await migrate_to_quorum(broker, args.queue, batch=args.batch, progress=progress)
    finally:
        await broker.disconnect()
    if report.already_quorum:
        print(f"{args.queue}: already on quorum queues; nothing to move")
        return 0
    moved = ", ".join(f"{part} {n}" for part, n in report.moved.items())
    print(
        f"{args.queue}: migrated to quorum queues; staged {report.staged}, moved {moved}, "
        f"duplicates dropped {report.duplicates}"
    )
    return 0
