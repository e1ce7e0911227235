"""repid, KafkaMessageBroker: `await Job("noop", queue=q, args={"n": i}).enqueue()`;
worker `Worker(tasks_limit=C)` in a fresh process. See `_common.NetCase` and `_repid_net.py`.

Every topic of a run starts with `<run id>.` (the broker's `topic_prefix`). The direct-send
fast path is on unless the environment says `REPID_FAST_PATH=0` (which `run.py` passes on):
`REPID_FAST_PATH=0 python benchmarks/run.py kafka --cases repid,faststream` measures the public
aiokafka path.
"""

from __future__ import annotations

from _common import KAFKA_BOOTSTRAP
from _repid_net import RepidNetCase, run_id_of

from repid import KafkaMessageBroker


def make_broker(queue: str) -> KafkaMessageBroker:
    return KafkaMessageBroker(KAFKA_BOOTSTRAP, topic_prefix=f"{run_id_of(queue)}.")


if __name__ == "__main__":
    RepidNetCase(
        make_broker,
        guarantees="enqueue waits for the broker's ack; offsets committed only once every "
        "earlier message of the partition is finished",
    ).main()
