"""The conformance suite's lifecycle contract, on RabbitMQ and Kafka paired with Redis state.

Only the tests whose behaviour `shared_state` changes run here (cancel, unique ids, limits, live
workers), against the conformance fixtures: the whole suite per broker costs about a minute.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from repid import Connection, RedisBucketBroker
from repid.brokers.kafka.broker import KafkaMessageBroker
from repid.brokers.rabbitmq.broker import RabbitMessageBroker
from repid.state.redis import RedisSharedState
from tests.conformance.conftest import (  # noqa: F401  (fixtures used by the tests below)
    _cleanup,
    _no_default_connection,
    conn,
    make_conn,
    new_queue,
)
from tests.conformance.specs import RUN_ID, BrokerSpec
from tests.conformance.specs.kafka import BOOTSTRAP
from tests.conformance.specs.rabbitmq import DSN as RABBITMQ
from tests.conformance.specs.redis import DSN as REDIS
from tests.conformance.specs.redis import cleanup_redis_keys
from tests.conformance.test_delivery import (  # noqa: F401  (collected here)
    test_unique_id_is_not_duplicated_while_pending,
)
from tests.conformance.test_lifecycle import (  # noqa: F401  (collected here)
    test_cancel_a_queued_job_it_never_runs,
    test_cancel_a_running_job_promptly_recorded_as_cancelled_not_retried,
    test_cancel_an_unknown_job_is_a_clear_error,
    test_live_workers_are_listed_while_running_and_gone_after,
    test_max_concurrency_bounds_runs_of_one_actor_and_drops_nothing,
    test_rate_limit_spaces_the_starts,
)

PREFIX = f"repid-test-{RUN_ID}-state:"


def _results() -> RedisBucketBroker:
    return RedisBucketBroker(REDIS, prefix=PREFIX, use_result_bucket=True)


def _rabbitmq(*, lease_duration: float | None = None, args_bucket: bool = False) -> Connection:
    state = RedisSharedState(REDIS, prefix=PREFIX)
    broker = RabbitMessageBroker(RABBITMQ, prefix=f"{PREFIX}rmq-", shared_state=state)
    return Connection(broker, results_bucket_broker=_results())


def _kafka(*, lease_duration: float | None = None, args_bucket: bool = False) -> Connection:
    state = RedisSharedState(REDIS, prefix=PREFIX)
    broker = KafkaMessageBroker(
        BOOTSTRAP,
        topic_prefix=f"repid-{RUN_ID}-state-",
        commit_interval=0.05,
        shared_state=state,
    )
    return Connection(broker, results_bucket_broker=_results())


SPECS = {
    "rabbitmq+redis-state": BrokerSpec(make=_rabbitmq, capabilities=frozenset()),
    "kafka+redis-state": BrokerSpec(make=_kafka, capabilities=frozenset()),
}


@pytest.fixture(autouse=True)
async def _forget_keys() -> AsyncIterator[None]:
    yield
    cleanup_redis_keys(REDIS, PREFIX)


@pytest.fixture(params=list(SPECS))
def broker_spec(request: pytest.FixtureRequest) -> BrokerSpec:
    spec = SPECS[request.param]
    assert spec.make().raw_message_broker.capabilities.shared_state
    return spec
