"""Tests for `repid.health_check_server`, driven by a raw asyncio TCP client."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import pytest

from repid.health_check_server import (
    HealthCheckServer,
    HealthCheckServerSettings,
    HealthCheckStatus,
)

TIMEOUT = 5.0
HOST = "127.0.0.1"


@dataclasses.dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def current_status(server: HealthCheckServer) -> HealthCheckStatus:
    return server.status  # read through a call so mypy does not narrow across assertions


def local_settings(endpoint_name: str = "/healthz") -> HealthCheckServerSettings:
    return HealthCheckServerSettings(address=HOST, port=0, endpoint_name=endpoint_name)


@pytest.fixture
async def server() -> AsyncIterator[HealthCheckServer]:
    async with HealthCheckServer(local_settings()) as running:
        yield running


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await asyncio.wait_for(writer.wait_closed(), TIMEOUT)


async def send_raw(port: int, raw: bytes, *, half_close: bool = False) -> bytes:
    """Send `raw`, then read everything until the server closes the connection."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), TIMEOUT)
    try:
        writer.write(raw)
        if half_close:
            writer.write_eof()
        await writer.drain()
        return await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        await close_writer(writer)


def parse_response(data: bytes) -> Response:
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no end of head in {data!r}"
    status_line, *header_lines = head.decode("ascii").split("\r\n")
    version, code, _reason = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(int(code), headers, body)


async def request(
    port: int, method: str = "GET", path: str = "/healthz", body: bytes = b""
) -> Response:
    raw = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: test\r\n"
    if body:
        raw += f"Content-Length: {len(body)}\r\n"
    response = parse_response(await send_raw(port, raw.encode("ascii") + b"\r\n" + body))
    assert response.headers["connection"] == "close"
    if method != "HEAD":
        assert int(response.headers["content-length"]) == len(response.body)
    return response


async def test_healthy_answers_200_ok(server: HealthCheckServer) -> None:
    response = await request(server.port)

    assert response.status == 200
    assert response.body == b"OK"
    assert response.headers["content-length"] == "2"
    assert response.headers["content-type"].startswith("text/plain")


async def test_status_changes_apply_to_next_request(server: HealthCheckServer) -> None:
    server.set_health_check_status(HealthCheckStatus.UNHEALTHY)
    unhealthy = await request(server.port)
    assert unhealthy.status == 503
    assert unhealthy.body == b"UNHEALTHY"
    assert current_status(server) is HealthCheckStatus.UNHEALTHY

    server.set_health_check_status(HealthCheckStatus.OK)
    healthy = await request(server.port)
    assert healthy.status == 200
    assert healthy.body == b"OK"
    assert current_status(server) is HealthCheckStatus.OK


async def test_health_status_alias_is_assignable(server: HealthCheckServer) -> None:
    server.health_status = HealthCheckStatus.UNHEALTHY

    assert server.status is HealthCheckStatus.UNHEALTHY
    assert (await request(server.port)).status == 503


async def test_query_string_is_ignored(server: HealthCheckServer) -> None:
    assert (await request(server.port, path="/healthz?verbose=1")).status == 200


async def test_absolute_form_target(server: HealthCheckServer) -> None:
    response = await request(server.port, path=f"http://{HOST}:{server.port}/healthz")
    assert response.status == 200


@pytest.mark.parametrize("path", ["/", "/other", "/healthz/", "/HEALTHZ", "/healthzz", "*"])
async def test_other_path_is_404(server: HealthCheckServer, path: str) -> None:
    response = await request(server.port, path=path)

    assert response.status == 404
    assert response.body == b"Not Found"


@pytest.mark.parametrize(
    ("method", "body"),
    [("POST", b""), ("POST", b'{"probe": true}'), ("PUT", b"x"), ("DELETE", b""), ("OPTIONS", b"")],
)
async def test_other_method_is_405(server: HealthCheckServer, method: str, body: bytes) -> None:
    response = await request(server.port, method=method, body=body)

    assert response.status == 405
    assert response.headers["allow"] == "GET, HEAD"


async def test_head_has_headers_but_no_body(server: HealthCheckServer) -> None:
    response = await request(server.port, method="HEAD")

    assert response.status == 200
    assert response.headers["content-length"] == "2"
    assert response.body == b""


async def test_custom_endpoint_name() -> None:
    async with HealthCheckServer(local_settings("/live")) as server:
        assert (await request(server.port, path="/live")).status == 200
        assert (await request(server.port, path="/healthz")).status == 404


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"garbage\r\n\r\n", id="garbage"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", id="tls-hello"),
        pytest.param(b"\xff\xfe /healthz HTTP/1.1\r\n\r\n", id="non-ascii"),
        pytest.param(b"GET /healthz\r\n\r\n", id="no-version"),
        pytest.param(b"GET  /healthz HTTP/1.1\r\n\r\n", id="double-space"),
        pytest.param(b"GET /healthz FTP/1.0\r\n\r\n", id="bad-version"),
        pytest.param(b"G(T /healthz HTTP/1.1\r\n\r\n", id="bad-method"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nno colon\r\n\r\n", id="bad-header"),
        pytest.param(b"GET /healthz HTTP/1.1\r\n folded: x\r\n\r\n", id="folded-header"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nContent-Length: -1\r\n\r\n", id="bad-length"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", id="huge-line"),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\n" + b"X-Filler: aaaaaaaaaaaaaaaaaaaa\r\n" * 500 + b"\r\n",
            id="huge-head",
        ),
    ],
)
async def test_malformed_request_is_400(server: HealthCheckServer, raw: bytes) -> None:
    response = parse_response(await send_raw(server.port, raw))

    assert response.status == 400
    assert response.headers["connection"] == "close"
    assert int(response.headers["content-length"]) == len(response.body)
    # and the server keeps answering
    assert (await request(server.port)).status == 200


