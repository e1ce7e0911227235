"""Private broker servers and a loopback TCP proxy for the chaos scenarios.

Every server here is the test's own: started on free ports with its data in a temporary
directory, so the scenarios may kill and restart it without disturbing the shared servers.

- `RedisChaosServer`: `redis-server` with an append-only file fsynced on every write (a Redis
  without persistence forgets everything on a restart, so it cannot keep "no job lost" then).
- `RabbitServer`: a private RabbitMQ node (own node name, ports, Mnesia and log directories,
  no plugins); a restart keeps its data directory, so durable queues and persistent messages
  survive.
- `KafkaServer`: the Kafka-protocol noida-db binary with its own data directory.
- `Proxy`: an asyncio TCP proxy running in its own thread; `drop()` aborts every current
  connection (both sides) while new ones keep being accepted. With ``kafka=True`` it rewrites
  the broker's advertised port in metadata answers, so Kafka clients keep going through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

from tests.brokers.redis.redis_test_support import RedisServer

__all__ = [
    "ChaosServer",
    "KafkaServer",
    "NatsServer",
    "Proxy",
    "RabbitServer",
    "RedisChaosServer",
    "free_port",
    "port_open",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _poll(check: Callable[[], bool], what: str, timeout: float, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if not alive():
            raise RuntimeError(f"{what}: the server process exited")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout:.0f}s")
        time.sleep(0.05)


def _end(process: subprocess.Popen[bytes], kill: bool, group: bool, grace: float) -> None:
    """SIGKILL (kill=True) or SIGTERM, then wait; SIGKILL after `grace` seconds."""
    sig = signal.SIGKILL if kill else signal.SIGTERM
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
        process.wait(10)


class ChaosServer(Protocol):
    """What the scenarios need of a private server."""

    name: str
    port: int
    opened_at: float
    """When the server's port last started accepting connections (`time.time()`)."""

    @property
    def url(self) -> str:
        """Where clients connect (DSN or bootstrap address) when not going through a proxy."""
        ...

    def start(self, timeout: float = ...) -> None: ...
    def stop(self, kill: bool = False) -> None: ...
    def restart(self, kill: bool = False, timeout: float = ...) -> None: ...
    def close(self) -> None: ...


class RedisChaosServer(RedisServer):
    """The Redis tests' private server (append-only, fsync always), with kill -9 too."""

    name = "redis"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.opened_at = 0.0

    @property
    def url(self) -> str:
        return self.dsn

    def start(self, timeout: float = 10.0) -> None:
        super().start()  # waits up to 10 s itself
        self.opened_at = time.time()

    def stop(self, kill: bool = False) -> None:
        """SIGTERM flushes the append-only file; SIGKILL relies on `appendfsync always`."""
        if self.process is not None:
            _end(self.process, kill, group=False, grace=10)
            self.process = None

    def restart(self, kill: bool = False, timeout: float = 10.0) -> None:
        self.stop(kill)
        self.start(timeout)

    def close(self) -> None:
        self.stop(kill=True)

    def url_at(self, port: int) -> str:
        """The DSN through a proxy listening on `port`."""
        return f"redis://127.0.0.1:{port}/0"


_RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def _rabbit_tool(name: str) -> str:
    # /usr/sbin/rabbitmq-* wrappers switch to the `rabbitmq` user (and its cookie and home):
    # the scripts behind them run the node as whoever calls them, with our own $HOME.
    candidate = _RABBIT_BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed")
    return found


