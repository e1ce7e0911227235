"""repid, RedisMessageBroker: `await Job("noop", queue=q, args={"n": i}).enqueue()`;
worker `Worker(tasks_limit=C)` in a fresh process. See `_common.NetCase` and `_repid_net.py`.

Every key of a run is under the prefix `<run id>:`, deleted by the clean-up.
"""

from __future__ import annotations

from _common import REDIS_URL, redis_delete_matching
from _repid_net import RepidNetCase, run_id_of

from repid import RedisMessageBroker


def make_broker(queue: str) -> RedisMessageBroker:
    return RedisMessageBroker(REDIS_URL, prefix=f"{run_id_of(queue)}:")


class RepidRedisCase(RepidNetCase):
    async def cleanup(self, queues: list[str]) -> None:
        await super().cleanup(queues)
        redis_delete_matching([f"{run_id_of(queues[0])}:*"])


if __name__ == "__main__":
    RepidRedisCase(
        make_broker,
        guarantees="enqueue returns after the Lua script that adds the message to its stream "
        "(Redis durability); acked after the actor ran",
    ).main()
