"""repid, NatsMessageBroker: `await Job("noop", queue=q, args={"n": i}).enqueue()`;
worker `Worker(tasks_limit=C)` in a fresh process. See `_common.NetCase` and `_repid_net.py`.

Every stream of a run starts with `<run id>-` (the broker's `prefix`).
"""

from __future__ import annotations

from _common import NATS_URL
from _repid_net import RepidNetCase, run_id_of

from repid import Connection, NatsMessageBroker, Queue, Repid


def make_broker(queue: str) -> NatsMessageBroker:
    return NatsMessageBroker(NATS_URL, prefix=f"{run_id_of(queue)}-")


class RepidNatsCase(RepidNetCase):
    async def cleanup(self, queues: list[str]) -> None:
        broker = make_broker(queues[0])
        app = Repid(Connection(broker))
        async with app.magic(auto_disconnect=True):
            for queue in queues:
                await Queue(queue).delete()
            await broker.delete_state()  # the run's key-value buckets


if __name__ == "__main__":
    RepidNatsCase(
        make_broker,
        guarantees="enqueue waits for JetStream's PubAck (file storage, work-queue stream); "
        "ack after the actor ran",
    ).main()
