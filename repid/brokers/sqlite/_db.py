"""One SQLite connection on its own thread, with the writes of one event-loop step batched.

Every operation is a function of a `sqlite3.Connection` run on the connection's dedicated
thread, never on the event loop. Operations issued in the same event-loop step share one
`BEGIN IMMEDIATE ... COMMIT` transaction (each inside its own savepoint, so one failing does
not undo the others): 500 gathered enqueues are one commit (one fsync), not 500.

The module also keeps the in-process wake-up registry: consumers of a file register here, and a
commit that made messages ready in a queue wakes this process's consumers of that queue at once
(other processes notice on their next poll).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

from repid.errors import BrokerUnavailableError, ConfigurationError

__all__ = ["Database", "Op", "database_path", "notify", "register", "unregister"]

logger = logging.getLogger("repid.brokers.sqlite")

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], T]
"""One operation: runs on the connection's thread inside the batch's transaction."""

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS repid_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS repid_queues (name TEXT PRIMARY KEY);
-- state: 0 ready, 1 in flight (leased until `at`), 2 dead, 3 delayed (due at `at`).
-- dup: a dead letter sent back to work while its id was pending again (both are kept).
CREATE TABLE IF NOT EXISTS repid_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    id TEXT NOT NULL,
    topic TEXT NOT NULL,
    priority INTEGER NOT NULL,
    state INTEGER NOT NULL,
    at REAL NOT NULL DEFAULT 0,
    ord INTEGER NOT NULL DEFAULT 0,
    token INTEGER NOT NULL DEFAULT 0,
    redelivered INTEGER NOT NULL DEFAULT 0,
    dup INTEGER NOT NULL DEFAULT 0,
    envelope BLOB NOT NULL,
    raw BLOB
);
CREATE INDEX IF NOT EXISTS repid_messages_ready
    ON repid_messages (queue, state, priority, ord, seq);
CREATE INDEX IF NOT EXISTS repid_messages_at ON repid_messages (queue, state, at);
CREATE UNIQUE INDEX IF NOT EXISTS repid_messages_pending
    ON repid_messages (queue, id) WHERE state <> 2 AND dup = 0;
CREATE TABLE IF NOT EXISTS repid_cancels (id TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS repid_workers (
    id TEXT PRIMARY KEY, record TEXT NOT NULL, last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS repid_limit_slots (
    token TEXT PRIMARY KEY, actor TEXT NOT NULL, expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS repid_limit_slots_actor ON repid_limit_slots (actor, expires);
CREATE TABLE IF NOT EXISTS repid_limit_starts (actor TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS repid_limit_starts_actor ON repid_limit_starts (actor, at);
-- job lifecycle events, polled by seq by the subscribers (old rows are pruned).
CREATE TABLE IF NOT EXISTS repid_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS repid_buckets (
    kind TEXT NOT NULL, id TEXT NOT NULL, data BLOB NOT NULL, expires REAL,
    PRIMARY KEY (kind, id)
);
"""

SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


def database_path(dsn: str | os.PathLike[str]) -> str:
    """The file of `dsn`: `sqlite:///relative.db`, `sqlite:////absolute.db` or a plain path.

    `:memory:` is refused: a broker's file must be shared by its connections.
    """
    text = os.fspath(dsn)
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme.lower() != "sqlite":
            raise ConfigurationError(f"expected a sqlite:// URL, got {parts.scheme}://")
        if parts.netloc:
            raise ConfigurationError(
                "a sqlite:// URL has no host: sqlite:///relative.db or sqlite:////absolute.db"
            )
        text = unquote(parts.path)[1:]  # one slash separates the (empty) host from the path
    if not text or text == ":memory:":
        raise ConfigurationError("the SQLite broker needs a file path (not :memory:)")
    return str(Path(text).expanduser().absolute())


