"""Redis through redis-py's asyncio client (`transport="redis-py"`), on the shared server; keys
under the run's prefix as in the `redis` spec (deleted with them at the end of the session).
"""

from __future__ import annotations

from repid import Connection, RedisBucketBroker, RedisMessageBroker
from tests.conformance.specs import BrokerSpec
from tests.conformance.specs.redis import DSN, PREFIX
from tests.conformance.specs.redis import SPEC as _RESP


def _redis_py(*, lease_duration: float | None = None, args_bucket: bool = False) -> Connection:
    options = {} if lease_duration is None else {"lease_duration": lease_duration}
    broker = RedisMessageBroker(DSN, prefix=PREFIX, transport="redis-py", **options)
    return Connection(
        broker,
        args_bucket_broker=RedisBucketBroker(DSN, prefix=PREFIX, transport="redis-py")
        if args_bucket
        else None,
        results_bucket_broker=RedisBucketBroker(
            DSN, prefix=PREFIX, use_result_bucket=True, transport="redis-py"
        ),
    )


SPEC = BrokerSpec(make=_redis_py, capabilities=_RESP.capabilities)
