"""repid, SqliteMessageBroker: `await Job("noop", queue=q, args={"n": i}).enqueue()`;
worker `Worker(tasks_limit=C)` in a fresh process on the same file. See `_common.NetCase` and
`_repid_net.py`.

Every run has its own file, `<tmp>/<run id>-repid.db`, deleted (with its WAL) by the clean-up.
"""

from __future__ import annotations

from _common import sqlite_file, sqlite_remove
from _repid_net import RepidNetCase, run_id_of

from repid import SqliteMessageBroker


def make_broker(queue: str) -> SqliteMessageBroker:
    return SqliteMessageBroker(sqlite_file(run_id_of(queue), "repid"))


class RepidSqliteCase(RepidNetCase):
    async def cleanup(self, queues: list[str]) -> None:
        await super().cleanup(queues)
        sqlite_remove(sqlite_file(run_id_of(queues[0]), "repid"))


if __name__ == "__main__":
    RepidSqliteCase(
        make_broker,
        guarantees="enqueue returns after its transaction committed (WAL, synchronous=NORMAL, "
        "the default: survives a SIGKILL of any process, not a power cut; the enqueues of one "
        "event-loop step share a commit); acked after the actor ran",
    ).main()
