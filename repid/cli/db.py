"""`repid db`: create or migrate the PostgreSQL broker's tables (`repid db upgrade`) and show
the schema version the database is at (`repid db status`)."""

from __future__ import annotations

import argparse
import os

from repid._redact import mask_url

__all__ = ["add_parser", "run"]

_SCHEMES = ("postgresql://", "postgres://")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `db` command (and its `upgrade` / `status` actions) to `repid`'s subparsers."""
    db = subparsers.add_parser(
        "db",
        help="create or migrate the PostgreSQL broker's tables",
        description="Create or migrate the tables of a PostgresMessageBroker (and its bucket "
        "brokers) in one schema and table prefix.",
    )
    db.set_defaults(handler=run)
    actions = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    for name, text in (
        ("upgrade", "apply the missing schema migrations (idempotent, safe to run concurrently)"),
        ("status", "print the schema version of the database and of this repid"),
    ):
        action = actions.add_parser(name, help=text, description=text[0].upper() + text[1:])
        action.add_argument(
            "--dsn",
            metavar="URL",
            default=os.environ.get("REPID_DATABASE_URL") or os.environ.get("REPID_BROKER_URL"),
            help="postgresql:// URL (env REPID_DATABASE_URL, else REPID_BROKER_URL)",
        )
        action.add_argument("--schema", default="repid", help="schema of the tables (repid)")
        action.add_argument("--prefix", default="", help="prefix of the table names (none)")
        action.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    """Run `repid db <action>`; returns the exit status."""
    from repid.errors import ConfigurationError

    dsn: str | None = args.dsn
    if not dsn or not dsn.startswith(_SCHEMES):
        shown = mask_url(dsn) if dsn else "none"
        raise ConfigurationError(f"repid db needs --dsn postgresql://... (got {shown})")
    try:
        from repid.brokers.postgres._link import Link
        from repid.brokers.postgres._schema import (
            SCHEMA_VERSION,
            Names,
            current_version,
            upgrade,
        )
    except ModuleNotFoundError as exc:
        raise ConfigurationError(f"repid db needs: pip install 'repid[postgres]' ({exc})") from exc
    from repid.brokers.base import ConnectionPolicy

    names = Names(args.schema, args.prefix)
    link = Link(dsn, ConnectionPolicy(), 1)
    conn = await link.connect_once()
    try:
        if args.db_command == "upgrade":
            applied = await upgrade(conn, names)
            where = f"{names.schema}.{names.prefix}* at {mask_url(dsn)}"
            if applied:
                print(f"applied migration(s) {', '.join(map(str, applied))} to {where}")
            else:
                print(f"{where} is up to date (schema version {SCHEMA_VERSION})")
        else:
            version = await current_version(conn, names)
            state = "up to date" if version == SCHEMA_VERSION else "needs `repid db upgrade`"
            print(f"database: {version}, repid: {SCHEMA_VERSION} ({state})")
    finally:
        await conn.close()
    return 0
