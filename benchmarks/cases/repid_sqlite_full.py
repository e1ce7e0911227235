"""repid, SqliteMessageBroker with `synchronous="FULL"`: every commit fsynced (a returned
enqueue survives a power cut too), as huey's SqliteHuey by default. A variant of
`repid_sqlite.py`, reported beside it, not a peer.
"""

from __future__ import annotations

from _common import sqlite_file, sqlite_remove
from _repid_net import RepidNetCase, run_id_of

from repid import SqliteMessageBroker


def make_broker(queue: str) -> SqliteMessageBroker:
    return SqliteMessageBroker(sqlite_file(run_id_of(queue), "repid-full"), synchronous="FULL")


class RepidSqliteFullCase(RepidNetCase):
    case = "repid-full"

    async def cleanup(self, queues: list[str]) -> None:
        await super().cleanup(queues)
        sqlite_remove(sqlite_file(run_id_of(queues[0]), "repid-full"))


if __name__ == "__main__":
    RepidSqliteFullCase(
        make_broker,
        guarantees="as repid, with synchronous=FULL: every commit fsynced (survives a power cut)",
    ).main()
