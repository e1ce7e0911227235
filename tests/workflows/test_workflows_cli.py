"""`repid workflows list|show|signal` against a workflow kept in Redis."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import pytest

from repid import Connection, Queue, RedisMessageBroker
from repid.cli import main
from repid.workflows import Workflow, WorkflowHandle, WorkflowStatus

REDIS = "redis://127.0.0.1:6379/0"
TARGET = "tests.cli.apps.cli_broker_app:router"
QUEUE = f"wf_cli_{uuid4().hex[:8]}"


async def _enqueue() -> str:
    conn = Connection(RedisMessageBroker(REDIS))
    await conn.connect()
    try:
        await Queue(QUEUE, _connection=conn).declare()
        wf = Workflow("approval", ttl=120)
        gate = wf.wait("gate", signal="approved")
        wf.step("work", after=[gate], queue=QUEUE)
        return (await wf.enqueue(conn)).id_
    finally:
        await conn.disconnect()


async def _status(wf_id: str) -> WorkflowStatus:
    conn = Connection(RedisMessageBroker(REDIS))
    await conn.connect()
    try:
        status = await WorkflowHandle(wf_id, conn).status()
        await conn.raw_message_broker.queue_delete(QUEUE)
        return status
    finally:
        await conn.disconnect()


def test_list_show_and_signal(capsys: pytest.CaptureFixture[str]) -> None:
    wf_id = asyncio.run(_enqueue())
    assert main(["workflows", "list", TARGET, "--broker", REDIS, "--limit", "50"]) == 0
    out = capsys.readouterr().out
    assert f"{wf_id}  approval  running  0/2 steps" in out

    assert main(["workflows", "show", wf_id, TARGET, "--broker", REDIS]) == 0
    out = capsys.readouterr().out
    assert f"workflow {wf_id} (approval): running" in out
    assert "gate  waiting" in out
    assert "work  pending" in out
    assert "after: gate" in out

    args = ["workflows", "signal", wf_id, "approved", TARGET, "--broker", REDIS]
    assert main([*args, "--data", '{"n": 3}']) == 0
    assert "signal 'approved' sent" in capsys.readouterr().out
    status = asyncio.run(_status(wf_id))
    assert status.steps["gate"].status == "succeeded"
    assert status.output("gate") == {"n": 3}
    assert status.steps["work"].status == "queued", "the signal's child was enqueued"

    assert main(["workflows", "show", "wf_nope", TARGET, "--broker", REDIS]) == 1
    assert "not found" in capsys.readouterr().err
    assert main([*args, "--data", "{bad"]) == 2