class RabbitServer:
    """A private RabbitMQ node: own node name, AMQP and distribution ports, data in `directory`.

    $HOME points into `directory`, so the node and `rabbitmqctl` share a private Erlang cookie.
    """

    name = "rabbitmq"
    _count = 0

    def __init__(self, directory: Path) -> None:
        RabbitServer._count += 1
        self.directory = directory
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"repid-chaos-{os.getpid()}-{RabbitServer._count}@localhost"
        self.opened_at = 0.0
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "rabbitmq.conf").write_text("loopback_users = none\n")
        (directory / "enabled_plugins").write_text("[].\n")
        cookie = directory / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(f"REPIDCHAOS{os.getpid()}{self._count}")
            cookie.chmod(0o400)
        self.env = dict(os.environ)
        self.env.update(
            HOME=str(directory),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(directory / "mnesia"),
            RABBITMQ_LOG_BASE=str(directory / "log"),
            RABBITMQ_CONFIG_FILE=str(directory / "rabbitmq"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(directory / "enabled_plugins"),
            RABBITMQ_CONF_ENV_FILE=str(directory / "rabbitmq-env.conf"),  # none: no defaults
            RABBITMQ_ADVANCED_CONFIG_FILE=str(directory / "advanced.config"),
        )
        self.env.pop("RABBITMQ_ENABLED_PLUGINS", None)

    @property
    def url(self) -> str:
        return self.url_at(self.port)

    def url_at(self, port: int) -> str:
        return f"amqp://guest:guest@127.0.0.1:{port}/"

    def _alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        log = (self.directory / "server.out").open("ab")
        self.process = subprocess.Popen(
            [_rabbit_tool("rabbitmq-server")],
            env=self.env,
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a kill -9 takes the whole node
        )
        log.close()
        deadline = time.monotonic() + timeout
        _poll(lambda: port_open(self.port), f"RabbitMQ node {self.node}", timeout, self._alive)
        self.opened_at = time.time()
        while True:  # fails at once while the node is not registered with epmd yet
            left = deadline - time.monotonic()
            try:
                self.ctl("await_startup", "--timeout", str(max(1, int(left))), timeout=left + 10)
                return
            except RuntimeError:
                if left <= 0 or not self._alive():
                    raise
                time.sleep(0.2)

    def ctl(self, *args: str, timeout: float = 30.0) -> str:
        """Run `rabbitmqctl -n <node> args...` against this node; its output."""
        done = subprocess.run(
            [_rabbit_tool("rabbitmqctl"), "-n", self.node, *args],
            env=self.env,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): "
                f"{done.stdout.decode(errors='replace')}{done.stderr.decode(errors='replace')}"
            )
        return done.stdout.decode(errors="replace")

    def stop(self, kill: bool = False) -> None:
        """kill=True: SIGKILL of the node's process group; else SIGTERM (a clean node stop)."""
        if self.process is None:
            return
        _end(self.process, kill, group=True, grace=30)
        self.process = None
        # The group leader is the start script: the Erlang VM may outlive it by a moment.
        _poll(lambda: not port_open(self.port), "RabbitMQ node stop", 30, lambda: True)

    def restart(self, kill: bool = False, timeout: float = 60.0) -> None:
        self.stop(kill)
        self.start(timeout)

    def close(self) -> None:
        self.stop(kill=True)


class ProcessServer:
    """A private server process on a free loopback port: subclasses give `command()` and `url_at`.

    `start()` runs `command()` (its output to `server.out` in `directory`) and waits for the
    port; `stop(kill)` ends it with SIGTERM (or SIGKILL), `restart()` does both.
    """

    name = "server"
    new_session = False
    """The process leads a session of its own (not signalled with the test's group)."""
    group = False
    """`stop()` signals the whole process group, not only the process."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.opened_at = 0.0
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The server's argv."""
        raise NotImplementedError

    def popen_options(self) -> dict[str, Any]:
        """Extra `subprocess.Popen` keywords (user, cwd, ...)."""
        return {}

    @property
    def url(self) -> str:
        return self.url_at(self.port)

    def url_at(self, port: int) -> str:
        raise NotImplementedError

    def _alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        log = (self.directory / "server.out").open("ab")
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=self.new_session,
            **self.popen_options(),
        )
        log.close()
        _poll(lambda: port_open(self.port), self.name, timeout, self._alive)
        self.opened_at = time.time()

    def stop(self, kill: bool = False) -> None:
        process, self.process = self.process, None
        if process is not None:
            _end(process, kill, group=self.group, grace=15)

    def restart(self, kill: bool = False, timeout: float = 30.0) -> None:
        self.stop(kill)
        self.start(timeout)

    def close(self) -> None:
        self.stop(kill=True)


