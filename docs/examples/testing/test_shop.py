import pytest
from shop import router

from repid import Job, MessageCategory, Queue


@pytest.mark.repid(routers=[router])
async def test_placing_an_order_sends_a_confirmation(repid_get_mocked_actor) -> None:
    place_order = repid_get_mocked_actor("place_order")
    send_confirmation = repid_get_mocked_actor("send_confirmation")

    job = Job("place_order", args={"order_id": "42", "email": "ada@example.com"})
    await job.enqueue()  # the actor runs right away, and so does the job it enqueues

    place_order.assert_awaited_once_with(order_id=42, email="ada@example.com")
    send_confirmation.assert_awaited_once_with(email="ada@example.com")
    result = await job.result
    assert result is not None
    assert result.data == '"order-42"'


@pytest.mark.repid(routers=[router])
async def test_a_failed_charge_is_dead_lettered(repid_get_in_memory_queue) -> None:
    await Job("charge", queue="billing", args={"amount": 0}).enqueue()

    billing = repid_get_in_memory_queue("billing")
    [dead] = billing.dead
    assert dead.dead_letter.reason == "exception"
    assert dead.dead_letter.error_type == "ValueError"
    # The same, through the public Queue API:
    messages = [
        m
        async for m in Queue("billing").get_messages(
            category=MessageCategory.DEAD, stop_when_empty=True
        )
    ]
    assert [m.key.topic for m in messages] == ["charge"]


@pytest.mark.repid(routers=[router])
async def test_a_retry_waits_for_run_pending(repid_test_broker, repid_get_in_memory_queue) -> None:
    job = Job("notify_warehouse", args={"order_id": 7}, retries=1)
    await job.enqueue()  # attempt 1 fails; the retry waits for its delay

    [retry] = repid_get_in_memory_queue("default").delayed
    assert retry.attempt == 2
    assert await repid_test_broker.run_pending(include_delayed=True) == 1
    result = await job.result
    assert result is not None
    assert result.data == '"warehouse notified of order 7"'


@pytest.mark.repid(routers=[router])
async def test_events_are_recorded(repid_get_event_log) -> None:
    await Job("send_confirmation", args={"email": "grace@example.com"}).enqueue()

    names = [event.name for event in repid_get_event_log()]
    assert names.index("before_enqueue") < names.index("before_actor_run")
    assert [event["kwargs"] for event in repid_get_event_log("before_actor_run")] == [
        {"email": "grace@example.com"}
    ]
    assert repid_get_event_log("after_ack")


@pytest.mark.repid(routers=[router], declare_all_known_queues=False)
async def test_queues_are_not_declared_for_you() -> None:
    with pytest.raises(KeyError):
        await Job("charge", queue="billing", args={"amount": 1}).enqueue()


@pytest.mark.repid(routers=[router], declare_all_known_queues=False)
async def test_declaring_them_on_demand(repid_declare_all_known_queues) -> None:
    assert sorted(repid_declare_all_known_queues) == ["billing", "default"]
    await Job("charge", queue="billing", args={"amount": 1}).enqueue()
