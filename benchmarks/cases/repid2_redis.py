"""Upstream repid 2.x (PyPI `repid`), RedisServer (streams):
`await app.send_message_json(channel=queue, payload={"n": i}, headers={"topic": "noop"})`;
worker `app.run_worker(tasks_limit=C)`.

Runs in the repid-2 virtualenv (not this project's repid). See `_common.NetCase`.
"""

from __future__ import annotations

import asyncio

from _common import REDIS_URL, JobCounter, NetCase, Producer, redis_delete_matching
from repid.connections import RedisServer

from repid import Repid, Router


def make_app() -> Repid:
    app = Repid()
    app.servers.register_server("default", RedisServer(REDIS_URL), is_default=True)
    return app


class Repid2Producer(Producer):
    def __init__(self, app: Repid, queue: str, connection: object) -> None:
        self.app = app
        self.queue = queue
        self.connection = connection

    async def enqueue(self, i: int) -> object:
        await self.app.send_message_json(
            channel=self.queue, payload={"n": i}, headers={"topic": "noop"}
        )
        return None

    async def close(self) -> None:
        await self.connection.__aexit__(None, None, None)  # type: ignore[attr-defined]


class Repid2Case(NetCase):
    case = "repid-2"
    framework = "repid"
    guarantees = "send returns after XADD (Redis durability); acked after the actor ran"
    notes = ("upstream repid 2.x from PyPI, RedisServer defaults (streams, consumer group)",)

    def concurrency_label(self, concurrency: int) -> str:
        return f"tasks_limit={concurrency}"

    async def producer(self, queue: str) -> Producer:
        app = make_app()
        connection = app.servers.default.connection()
        await connection.__aenter__()
        return Repid2Producer(app, queue, connection)

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        app = make_app()
        router = Router()

        @router.actor(name="noop", channel=queue)
        async def noop(n: int) -> None:
            counter.hit(n)

        app.include_router(router)

        async def main() -> None:
            async with app.servers.default.connection():
                counter.ready()
                await app.run_worker(tasks_limit=concurrency, register_signals=[])

        asyncio.run(main())

    async def cleanup(self, queues: list[str]) -> None:
        redis_delete_matching([f"*{q}*" for q in queues])


if __name__ == "__main__":
    Repid2Case().main()