class KafkaServer(ProcessServer):
    """A private noida-db (Kafka protocol only) with its own data directory."""

    name = "kafka"
    new_session = True

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        (directory / "data").mkdir(parents=True, exist_ok=True)

    def url_at(self, port: int) -> str:
        return f"127.0.0.1:{port}"

    def command(self) -> list[str]:
        import noida_db  # type: ignore[import-untyped]

        # The binary inside the package, not the console script (that one does not pass
        # SIGTERM on, so the PID would not be the server's).
        exe = Path(noida_db.__file__).parent / "noida-db"
        return [str(exe), "start", "--only", "kafka", "--kafka-port", str(self.port),
                "--data-dir", str(self.directory / "data")]  # fmt: skip


_PG_BIN = Path("/usr/lib/postgresql")


def _pg_tool(name: str) -> str:
    """A PostgreSQL server program of the newest Debian cluster version (else from PATH)."""
    versions = sorted(_PG_BIN.glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    for directory in versions:
        if (directory / name).exists():
            return str(directory / name)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install PostgreSQL (Debian: postgresql)")
    return found


class PostgresServer(ProcessServer):
    """A private PostgreSQL cluster made with `initdb`, on its own port and data directory.

    The data lives in a directory of its own under the system temp dir (owned by the `postgres`
    user when the tests run as root, since the server refuses to run as root). `stop(kill=True)`
    SIGKILLs the whole process group (a crash: the restart replays the WAL); `stop()` is a fast
    shutdown (SIGINT).
    """

    name = "postgres"
    new_session = True
    group = True

    def __init__(self, directory: Path) -> None:
        import pwd
        import tempfile

        super().__init__(directory)
        self._user: str | None = None
        self.data_root = Path(tempfile.mkdtemp(prefix="repid-pg-"))
        self.data = self.data_root / "data"
        if os.geteuid() == 0:
            self._user = "postgres"
            entry = pwd.getpwnam(self._user)
            os.chown(self.data_root, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            [_pg_tool("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, user=self._user, cwd=self.data_root,
        )  # fmt: skip

    def url_at(self, port: int) -> str:
        return f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def command(self) -> list[str]:
        return [_pg_tool("postgres"), "-D", str(self.data), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1",
                "-c", f"unix_socket_directories={self.data_root}",
                "-c", "max_connections=100"]  # fmt: skip

    def popen_options(self) -> dict[str, Any]:
        return {"user": self._user, "cwd": self.data_root}

    def stop(self, kill: bool = False) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if kill:
            _end(process, True, group=True, grace=10)
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)  # fast shutdown (SIGTERM would wait for clients)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            _end(process, True, group=True, grace=10)

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.data_root, ignore_errors=True)


class NatsServer(ProcessServer):
    """A private `nats-server -js` with file storage in its own directory."""

    name = "nats"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        (directory / "store").mkdir(parents=True, exist_ok=True)

    def url_at(self, port: int) -> str:
        return f"nats://127.0.0.1:{port}"

    def command(self) -> list[str]:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        return [binary, "-js", "-a", "127.0.0.1", "-p", str(self.port),
                "-sd", str(self.directory / "store")]  # fmt: skip


# Kafka API keys whose answers carry broker addresses (host, then the port as an int32).
_KAFKA_ADDRESS_APIS = {3, 10}  # Metadata, FindCoordinator


class Proxy:
    """A loopback TCP proxy in its own thread and event loop.

    `drop()` aborts every current connection (client and upstream side, no FIN handshake)
    while the listener keeps accepting new ones. `kafka=True` frames the Kafka protocol and,
    in Metadata / FindCoordinator answers, replaces the server's port with the proxy's, so a
    client that bootstrapped through the proxy keeps using it for the broker connections too.
    """

    def __init__(self, target_port: int, *, kafka: bool = False, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self.kafka = kafka
        self.port = free_port()
        self.accepted = 0
        self.dropped = 0
        self.refused = 0
        self._links: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="proxy")

    def start(self) -> None:
        self._thread.start()
        self._call(self._start())

    def _call(self, coro: Coroutine[Any, Any, int]) -> int:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return 0

    @property
    def open_connections(self) -> int:
        return len(self._links) // 2

    def drop(self) -> int:
        """Abort every current connection; how many client connections were dropped."""
        return self._call(self._drop())

    async def _drop(self) -> int:
        links = list(self._links)
        for writer in links:
            writer.transport.abort()
        self._links.clear()
        count = len(links) // 2
        self.dropped += count
        return count

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _close(self) -> int:
        if self._server is not None:
            self._server.close()
        await self._drop()
        if self._server is not None:
            await self._server.wait_closed()
        return 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self.refused += 1  # the server is down: the client sees its connection close
            writer.transport.abort()
            return
        self.accepted += 1
        self._links |= {writer, up_writer}
        pending: dict[int, int] = {}  # Kafka: correlation id -> api key of the request

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            try:
                if not self.kafka:
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                    return
                while True:
                    head = await src.readexactly(4)
                    body = await src.readexactly(struct.unpack(">i", head)[0])
                    if up:
                        api_key, _, correlation = struct.unpack(">hhi", body[:8])
                        if api_key in _KAFKA_ADDRESS_APIS:
                            pending[correlation] = api_key
                    elif pending.pop(struct.unpack(">i", body[:4])[0], None) is not None:
                        body = self._rewrite(body)
                    dst.write(head + body)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))
        self._links -= {writer, up_writer}

    def _rewrite(self, body: bytes) -> bytes:
        # A host name (int16 or compact length prefix, left alone) directly followed by the
        # server's port as an int32: the port becomes the proxy's. Same length, so the frame
        # size does not change.
        port, ours = struct.pack(">i", self.target[1]), struct.pack(">i", self.port)
        for host in {self.target[0], "127.0.0.1", "localhost"}:
            body = body.replace(host.encode() + port, host.encode() + ours)
        return body


