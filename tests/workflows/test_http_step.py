"""The HTTP system step against a local HTTP server on loopback: JSON and text outputs feed the
children, 5xx and connection errors are retried by the step's retries, 4xx is an output."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from repid import Connection, InMemoryBucketBroker, InMemoryMessageBroker, Queue, Router, Worker
from repid.workflows import Workflow, WorkflowStatus, workflow_router


class _Handler(BaseHTTPRequestHandler):
    hits: dict[str, int] = {}

    def log_message(self, *args: object) -> None:
        """Quiet."""

    def _answer(self, code: int, body: bytes, kind: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("X-Seen", str(self.hits[self.path]))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if self.path == "/flaky" and self.hits[self.path] < 3:
            self._answer(503, b"busy", "text/plain")
        elif self.path == "/text":
            self._answer(200, b"plain words", "text/plain")
        elif self.path == "/missing":
            self._answer(404, b'{"error": "nope"}', "application/json")
        elif self.path == "/down":
            self._answer(500, b"down", "text/plain")
        else:
            self._answer(200, json.dumps({"user": "ada", "n": 7}).encode(), "application/json")

    def do_POST(self) -> None:
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        length = int(self.headers.get("Content-Length", 0))
        got = json.loads(self.rfile.read(length))
        token = self.headers.get("Authorization")
        self._answer(200, json.dumps({"echo": got, "auth": token}).encode(), "application/json")


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.hits = {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


async def _run(wf: Workflow) -> WorkflowStatus:
    conn = Connection(
        InMemoryMessageBroker(), results_bucket_broker=InMemoryBucketBroker(use_result_bucket=True)
    )
    await conn.connect()
    await Queue(_connection=conn).declare()
    router = Router()

    @router.actor
    async def greet(json: dict[str, object]) -> str:  # the HTTP step's `json` output field
        return f"hello {json['user']}"

    router.include_router(workflow_router(retry_policy=lambda _n=1: 0))
    handle = await wf.enqueue(conn)
    worker = Worker([router], _connection=conn, handle_signals=[], graceful_shutdown_time=1.0)
    task = asyncio.create_task(worker.run())
    try:
        return await handle.wait(timeout=30)
    finally:
        while not task.done():
            worker.stop()
            await asyncio.wait({task}, timeout=0.05)
        await conn.disconnect()


async def test_a_json_answer_feeds_the_children(server: str) -> None:
    wf = Workflow("http")
    call = wf.http("user", f"{server}/user")
    wf.step("greet", after=[call])
    status = await _run(wf)
    assert status.state == "succeeded"
    out = status.output("user")
    assert out["status"] == 200
    assert out["json"] == {"user": "ada", "n": 7}
    assert out["headers"]["content-type"] == "application/json"
    assert status.output("greet") == "hello ada"


async def test_5xx_is_retried_by_the_steps_retries(server: str) -> None:
    wf = Workflow("flaky")
    wf.http("flaky", f"{server}/flaky", retries=3)
    status = await _run(wf)
    assert status.state == "succeeded"
    assert status.output("flaky")["headers"]["x-seen"] == "3", "two 503s, then the answer"


async def test_5xx_past_the_retries_fails_the_step(server: str) -> None:
    wf = Workflow("down")
    down = wf.http("down", f"{server}/down", retries=1)
    wf.step("greet", after=[down])
    status = await _run(wf)
    assert status.state == "failed"
    assert "answered 500" in (status.steps["down"].error or "")
    assert status.steps["greet"].status == "skipped"
    assert _Handler.hits["/down"] == 2


async def test_a_connection_error_is_retried_then_fails_without_the_password() -> None:
    wf = Workflow("refused")
    wf.http("refused", "http://user:s3cret@127.0.0.1:1/x", retries=1)
    status = await _run(wf)
    assert status.state == "failed"
    error = status.steps["refused"].error or ""
    assert "ConnectError" in error
    assert "s3cret" not in error


async def test_text_4xx_and_a_posted_body(server: str) -> None:
    wf = Workflow("misc")
    wf.http("text", f"{server}/text")
    wf.http("missing", f"{server}/missing")
    wf.http(
        "post",
        f"{server}/echo",
        method="POST",
        headers={"Authorization": "Bearer t"},
        body={"a": 1},
    )
    status = await _run(wf)
    assert status.state == "succeeded"
    assert status.output("text")["text"] == "plain words"
    assert status.output("missing")["status"] == 404
    assert status.output("post")["json"] == {"echo": {"a": 1}, "auth": "Bearer t"}
