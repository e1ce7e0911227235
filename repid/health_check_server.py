"""A tiny HTTP/1.1 health check endpoint for liveness/readiness probes.

Built on `asyncio.start_server` alone: `GET <endpoint_name>` answers 200 `OK` or 503 `UNHEALTHY`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

__all__ = [
    "HealthCheckServer",
    "HealthCheckServerSettings",
    "HealthCheckStatus",
    "RequestHook",
    "RouteHandler",
]

logger = logging.getLogger(__name__)

RequestHook = Callable[[str, str, int], None]
"""Called once per answered request with `(method, path, status_code)`.

`method` and `path` are empty strings when the request could not be parsed (status 400). Meant
for metrics (e.g. counting probes by status code); it runs inline, so it must be fast and must not
block. An exception it raises is logged and otherwise ignored.
"""

RouteHandler = Callable[[], tuple[str, bytes]]
"""Answers `GET` on an extra path with `(content_type, body)`, e.g. Prometheus metrics.

It runs in the event loop, so it must be quick (rendering a metrics registry is). An exception it
raises answers 500 and is logged; the server keeps running.
"""

# Bounds on what a client may send before we answer. A probe's request is a few hundred bytes.
_MAX_HEAD_BYTES = 8 * 1024
_MAX_DISCARDED_BODY_BYTES = 64 * 1024
_DEFAULT_READ_TIMEOUT = 5.0
_ALLOWED_METHODS = ("GET", "HEAD")

_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION_RE = re.compile(r"HTTP/1\.[0-9]")
_ABSOLUTE_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class HealthCheckStatus(enum.IntEnum):
    """The health reported by the server; each value is the HTTP status code it answers with."""

    OK = 200
    UNHEALTHY = 503


@dataclass(frozen=True)
class HealthCheckServerSettings:
    """Where the health check server listens.

    The default address, `0.0.0.0`, is every network interface of the machine (repid 1.6's
    default, kept for compatibility): a container's probe comes from outside the container,
    and anyone who can reach the port can read the probe's answer, and `/metrics` too when
    the connection uses `PrometheusMiddleware` (queue and actor names, job counts). There is
    no authentication. On a host shared with untrusted networks, bind `127.0.0.1` (or the
    one interface the prober uses) or firewall the port.

    Attributes:
        address: Host or IP address to bind to; `0.0.0.0` (all interfaces) by default.
        port: TCP port to bind to; 0 picks a free port (read it back from
            `HealthCheckServer.port`).
        endpoint_name: The path that answers the probe, e.g. `/healthz`.
    """

    address: str = "0.0.0.0"
    port: int = 8080
    endpoint_name: str = "/healthz"


class _BadRequestError(Exception):
    """The client sent something that is not a request we can parse."""


@dataclass(frozen=True)
class _Response:
    status_code: int
    body: bytes
    allow: str | None = None
    content_type: str = "text/plain; charset=utf-8"

    def encode(self, *, include_body: bool) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status_code} {_REASONS[self.status_code]}",
            f"Date: {formatdate(usegmt=True)}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
        ]
        if self.allow is not None:
            lines.append(f"Allow: {self.allow}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        return head + self.body if include_body else head


_BAD_REQUEST = _Response(400, b"Bad Request")
_NOT_FOUND = _Response(404, b"Not Found")
_METHOD_NOT_ALLOWED = _Response(405, b"Method Not Allowed", allow=", ".join(_ALLOWED_METHODS))
_SERVER_ERROR = _Response(500, b"Internal Server Error")


class HealthCheckServer:
    """Serves the current `HealthCheckStatus` over HTTP on a single endpoint.

    Every connection carries one request and is then closed (`Connection: close`). `GET` (and
    `HEAD`) on the endpoint answer 200 `OK` or 503 `UNHEALTHY`; other paths get 404, other methods
    405, unparsable requests 400. A misbehaving client is logged at debug level and dropped; it
    never stops the server.

    Example:
        ```python
        async with HealthCheckServer(HealthCheckServerSettings(port=8080)) as server:
            ...
            server.set_health_check_status(HealthCheckStatus.UNHEALTHY)
        ```
    """

    def __init__(
        self,
        settings: HealthCheckServerSettings | None = None,
        *,
        read_timeout: float = _DEFAULT_READ_TIMEOUT,
        on_request: RequestHook | None = None,
        routes: Mapping[str, RouteHandler] | None = None,
    ) -> None:
        """Create a server; nothing is bound until `start`.

        Args:
            settings: Address, port and endpoint; defaults to `HealthCheckServerSettings()`.
            read_timeout: Seconds a client gets to send its whole request (and to take the
                answer) before the connection is dropped.
            on_request: Optional `RequestHook`, called once per answered request. It can also be
                set later through the `on_request` attribute.
            routes: Extra paths served next to the probe, each answered by a `RouteHandler`
                (the worker adds `/metrics` this way); see `add_route`.
        """
        self._settings = settings if settings is not None else HealthCheckServerSettings()
        self._read_timeout = read_timeout
        self.on_request: RequestHook | None = on_request
        self._status = HealthCheckStatus.OK
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._routes: dict[str, RouteHandler] = {}
        for path, handler in (routes or {}).items():
            self.add_route(path, handler)

    def add_route(self, path: str, handler: RouteHandler) -> None:
        """Serve `GET`/`HEAD` on `path` with `handler`, next to the health endpoint.

        Args:
            path: An absolute path such as `/metrics`; not the health endpoint's own.
            handler: Returns `(content_type, body)` for each request.

        Raises:
            ValueError: `path` does not start with `/` or is the health endpoint.
        """
        if not path.startswith("/") or path == self._settings.endpoint_name:
            raise ValueError(f"cannot serve {path!r} next to {self._settings.endpoint_name!r}")
        self._routes[path] = handler

    @property
    def settings(self) -> HealthCheckServerSettings:
        """The settings the server was created with."""
        return self._settings

    @property
    def status(self) -> HealthCheckStatus:
        """The health status currently reported."""
        return self._status

    @property
    def health_status(self) -> HealthCheckStatus:
        """Alias of `status`, assignable, as in repid 1.x."""
        return self._status

    @health_status.setter
    def health_status(self, status: HealthCheckStatus) -> None:
        self.set_health_check_status(status)

    def set_health_check_status(self, status: HealthCheckStatus) -> None:
        """Change the reported status; it applies to the next request answered.

        Args:
            status: The new status.
        """
        self._status = HealthCheckStatus(status)

    @property
    def port(self) -> int:
        """The TCP port actually bound (useful with `port=0`).

        Raises:
            RuntimeError: The server is not running.
        """
        server = self._server
        if server is None or not server.sockets:
            raise RuntimeError("The health check server is not running.")
        port: int = server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        """Bind the socket and start answering; does nothing if already running.

        Raises:
            OSError: The address could not be bound.
        """
        async with self._lock:
            if self._server is not None:
                return
            self._server = await asyncio.start_server(
                self._handle_connection,
                host=self._settings.address,
                port=self._settings.port,
                limit=_MAX_HEAD_BYTES,
            )
            logger.info(
                "Started health check server.",
                extra={
                    "address": self._settings.address,
                    "port": self.port,
                    "endpoint_name": self._settings.endpoint_name,
                },
            )

    async def stop(self) -> None:
        """Stop listening, drop open connections and wait until all is closed.

        Calling it when the server is not running does nothing.
        """
        async with self._lock:
            server = self._server
            if server is None:
                return
            self._server = None
            server.close()
            while self._connections:
                connections = list(self._connections)
                for task in connections:
                    task.cancel()
                await asyncio.gather(*connections, return_exceptions=True)
            await server.wait_closed()
            logger.info("Stopped health check server.")

    async def __aenter__(self) -> Self:
        """Start the server.

        Returns:
            The server itself.
        """
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the server."""
        await self.stop()

    async def _handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            if self._server is not None:
                await self._serve_one(reader, writer)
        except Exception:
            logger.debug("Health check connection failed.", exc_info=True)
        finally:
            if task is not None:
                self._connections.discard(task)
            await self._close(writer)

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method = path = ""
        try:
            async with asyncio.timeout(self._read_timeout):
                head = await _read_head(reader)
                if head is None:
                    return  # connected and closed without sending anything
                method, path, headers = _parse_head(head)
                await _discard_body(reader, headers)
            response = self._respond(method, path)
        except _BadRequestError as exc:
            logger.debug("Bad health check request: %s", exc)
            method = path = ""
            response = _BAD_REQUEST

        self._call_hook(method, path, response.status_code)
        async with asyncio.timeout(self._read_timeout):
            writer.write(response.encode(include_body=method != "HEAD"))
            await writer.drain()

    def _respond(self, method: str, path: str) -> _Response:
        route = self._routes.get(path.partition("?")[0])
        if route is not None:
            if method not in _ALLOWED_METHODS:
                return _METHOD_NOT_ALLOWED
            try:
                content_type, body = route()
            except Exception:
                logger.exception("Handler of %s raised.", path)
                return _SERVER_ERROR
            return _Response(200, body, content_type=content_type)
        if path != self._settings.endpoint_name:
            return _NOT_FOUND
        if method not in _ALLOWED_METHODS:
            return _METHOD_NOT_ALLOWED
        status = self._status
        return _Response(status.value, status.name.encode("ascii"))

    def _call_hook(self, method: str, path: str, status_code: int) -> None:
        hook = self.on_request
        if hook is None:
            return
        try:
            hook(method, path, status_code)
        except Exception:
            logger.warning("Health check on_request hook raised.", exc_info=True)

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), self._read_timeout)
        except Exception:  # timed out (peer not reading) or reset: drop it hard
            writer.transport.abort()