def make_server(
    name: str, directory: Path
) -> RedisChaosServer | RabbitServer | KafkaServer | PostgresServer | NatsServer:
    """A private server of broker `name` ("redis", "rabbitmq", "kafka", "postgres", "nats"), not
    started yet."""
    directory.mkdir(parents=True, exist_ok=True)
    if name == "redis":
        return RedisChaosServer(directory)
    if name == "rabbitmq":
        return RabbitServer(directory)
    if name == "kafka":
        return KafkaServer(directory)
    if name == "postgres":
        return PostgresServer(directory)
    if name == "nats":
        return NatsServer(directory)
    raise ValueError(f"unknown broker {name!r}")


def settings_url(name: str, url: str) -> str:
    """`url` as `BrokerSettings` wants it (Kafka: a `kafka://` bootstrap address)."""
    return f"kafka://{url}" if name == "kafka" and not url.startswith("kafka://") else url


def shared_port(name: str, url: str) -> int:
    """The port of a broker URL (the shared servers' `DEFAULT_URLS`)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url if "://" in url else f"kafka://{url}")
    default = {"redis": 6379, "rabbitmq": 5672, "kafka": 9092, "postgres": 5432, "nats": 4222}[name]
    return parts.port or default


def via_proxy(name: str, url: str, port: int) -> str:
    """`url` with its host and port replaced by the proxy's (127.0.0.1:`port`)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@127.0.0.1:{port}" if auth else f"127.0.0.1:{port}"
    return parts._replace(netloc=netloc).geturl()


# Worker log lines that mean a crash rather than a logged, handled failure.
FATAL_MARKERS = (
    "a worker lane crashed",
    "Task exception was never retrieved",
    "Exception in callback",
    "unexpected error processing message",
    "Fatal error",
)
STALE_MARKERS = ("stale ", "on a closed channel", "settlement of a lost delivery")


def log_figures(logs_dir: Path) -> dict[str, int]:
    """Counts over the workers' output: logged tracebacks, stale-settlement lines, fatal lines."""
    text = "\n".join(p.read_text(errors="replace") for p in sorted(logs_dir.glob("worker-*.log")))
    lines = text.splitlines()
    return {
        "logged_tracebacks": text.count("Traceback (most recent call last)"),
        "stale_logged": sum(1 for line in lines if any(m in line for m in STALE_MARKERS)),
        "fatal_lines": sum(1 for line in lines if any(m in line for m in FATAL_MARKERS)),
    }


def fatal_excerpts(logs_dir: Path) -> list[str]:
    """The fatal lines of each worker's output, with what follows them (failure messages)."""
    found = []
    for path in sorted(logs_dir.glob("worker-*.log")):
        text = path.read_text(errors="replace")
        for marker in FATAL_MARKERS:
            at = text.find(marker)
            if at >= 0:
                found.append(f"--- {path.name}\n{text[max(0, at - 200) : at + 3000]}")
    return found
