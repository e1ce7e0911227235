"""`repid dashboard` served by a real process, and `repid.asgi`'s lifespan and dependency."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from repid import Connection, InMemoryMessageBroker, Repid
from repid.asgi import connection_from, repid_lifespan
from repid.cli import main
from repid.dashboard import BasicAuth, TokenAuth, auth_from_env
from repid.errors import ConfigurationError
from tests.conformance.specs.redis import DSN

ROOT = Path(__file__).parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.broker("redis")
def test_repid_dashboard_serves_on_loopback_with_token_and_read_only() -> None:
    port = _free_port()
    env = {**os.environ, "REPID_DASHBOARD_TOKEN": "t0ken-abc", "PYTHONPATH": str(ROOT)}
    env.pop("REPID_DASHBOARD_USER", None)
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "repid.cli", "dashboard"),
            *("--broker", DSN, "--port", str(port), "--read-only"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 30
        while True:
            try:
                refused = httpx.get(url, timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "repid dashboard did not start"
                time.sleep(0.1)
        assert refused.status_code == 401
        page = httpx.get(url, headers={"authorization": "Bearer t0ken-abc"}, timeout=10)
        assert page.status_code == 200
        assert "read-only" in page.text
        assert "t0ken-abc" not in page.text
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=20)
    assert f"repid dashboard on http://127.0.0.1:{port}/ (read-only)" in err


def test_repid_dashboard_needs_a_broker(capsys: pytest.CaptureFixture[str]) -> None:
    os.environ.pop("REPID_BROKER_URL", None)
    assert main(["dashboard"]) == 1
    assert "needs --broker" in capsys.readouterr().err


def test_auth_from_env() -> None:
    assert auth_from_env({}) is None
    token = auth_from_env({"REPID_DASHBOARD_TOKEN": "x"})
    assert token == TokenAuth("x")
    assert "x" not in repr(token)
    basic = auth_from_env({"REPID_DASHBOARD_USER": "u", "REPID_DASHBOARD_PASSWORD": "p"})
    assert basic == BasicAuth("u", "p")
    assert "'p'" not in repr(basic)
    with pytest.raises(ValueError, match="both"):
        auth_from_env({"REPID_DASHBOARD_USER": "u"})


async def test_lifespan_connects_sets_default_and_disconnects() -> None:
    conn = Connection(InMemoryMessageBroker())

    async def handler(request: Request) -> JSONResponse:
        got = connection_from(request)
        return JSONResponse({"same": got is conn, "open": got.is_open})

    app = Starlette(routes=[Route("/", handler)], lifespan=repid_lifespan(Repid(conn)))
    async with app.router.lifespan_context(app) as state:
        assert state == {"repid_connection": conn}
        assert conn.is_open
        assert Repid.get_magic_connection() is conn
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/")).json() == {"same": True, "open": True}
    assert not conn.is_open
    with pytest.raises(ValueError, match="Default connection"):
        Repid.get_magic_connection()


async def test_connection_from_without_the_lifespan_says_so() -> None:
    async def handler(request: Request) -> JSONResponse:
        with pytest.raises(ConfigurationError, match="repid_lifespan"):
            connection_from(request)
        return JSONResponse({})

    app = Starlette(routes=[Route("/", handler)])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/")).status_code == 200
