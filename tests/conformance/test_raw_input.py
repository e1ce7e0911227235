"""Bad messages published straight into the broker (issue 26): each one is dead-lettered with a
reason, and a good job sent after them still runs on the same worker.

The bodies are put on the queue by the broker's client library (`raw_publish.py`), not by repid,
so they are what a foreign producer, a bug or an attacker could leave there.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from pydantic_core import from_json, to_json

from repid import Connection, MessageCategory, Queue
from repid.codec import encode_message
from repid.data import DeadLetterReason, Parameters, RoutingKey

from .raw_publish import PUBLISHERS
from .support import browse, job, make_worker, router_for, running, wait

ACTOR = "known"
RECURRING = "recurring"


def envelope(queue: str, id_: str, topic: str = ACTOR, **changes: Any) -> dict[str, Any]:
    """A valid envelope for `queue` (as a JSON object), with top-level or parameter changes."""
    obj: dict[str, Any] = from_json(
        encode_message(RoutingKey(id_, topic, queue), "{}", Parameters())
    )
    for name, value in changes.items():
        if name in ("ts", "t", "d"):
            obj["m"][name] = value
        elif name == "priority":
            obj["k"][3] = value
        else:
            obj[name] = value
    return obj


def bad_bodies(
    queue: str, max_size: int | None, server_limit: float = float("inf")
) -> dict[str, tuple[bytes, str]]:
    """Case name -> (raw body, the dead-letter reason it must end with)."""
    decode, unknown = DeadLetterReason.DECODE_ERROR.value, DeadLetterReason.UNKNOWN_ACTOR.value

    schedule = DeadLetterReason.SCHEDULE_ERROR.value

    def env(id_: str, **changes: Any) -> bytes:
        return to_json(envelope(queue, id_, **changes))

    def recurring(id_: str, delay: list[Any]) -> bytes:
        return to_json(envelope(queue, id_, RECURRING, d=delay))

    cases: dict[str, tuple[bytes, str]] = {
        "not_json": (b"this is {not json", decode),
        "empty": (b"", decode),
        "json_number": (b"42", decode),
        "json_list": (b"[1, 2, 3]", decode),
        "deeply_nested": (b"[" * 10_000 + b"]" * 10_000, decode),
        "wrong_version": (env("wrong_version", v=99), decode),
        "key_not_a_list": (env("key_not_a_list", k="nope"), decode),
        "payload_not_text": (env("payload_not_text", p=5), decode),
        "parameters_not_object": (env("parameters_not_object", m=[]), decode),
        "invalid_utf8": (b"\xff\xfe\xfd garbage", decode),
        "invalid_utf8_in_envelope": (
            env("invalid_utf8_in_envelope", topic="@@TOPIC@@").replace(b"@@TOPIC@@", b"\xc3\x28"),
            decode,
        ),
        "priority_99": (env("priority_99", priority=99), decode),
        "priority_negative": (env("priority_negative", priority=-1), decode),
        "priority_huge": (env("priority_huge", priority=2**70), decode),
        "priority_text": (env("priority_text", priority="high"), decode),
        "timestamp_huge": (env("timestamp_huge", ts=1e300), decode),
        "timestamp_negative": (env("timestamp_negative", ts=-1e15), decode),
        "timestamp_text": (env("timestamp_text", ts="yesterday"), decode),
        "timestamp_nan": (env("timestamp_nan", ts="@@NAN@@").replace(b'"@@NAN@@"', b"NaN"), decode),
        "delay_until_huge": (env("delay_until_huge", d=[1e300, None, None, None]), decode),
        "timeout_huge": (env("timeout_huge", t=1e300), decode),
        # Recurring schedules with no next run: run once, then dead-lettered (not requeued at
        # once, forever).
        "deferred_by_zero": (recurring("deferred_by_zero", [None, 0.0, None, None]), schedule),
        "deferred_by_negative": (
            recurring("deferred_by_negative", [None, -5.0, None, None]),
            schedule,
        ),
        "cron_invalid": (recurring("cron_invalid", [None, None, "not a cron", None]), schedule),
        "actor_empty": (env("actor_empty", topic=""), unknown),
        "actor_10kB": (env("actor_10kB", topic="a" * 10_240), unknown),
        "actor_control_chars": (
            env("actor_control_chars", topic="\x00\x01\n\x1b[31m\x7f"),
            unknown,
        ),
        "actor_unknown": (env("actor_unknown", topic="no_such_actor"), unknown),
    }
    if max_size is not None and max_size < server_limit:
        # A valid envelope, just too long: refused unparsed.
        huge = envelope(queue, "too_large")
        huge["p"] = to_json({"blob": "x" * max_size}).decode()
        cases["too_large"] = (to_json(huge), decode)
    return cases


def case_of(message_id: str, raw: bytes | None, bodies: dict[str, tuple[bytes, str]]) -> str:
    """Which case a dead letter is: by its id if it decoded, else by its raw bytes (Redis keeps
    no raw bytes for an empty body)."""
    if message_id in bodies:
        return message_id
    for name, (body, _) in bodies.items():
        if (raw or b"") == body:
            return name
    raise AssertionError(f"dead letter {message_id!r} matches no case (raw {raw!r:.80})")


async def test_raw_bad_messages_are_dead_lettered_and_the_worker_keeps_going(
    broker_name: str, conn: Connection, new_queue: Any, caplog: pytest.LogCaptureFixture
) -> None:
    queue: Queue = await new_queue()
    # A body the server itself refuses cannot be published (NATS: its `max_payload`, which the
    # broker's limit defaults to).
    server_limit = (
        conn.message_broker.link.max_payload or float("inf")
        if broker_name == "nats"
        else float("inf")
    )
    bodies = bad_bodies(queue.name, conn.message_broker.capabilities.max_message_size, server_limit)
    # Each case's id must be its name for the ones that decode (the actor_* ones).
    for name in ("actor_empty", "actor_10kB", "actor_control_chars", "actor_unknown"):
        assert from_json(bodies[name][0])["k"][0] == name

    # Spread over the three priorities (Redis: three streams; RabbitMQ: the AMQP priority).
    raw = [(body, i % 3) for i, (body, _) in enumerate(bodies.values())]
    await PUBLISHERS[broker_name](conn, queue.name, raw)

    router = router_for(queue)
    good_ran = asyncio.Event()

    @router.actor(name=ACTOR)
    async def known() -> None:
        good_ran.set()

    @router.actor(name=RECURRING)
    async def recurring() -> None:
        return None

    caplog.set_level(logging.WARNING)
    worker = make_worker(conn, router)
    async with running(worker):
        await job(conn, ACTOR, queue).enqueue()
        await wait(good_ran, "the good job sent after the bad ones", timeout=30.0)
        dead_count = 0

        async def all_dead() -> bool:
            nonlocal dead_count
            dead_count = len(await browse(queue, MessageCategory.DEAD))
            return dead_count >= len(bodies)

        deadline = asyncio.get_running_loop().time() + 30.0
        while not await all_dead():
            if asyncio.get_running_loop().time() > deadline:
                dead = await browse(queue, MessageCategory.DEAD)
                found = {case_of(m.key.id_, m.delivery.raw, bodies) for m in dead}
                missing = sorted(set(bodies) - found)
                raise AssertionError(
                    f"{dead_count} of {len(bodies)} bad messages dead-lettered after 30s; "
                    f"missing: {missing}; still queued: {len(await browse(queue))}, delayed: "
                    f"{len(await browse(queue, MessageCategory.DELAYED))}"
                )
            await asyncio.sleep(0.05)
        # And after every bad message was handled, the same worker still runs good jobs.
        good_ran.clear()
        await job(conn, ACTOR, queue).enqueue()
        await wait(good_ran, "a good job sent after the bad ones were dead-lettered")

    dead = await browse(queue, MessageCategory.DEAD)
    reasons: dict[str, str] = {}
    for message in dead:
        info = message.dead_letter
        assert info is not None, f"dead letter without its reason: {message.key}"
        reasons[case_of(message.key.id_, message.delivery.raw, bodies)] = info.reason
        if message.delivery.decode_error is not None:
            assert info.error_message, "an undecodable message's dead letter says what is wrong"
    assert reasons == {name: reason for name, (_, reason) in bodies.items()}
    assert len(dead) == len(bodies), "a bad message was dead-lettered more than once"
    if "too_large" in bodies:
        (too_large,) = [m for m in dead if m.delivery.raw == bodies["too_large"][0]]
        assert too_large.dead_letter is not None
        assert "max_message_size" in (too_large.dead_letter.error_message or "")
    assert await browse(queue) == [], "a bad message was left to run again"
    # What the messages carry reaches the logs escaped and cut, never verbatim.
    for record in caplog.records:
        line = record.getMessage()
        for control in ("\x00", "\x1b", "\n"):
            assert control not in line, f"a control character logged: {line!r:.200}"
        assert len(line) < 2000, f"a log line of {len(line)} characters"
