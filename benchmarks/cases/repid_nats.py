"""repid, NatsMessageBroker: `await Job("noop", queue=q, args={"n": i}).enqueue()`;
worker `Worker(tasks_limit=C)` in a fresh process. See `_common.NetCase` and `_repid_net.py`.

Every stream of a run starts with `<run id>-` (the broker's `prefix`).
"""

from __future__ import annotations

from _common import NATS_URL
from _repid_net import RepidNetCase, run_id_of

from repid import NatsMessageBroker


def make_broker(queue: str) -> NatsMessageBroker:
    return NatsMessageBroker(NATS_URL, prefix=f"{run_id_of(queue)}-")


if __name__ == "__main__":
    RepidNetCase(
        make_broker,
        guarantees="enqueue waits for JetStream's PubAck (file storage, work-queue stream); "
        "ack after the actor ran",
    ).main()
