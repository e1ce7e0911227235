"""repid, PostgresMessageBroker: `await Job("noop", queue=q, args={"n": i}).enqueue()`;
worker `Worker(tasks_limit=C)` in a fresh process. See `_common.NetCase` and `_repid_net.py`.

Every table of a run lives in the schema `repid_bench_<run id>`, dropped by the clean-up.
"""

from __future__ import annotations

import asyncpg
from _common import POSTGRES_DSN
from _repid_net import RepidNetCase, run_id_of

from repid import PostgresMessageBroker


def _schema(queue: str) -> str:
    return f"repid_bench_{run_id_of(queue).lower()}"


def make_broker(queue: str) -> PostgresMessageBroker:
    return PostgresMessageBroker(POSTGRES_DSN, schema=_schema(queue))


class PostgresCase(RepidNetCase):
    async def cleanup(self, queues: list[str]) -> None:
        conn = await asyncpg.connect(POSTGRES_DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{_schema(queues[0])}" CASCADE')
        finally:
            await conn.close()


if __name__ == "__main__":
    PostgresCase(
        make_broker,
        guarantees="enqueue commits (synchronous_commit on); claims and settlements commit "
        "with synchronous_commit off (a server crash can only cause a duplicate)",
    ).main()
