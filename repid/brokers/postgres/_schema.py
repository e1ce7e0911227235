"""The PostgreSQL broker's versioned schema: table names of one broker and its migrations.

Every table of a broker lives in one schema and starts with one prefix, so several apps (or
test runs) share a database. `upgrade` applies the missing migrations in order, under an
advisory lock, each in its own transaction; it is idempotent and safe to run concurrently.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from repid.errors import ConfigurationError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Names", "current_version", "upgrade"]

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,30}$")
_PREFIX = re.compile(r"^[a-z0-9_]{0,20}$")


@dataclass(frozen=True, slots=True)
class Names:
    """The quoted, schema-qualified names of one broker's tables (and its NOTIFY channel)."""

    schema: str
    prefix: str

    def __post_init__(self) -> None:
        if not _IDENTIFIER.match(self.schema):
            raise ConfigurationError(
                f"schema {self.schema!r}: expected lower-case letters, digits and '_' "
                "(at most 31 characters, not starting with a digit)"
            )
        if not _PREFIX.match(self.prefix):
            raise ConfigurationError(
                f"prefix {self.prefix!r}: expected lower-case letters, digits and '_' "
                "(at most 20 characters)"
            )

    def table(self, name: str) -> str:
        return f'"{self.schema}"."{self.prefix}{name}"'

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel that says a queue has a ready message (payload: queue)."""
        digest = hashlib.sha1(f"{self.schema}.{self.prefix}".encode()).hexdigest()[:16]
        return f"repid_{digest}"

    @property
    def lock_key(self) -> int:
        """The advisory lock held while this broker's schema is migrated."""
        digest = hashlib.sha1(f"repid-schema:{self.schema}.{self.prefix}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def sql(self, template: str) -> str:
        """`template` with `{messages}`-style placeholders replaced by table names."""
        return template.format(
            schema=f'"{self.schema}"',
            prefix=self.prefix,
            channel=self.channel,
            **{table: self.table(table) for table in _TABLES},
        )


_TABLES = (
    "schema_version",
    "queues",
    "messages",
    "dead_letters",
    "cancels",
    "workers",
    "buckets",
    "notify_ready",
    "limits",
    "limiter_acquire",
    "archive",
)

_EPOCH = "extract(epoch from clock_timestamp())"

_V1 = f"""
CREATE TABLE IF NOT EXISTS {{queues}} (
    name text PRIMARY KEY,
    created_at double precision NOT NULL DEFAULT {_EPOCH}
);
CREATE SEQUENCE IF NOT EXISTS {{schema}}."{{prefix}}position";
CREATE TABLE IF NOT EXISTS {{messages}} (
    id bigserial PRIMARY KEY,
    queue text NOT NULL REFERENCES {{queues}} (name) ON DELETE CASCADE,
    job_id text NOT NULL,
    topic text NOT NULL,
    priority smallint NOT NULL,
    position bigint NOT NULL DEFAULT nextval('{{schema}}."{{prefix}}position"'),
    envelope bytea NOT NULL,
    due_at double precision NOT NULL DEFAULT 0,
    enqueued_at double precision NOT NULL DEFAULT {_EPOCH},
    lease_token bigint,
    lease_until double precision,
    redelivered boolean NOT NULL DEFAULT false,
    unique_id boolean NOT NULL DEFAULT true
);
CREATE UNIQUE INDEX IF NOT EXISTS "{{prefix}}messages_pending_id"
    ON {{messages}} (queue, job_id) WHERE unique_id;
CREATE INDEX IF NOT EXISTS "{{prefix}}messages_ready"
    ON {{messages}} (queue, priority, position) WHERE lease_token IS NULL;
CREATE INDEX IF NOT EXISTS "{{prefix}}messages_leased"
    ON {{messages}} (lease_until) WHERE lease_token IS NOT NULL;
CREATE TABLE IF NOT EXISTS {{dead_letters}} (
    id bigserial PRIMARY KEY,
    queue text NOT NULL REFERENCES {{queues}} (name) ON DELETE CASCADE,
    job_id text NOT NULL,
    topic text NOT NULL,
    priority smallint NOT NULL,
    envelope bytea NOT NULL,
    raw bytea,
    dead_at double precision NOT NULL DEFAULT {_EPOCH}
);
CREATE INDEX IF NOT EXISTS "{{prefix}}dead_letters_queue" ON {{dead_letters}} (queue, id);
CREATE TABLE IF NOT EXISTS {{cancels}} (
    job_id text PRIMARY KEY,
    requested_at double precision NOT NULL DEFAULT {_EPOCH}
);
CREATE TABLE IF NOT EXISTS {{workers}} (
    id text PRIMARY KEY,
    info jsonb NOT NULL,
    last_seen double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS {{buckets}} (
    kind text NOT NULL,
    id text NOT NULL,
    data text NOT NULL,
    expires_at double precision,
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS "{{prefix}}buckets_expiry"
    ON {{buckets}} (expires_at) WHERE expires_at IS NOT NULL;
CREATE OR REPLACE FUNCTION {{notify_ready}}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], NEW.queue);
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS "{{prefix}}messages_ready_notify" ON {{messages}};
CREATE TRIGGER "{{prefix}}messages_ready_notify"
    AFTER INSERT OR UPDATE OF lease_token ON {{messages}}
    FOR EACH ROW WHEN (NEW.lease_token IS NULL)
    EXECUTE FUNCTION {{notify_ready}}('{{channel}}');
"""

_V2 = """
CREATE TABLE IF NOT EXISTS {limits} (
    actor text NOT NULL,
    token text NOT NULL,
    kind "char" NOT NULL,
    expires_at double precision NOT NULL,
    PRIMARY KEY (actor, kind, token)
);
CREATE OR REPLACE FUNCTION {limiter_acquire}(
    p_actor text, p_token text, p_now float8, p_max int, p_lease float8, p_rate int,
    p_window float8
) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
    v_count int;
    v_first float8;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('{schema}.{prefix}limit:' || p_actor));
    DELETE FROM {limits} WHERE actor = p_actor AND expires_at <= p_now;
    IF p_max > 0 THEN
        SELECT count(*) INTO v_count FROM {limits} WHERE actor = p_actor AND kind = 's';
        IF v_count >= p_max THEN
            RETURN 0.02;
        END IF;
    END IF;
    IF p_rate > 0 THEN
        SELECT count(*), min(expires_at) INTO v_count, v_first
        FROM {limits} WHERE actor = p_actor AND kind = 'r';
        IF v_count >= p_rate THEN
            RETURN greatest(v_first - p_now, 0.001);
        END IF;
        INSERT INTO {limits} VALUES (p_actor, p_token, 'r', p_now + p_window);
    END IF;
    IF p_max > 0 THEN
        INSERT INTO {limits} VALUES (p_actor, p_token, 's', p_now + p_lease);
    END IF;
    RETURN 0;
END
$$;
"""

_V3 = f"""
CREATE TABLE IF NOT EXISTS {{archive}} (
    id bigint PRIMARY KEY,
    queue text NOT NULL,
    job_id text NOT NULL,
    topic text NOT NULL,
    priority smallint NOT NULL,
    envelope bytea NOT NULL,
    enqueued_at double precision NOT NULL,
    finished_at double precision NOT NULL DEFAULT {_EPOCH}
);
CREATE INDEX IF NOT EXISTS "{{prefix}}archive_finished" ON {{archive}} (finished_at);
CREATE INDEX IF NOT EXISTS "{{prefix}}archive_job" ON {{archive}} (queue, job_id);
"""

_V4 = """
ALTER TABLE {messages} ADD COLUMN IF NOT EXISTS owner text;
ALTER TABLE {workers} ADD COLUMN IF NOT EXISTS owner text;
ALTER TABLE {workers} ADD COLUMN IF NOT EXISTS session_pid integer;
ALTER TABLE {workers} ADD COLUMN IF NOT EXISTS session_start timestamptz;
CREATE INDEX IF NOT EXISTS "{prefix}workers_owner" ON {workers} (owner);
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4)
"""Migration N (1-based) brings the schema from version N-1 to N. Append, never edit."""

SCHEMA_VERSION = len(MIGRATIONS)


async def current_version(conn: Any, names: Names) -> int:
    """The schema version applied in the database (0: none)."""
    exists = await conn.fetchval("SELECT to_regclass($1)", names.table("schema_version"))
    if exists is None:
        return 0
    version = await conn.fetchval(names.sql("SELECT max(version) FROM {schema_version}"))
    return int(version or 0)


async def upgrade(conn: Any, names: Names) -> list[int]:
    """Apply the missing migrations on `conn` (an asyncpg connection); returns those applied."""
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", names.lock_key)
        await conn.execute(names.sql("CREATE SCHEMA IF NOT EXISTS {schema}"))
        await conn.execute(
            names.sql(
                "CREATE TABLE IF NOT EXISTS {schema_version} ("
                " version integer PRIMARY KEY,"
                f" applied_at double precision NOT NULL DEFAULT {_EPOCH})"
            )
        )
        version = await current_version(conn, names)
        if version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"the database schema {names.schema}.{names.prefix}* is at version {version}, "
                f"newer than this repid's {SCHEMA_VERSION}: upgrade repid"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            await conn.execute(names.sql(MIGRATIONS[number - 1]))
            await conn.execute(
                names.sql("INSERT INTO {schema_version} (version) VALUES ($1)"), number
            )
            applied.append(number)
    return applied