async def _read_head(reader: asyncio.StreamReader) -> list[bytes] | None:
    """Read the request line and headers, without line endings.

    Returns None when the client closed the connection without sending a byte.
    """
    lines: list[bytes] = []
    total = 0
    while True:
        try:
            line = await reader.readline()
        except ValueError as exc:  # a single line longer than the stream limit
            raise _BadRequestError("request head too large") from exc
        if not line:
            if total == 0:
                return None
            raise _BadRequestError("connection closed inside the request head")
        total += len(line)
        if total > _MAX_HEAD_BYTES:
            raise _BadRequestError("request head too large")
        if not line.endswith(b"\n"):
            raise _BadRequestError("connection closed inside the request head")
        line = line.removesuffix(b"\n").removesuffix(b"\r")
        if not line:
            if lines:
                return lines
            continue  # empty lines before the request line are ignored (RFC 9112, 2.2)
        lines.append(line)


def _parse_head(head: list[bytes]) -> tuple[str, str, dict[bytes, bytes]]:
    """Split a request head into method, path (no query) and lower-cased headers."""
    try:
        request_line = head[0].decode("ascii")
    except UnicodeDecodeError as exc:
        raise _BadRequestError("request line is not ASCII") from exc
    parts = request_line.split(" ")
    if len(parts) != 3:
        raise _BadRequestError("malformed request line")
    method, target, version = parts
    if (
        not _TOKEN_RE.fullmatch(method.encode("ascii"))
        or not target
        or not _VERSION_RE.fullmatch(version)
    ):
        raise _BadRequestError("malformed request line")

    headers: dict[bytes, bytes] = {}
    for line in head[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN_RE.fullmatch(name):
            raise _BadRequestError("malformed header line")
        headers[name.lower()] = value.strip(b" \t")

    if target.startswith("/"):
        path = target.partition("?")[0]
    elif _ABSOLUTE_URI_RE.match(target):
        path = urlsplit(target).path or "/"
    else:
        path = target  # e.g. "*": matches no endpoint
    return method, path, headers


async def _discard_body(reader: asyncio.StreamReader, headers: dict[bytes, bytes]) -> None:
    """Read and drop a small request body, so closing the socket does not reset the answer."""
    raw_length = headers.get(b"content-length")
    if raw_length is None:
        return
    if not raw_length.isdigit():
        raise _BadRequestError("invalid Content-Length")
    length = int(raw_length)
    if 0 < length <= _MAX_DISCARDED_BODY_BYTES:
        with contextlib.suppress(asyncio.IncompleteReadError):
            await reader.readexactly(length)