class Database:
    """A SQLite connection owned by one thread; `run` batches operations into transactions.

    Args:
        path: the database file (created, with its directory's permission, if missing).
        busy_timeout: seconds one statement waits for another process's write lock.
        operation_timeout: seconds an operation keeps retrying while the file stays locked
            before it fails with `BrokerUnavailableError`.
        synchronous: SQLite's `synchronous` setting (see docs/brokers/sqlite.md).
    """

    def __init__(
        self,
        path: str,
        *,
        busy_timeout: float = 5.0,
        operation_timeout: float = 30.0,
        synchronous: str = "NORMAL",
    ) -> None:
        if synchronous.upper() not in SYNCHRONOUS:
            raise ConfigurationError(f"synchronous must be one of {SYNCHRONOUS}")
        self.path = path
        self.busy_timeout = busy_timeout
        self.operation_timeout = operation_timeout
        self.synchronous = synchronous.upper()
        self._thread: threading.Thread | None = None
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._conn: sqlite3.Connection | None = None
        self._pending: list[tuple[Op[Any], asyncio.Future[Any]]] = []
        self._busy = False
        """A transaction is on the connection's thread; new operations wait for it (and then
        share the next one)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._touched: set[str] = set()
        self.commits = 0
        """Transactions committed by this connection (operations of one loop step share one)."""

    @property
    def is_open(self) -> bool:
        return self._thread is not None

    def _serve(self, jobs: queue.SimpleQueue[Callable[[], None] | None]) -> None:
        """The connection's thread: run the jobs one after another until the None sentinel."""
        while True:
            job = jobs.get()
            if job is None:
                return
            job()

    def _call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run `fn` on the connection's thread; its outcome settles the returned future."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            if fut.done():
                return
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

        def job() -> None:
            try:
                outcome: tuple[bool, Any] = (True, fn())
            except BaseException as exc:
                outcome = (False, exc)
            _post(loop, settle, *outcome)

        self._jobs.put(job)
        return fut

    async def open(self) -> None:
        """Open the file on the connection's thread, set WAL and create the schema."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._jobs = jobs = queue.SimpleQueue[Callable[[], None] | None]()
        thread = threading.Thread(
            target=self._serve, args=(jobs,), name="repid-sqlite", daemon=True
        )
        thread.start()
        self._thread = thread
        try:
            self._conn = await self._call(self._connect)
        except (sqlite3.Error, OSError) as exc:
            self._thread = None
            jobs.put(None)
            raise BrokerUnavailableError(
                f"SQLite database {self.path} is unreachable: {exc}"
            ) from exc
        except BaseException:
            self._thread = None
            jobs.put(None)
            raise

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            deadline = time.monotonic() + self.operation_timeout
            while True:
                try:
                    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                    break
                except sqlite3.OperationalError as exc:
                    if not _locked(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)  # on the connection's own thread
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"journal_mode WAL refused (got {mode})")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT OR IGNORE INTO repid_meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._pending:
            self._flush(thread)
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                await self._call(conn.close)
        finally:
            self._jobs.put(None)
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 5.0)

    def run(self, op: Op[T], *, touches: Iterable[str] = ()) -> asyncio.Future[T]:
        """Run `op` in this event-loop step's transaction; `touches` are the queues whose
        ready messages it may change (their consumers in this process are woken)."""
        loop = asyncio.get_running_loop()
        if self._thread is None:
            raise BrokerUnavailableError(f"SQLite database {self.path} is not open")
        fut: asyncio.Future[T] = loop.create_future()
        self._pending.append((op, fut))
        self._touched.update(touches)
        if not self._busy:
            self._busy = True  # one flush per idle spell: the rest of this step joins it
            loop.call_soon(self._flush)
        return fut

    def _flush(self, thread: threading.Thread | None = None) -> None:
        batch, self._pending = self._pending, []
        touched, self._touched = self._touched, set()
        if not batch:
            self._busy = False
            return
        if (thread or self._thread) is None:
            self._busy = False
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(BrokerUnavailableError("SQLite database closed"))
            return
        loop = asyncio.get_running_loop()
        ops = [op for op, _ in batch]

        def job() -> None:
            try:
                results: list[tuple[bool, Any]] | None = self._transaction(ops)
                error: BaseException | None = None
            except BaseException as exc:
                results, error = None, exc
            _post(loop, self._settle, batch, results, error, touched)

        self._jobs.put(job)

    def _settle(
        self,
        batch: list[tuple[Op[Any], asyncio.Future[Any]]],
        results: list[tuple[bool, Any]] | None,
        exc: BaseException | None,
        touched: set[str],
    ) -> None:
        # What was issued while this transaction ran goes out now, as the next one.
        if self._pending:
            self._flush()
        else:
            self._busy = False
        if results is None:
            error: BaseException = exc or BrokerUnavailableError("SQLite transaction failed")
            if isinstance(exc, sqlite3.Error):
                error = BrokerUnavailableError(f"SQLite database {self.path}: {exc}")
                error.__cause__ = exc
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(error)
            return
        for (_, fut), (ok, value) in zip(batch, results, strict=True):
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
        if touched:
            notify(self.path, touched)

    def _transaction(self, ops: list[Op[Any]]) -> list[tuple[bool, Any]]:
        """Run `ops` in one transaction (on the thread), retrying it while the file is locked."""
        conn = self._conn
        assert conn is not None
        deadline = time.monotonic() + self.operation_timeout
        pause = 0.001
        while True:
            try:
                results = self._attempt(conn, ops)
                self.commits += 1
                return results
            except sqlite3.OperationalError as exc:
                if not _locked(exc) or time.monotonic() > deadline:
                    raise
                logger.debug("SQLite database %s is locked; retrying", self.path)
                time.sleep(pause)  # on the connection's own thread, never the event loop
                pause = min(pause * 2, 0.05)

    @staticmethod
    def _attempt(conn: sqlite3.Connection, ops: list[Op[Any]]) -> list[tuple[bool, Any]]:
        results: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            single = len(ops) == 1
            for op in ops:
                if single:
                    try:
                        results.append((True, op(conn)))
                    except sqlite3.OperationalError as exc:
                        if _locked(exc):
                            raise
                        results.append((False, exc))
                    except Exception as exc:
                        results.append((False, exc))
                    continue
                conn.execute("SAVEPOINT op")
                try:
                    results.append((True, op(conn)))
                except sqlite3.OperationalError as exc:
                    if _locked(exc):
                        raise
                    conn.execute("ROLLBACK TO op")
                    results.append((False, exc))
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    results.append((False, exc))
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results


def _post(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    """Hand `callback(*args)` to `loop` from the connection's thread (dropped if it closed)."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop closed before the operation ended: nobody waits for it
        logger.debug("SQLite operation ended after its event loop closed")


def _locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


# -- in-process wake-ups --------------------------------------------------------------------


class Wakeable(Protocol):
    """A consumer woken when its queue gets ready messages in this process."""

    queue: str

    def poke(self) -> None: ...


_lock = threading.Lock()
_consumers: dict[str, set[tuple[Wakeable, asyncio.AbstractEventLoop]]] = {}


def register(path: str, consumer: Wakeable) -> None:
    with _lock:
        _consumers.setdefault(path, set()).add((consumer, asyncio.get_running_loop()))


def unregister(path: str, consumer: Wakeable) -> None:
    with _lock:
        entries = _consumers.get(path)
        if entries is None:
            return
        for entry in [e for e in entries if e[0] is consumer]:
            entries.discard(entry)
        if not entries:
            del _consumers[path]


def notify(path: str, queues: set[str]) -> None:
    """Wake this process's consumers of `queues` on the file `path` (any event loop)."""
    with _lock:
        targets = [e for e in _consumers.get(path, ()) if e[0].queue in queues]
    if not targets:
        return
    try:
        current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    for consumer, loop in targets:
        if loop is current:
            consumer.poke()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(consumer.poke)