async def test_truncated_request_is_400(server: HealthCheckServer) -> None:
    response = parse_response(await send_raw(server.port, b"GET /hea", half_close=True))

    assert response.status == 400


async def test_leading_empty_line_and_bare_newlines_are_accepted(
    server: HealthCheckServer,
) -> None:
    response = parse_response(await send_raw(server.port, b"\r\nGET /healthz HTTP/1.0\n\n"))

    assert response.status == 200


async def test_client_that_sends_nothing_and_disconnects(server: HealthCheckServer) -> None:
    _reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, server.port), TIMEOUT)
    await close_writer(writer)

    # Half-closing without a byte: the server closes without an answer.
    assert await send_raw(server.port, b"", half_close=True) == b""

    assert (await request(server.port)).status == 200


async def test_slow_client_is_dropped_after_read_timeout() -> None:
    async with HealthCheckServer(local_settings(), read_timeout=0.2) as server:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, server.port), TIMEOUT)
        try:
            writer.write(b"GET /heal")
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        finally:
            await close_writer(writer)

        assert (await request(server.port)).status == 200


async def test_concurrent_requests(server: HealthCheckServer) -> None:
    responses = await asyncio.gather(*(request(server.port) for _ in range(25)))

    assert {response.status for response in responses} == {200}


async def test_on_request_hook_sees_each_answer() -> None:
    seen: list[tuple[str, str, int]] = []

    def hook(method: str, path: str, status_code: int) -> None:
        seen.append((method, path, status_code))

    async with HealthCheckServer(local_settings(), on_request=hook) as server:
        await request(server.port)
        server.set_health_check_status(HealthCheckStatus.UNHEALTHY)
        await request(server.port, path="/healthz?x=1")
        await request(server.port, path="/nope")
        await request(server.port, method="POST")
        await send_raw(server.port, b"garbage\r\n\r\n")

    assert seen == [
        ("GET", "/healthz", 200),
        ("GET", "/healthz", 503),
        ("GET", "/nope", 404),
        ("POST", "/healthz", 405),
        ("", "", 400),
    ]


async def test_failing_hook_does_not_break_the_answer(server: HealthCheckServer) -> None:
    def hook(method: str, path: str, status_code: int) -> None:
        raise RuntimeError("metrics backend down")

    server.on_request = hook

    assert (await request(server.port)).status == 200


async def test_stop_refuses_new_connections() -> None:
    server = HealthCheckServer(local_settings())
    await server.start()
    port = server.port
    assert (await request(port)).status == 200

    await server.stop()

    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection(HOST, port), TIMEOUT)
    with pytest.raises(RuntimeError):
        _ = server.port


async def test_stop_is_idempotent() -> None:
    server = HealthCheckServer(local_settings())
    await server.stop()  # never started
    await server.start()
    await server.stop()
    await server.stop()


async def test_start_twice_keeps_one_server_and_restart_works() -> None:
    server = HealthCheckServer(local_settings())
    await server.start()
    port = server.port
    await server.start()
    assert server.port == port
    await server.stop()

    await server.start()
    try:
        assert (await request(server.port)).status == 200
    finally:
        await server.stop()


async def test_stop_drops_connection_in_progress() -> None:
    server = HealthCheckServer(local_settings())
    await server.start()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, server.port), TIMEOUT)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # head not finished
        await writer.drain()
        await asyncio.wait_for(server.stop(), TIMEOUT)
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    finally:
        await close_writer(writer)


def test_port_before_start_raises() -> None:
    with pytest.raises(RuntimeError):
        _ = HealthCheckServer().port


def test_defaults() -> None:
    settings = HealthCheckServerSettings()

    assert settings == HealthCheckServerSettings(
        address="0.0.0.0", port=8080, endpoint_name="/healthz"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]
    server = HealthCheckServer()
    assert server.settings == settings
    assert server.status is HealthCheckStatus.OK
    assert HealthCheckStatus.OK.value == 200
    assert HealthCheckStatus.UNHEALTHY.value == 503


async def test_extra_route_is_served_and_a_failing_handler_answers_500() -> None:
    calls = 0

    def broken() -> tuple[str, bytes]:
        raise RuntimeError("boom")

    def hello() -> tuple[str, bytes]:
        nonlocal calls
        calls += 1
        return "application/json", b'{"hello": 1}'

    settings = HealthCheckServerSettings(address="127.0.0.1", port=0)
    server = HealthCheckServer(settings, routes={"/hello": hello})
    server.add_route("/broken", broken)
    with pytest.raises(ValueError):
        server.add_route("/healthz", hello)
    with pytest.raises(ValueError):
        server.add_route("relative", hello)
    async with server:
        raw = await send_raw(server.port, b"GET /hello?x=1 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Content-Type: application/json\r\n" in raw
        assert raw.endswith(b'{"hello": 1}')
        raw = await send_raw(server.port, b"GET /broken HTTP/1.1\r\nHost: t\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 500 ")
        raw = await send_raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert calls == 1
