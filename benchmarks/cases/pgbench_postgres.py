"""The PostgreSQL ceiling: repid's own claim and ack statements, with no framework around them.

Enqueue = one `await pool.execute(<repid's ENQUEUE>)` per job (an asyncpg pool of 10). Drain =
`pgbench` (from PostgreSQL's client package) running a script of repid's CLAIM (batch of 100,
as the repid worker claims for 100 idle lanes) followed by repid's ACK of the claimed rows, on
2 connections, until the queue is empty. pgbench cannot run a Python job or time one job, so
the latency phase (and the probe) run the same two statements in an asyncpg loop instead.

Runs in repid's interpreter (it renders repid's SQL). A reference, never a peer.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import subprocess
import tempfile
import time

import asyncpg
from _common import POSTGRES_DSN, JobCounter, NetCase, Producer

from repid import PostgresMessageBroker

BATCH = 100
CLIENTS = 2


def _schema(queue: str) -> str:
    return f"repid_pgbench_{queue.split('-', 1)[0].lower()}"


def _broker(queue: str) -> PostgresMessageBroker:
    return PostgresMessageBroker(POSTGRES_DSN, schema=_schema(queue))


def _claim_and_count(broker: PostgresMessageBroker) -> str:
    """repid's CLAIM, its rows gathered into one array (pgbench keeps single-row results)."""
    claim = broker._q["CLAIM"].strip()
    head, update = claim.split("\nUPDATE ", 1)
    update = update.replace(
        "RETURNING m.id, m.envelope, m.redelivered, m.priority, m.position, m.job_id, m.topic",
        "RETURNING m.id",
    )
    return (
        f"{head}, upd AS (UPDATE {update})\n"
        "SELECT coalesce(array_agg(id), '{}')::text AS ids, count(*) AS got FROM upd"
    )


def _flat(text: str) -> str:
    """One line per statement (pgbench's script format)."""
    return " ".join(text.split())


def _pgbench_script(broker: PostgresMessageBroker) -> str:
    claim = _claim_and_count(broker)
    values = {
        "$1": ":queue",
        "$2": "extract(epoch from clock_timestamp())",
        "$3": str(BATCH),
        "$4": ":token",
        "$5": "30.0",
        "$6": "NULL",
    }
    claim = re.sub(r"\$[1-6]\b", lambda m: values[m.group(0)], claim)
    ack = broker._q["ACK"].strip()
    ack = ack.replace("$1::bigint[]", ":ids::bigint[]").replace(
        "$2::bigint[]", "array_fill(:token::bigint, ARRAY[:got::int])"
    )
    return f"\\set token random(1, 4611686018427387903)\n{_flat(claim)} \\gset\n{_flat(ack)};\n"


class RawProducer(Producer):
    def __init__(self, pool: asyncpg.Pool, query: str, queue: str) -> None:
        self.pool = pool
        self.query = query
        self.queue = queue

    async def enqueue(self, i: int) -> object:
        return await self.pool.execute(
            self.query, self.queue, f"{i}-{time.monotonic_ns()}", "noop", 1, str(i).encode(), 0.0
        )

    async def close(self) -> None:
        await self.pool.close()


class PgbenchCase(NetCase):
    case = "pgbench"
    framework = "asyncpg"
    guarantees = "repid's ENQUEUE (synchronous_commit on); drain: repid's CLAIM + ACK statements"
    notes = (
        f"drain: pgbench -M prepared, {CLIENTS} clients, claim batch {BATCH}, no job code",
        "latency phase: the same statements in an asyncpg loop (pgbench cannot time one job)",
    )

    def concurrency_label(self, concurrency: int) -> str:
        return f"pgbench -c {CLIENTS}, batch {BATCH}"

    async def producer(self, queue: str) -> Producer:
        broker = _broker(queue)
        await broker.connect()
        await broker.queue_declare(queue)
        query = broker._q["ENQUEUE"]
        await broker.disconnect()
        pool = await asyncpg.create_pool(POSTGRES_DSN, min_size=1, max_size=10)
        return RawProducer(pool, query, queue)

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        if counter.latency or counter.n < BATCH * CLIENTS:
            asyncio.run(self._loop(queue, counter))
        else:
            self._pgbench(queue, counter)

    def _pgbench(self, queue: str, counter: JobCounter) -> None:
        broker = _broker(queue)
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
            script.write(_pgbench_script(broker))
        transactions = math.ceil(counter.n / BATCH / CLIENTS) + 2  # a few find nothing left
        counter.ready()
        try:
            subprocess.run(
                [
                    "pgbench",
                    "-n",
                    "-M",
                    "prepared",
                    "-c",
                    str(CLIENTS),
                    "-j",
                    str(CLIENTS),
                    "-t",
                    str(transactions),
                    "-D",
                    f"queue={queue}",
                    "-f",
                    script.name,
                    POSTGRES_DSN,
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=None,
            )
        finally:
            os.unlink(script.name)
        now = time.monotonic_ns()
        left = asyncio.run(self._left(queue))
        counter.count = counter.n - left
        counter.finish(now)

    async def _left(self, queue: str) -> int:
        conn = await asyncpg.connect(POSTGRES_DSN)
        try:
            broker = _broker(queue)
            count: int = await conn.fetchval(
                f"SELECT count(*) FROM {broker.names.table('messages')} WHERE queue = $1", queue
            )
            return count
        finally:
            await conn.close()

    async def _loop(self, queue: str, counter: JobCounter) -> None:
        broker = _broker(queue)
        conn = await asyncpg.connect(POSTGRES_DSN)
        claim, ack = broker._q["CLAIM"], broker._q["ACK"]
        counter.ready()
        token = 1
        while True:
            token += 1
            rows = await conn.fetch(claim, queue, time.time(), BATCH, token, 30.0, None)
            if not rows:
                await asyncio.sleep(0.001)  # the ceiling polls; no NOTIFY wiring
                continue
            for row in rows:
                counter.hit(int(row["envelope"]))
            await conn.execute(ack, [row["id"] for row in rows], [token] * len(rows))

    async def cleanup(self, queues: list[str]) -> None:
        conn = await asyncpg.connect(POSTGRES_DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{_schema(queues[0])}" CASCADE')
        finally:
            await conn.close()


if __name__ == "__main__":
    PgbenchCase().main()
