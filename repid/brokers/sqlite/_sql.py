"""The SQLite broker's statements: each function runs on the connection's thread inside a
transaction (`Database.run`), so each one is atomic.

A message is one row of `repid_messages`; its `state` says where it is (0 ready, 1 in flight,
2 dead, 3 delayed) and `at` is its due time (delayed) or lease deadline (in flight). `token`
changes on every claim: a settlement names (seq, token), so one by a stale holder of an earlier
delivery of the same row matches nothing. Ready rows are handed out by `priority`, then `ord`
(enqueue time in ns; rows given back get a negative one, so they come first), then `seq`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence

from repid.errors import QueueNotDeclaredError

logger = logging.getLogger("repid.brokers.sqlite")

READY, IN_FLIGHT, DEAD, DELAYED = 0, 1, 2, 3
CANCEL_TTL = 24 * 3600.0
"""Seconds a cancellation request of a running job is kept (if its worker never clears it)."""

Row = tuple[int, int, bytes, bytes | None, int]
"""A claimed or browsed row: seq, token, envelope, raw bytes, redelivered."""
NewRow = tuple[str, str, str, int, float, bytes]
"""A row to insert: queue, id, topic, priority, due (epoch s, 0 = now), envelope."""


def _ns() -> int:
    return time.time_ns()


def require(conn: sqlite3.Connection, queue: str) -> None:
    """Raise `QueueNotDeclaredError` unless `queue` is declared."""
    if conn.execute("SELECT 1 FROM repid_queues WHERE name = ?", (queue,)).fetchone() is None:
        raise QueueNotDeclaredError(queue)


def declare(conn: sqlite3.Connection, queue: str) -> None:
    conn.execute("INSERT OR IGNORE INTO repid_queues (name) VALUES (?)", (queue,))


def flush(conn: sqlite3.Connection, queue: str) -> None:
    require(conn, queue)
    conn.execute("DELETE FROM repid_messages WHERE queue = ?", (queue,))


def delete(conn: sqlite3.Connection, queue: str) -> None:
    conn.execute("DELETE FROM repid_messages WHERE queue = ?", (queue,))
    conn.execute("DELETE FROM repid_queues WHERE name = ?", (queue,))


def queue_names(conn: sqlite3.Connection) -> list[str]:
    return [name for (name,) in conn.execute("SELECT name FROM repid_queues ORDER BY name")]


def counts(conn: sqlite3.Connection, queue: str) -> dict[str, int]:
    require(conn, queue)
    found = dict(
        conn.execute(
            "SELECT state, COUNT(*) FROM repid_messages WHERE queue = ? GROUP BY state", (queue,)
        ).fetchall()
    )
    return {
        "ready": found.get(READY, 0),
        "delayed": found.get(DELAYED, 0),
        "in_flight": found.get(IN_FLIGHT, 0),
        "dead": found.get(DEAD, 0),
    }


def insert(conn: sqlite3.Connection, rows: Sequence[NewRow], now: float) -> list[bool]:
    """Insert messages (all queues must be declared); False for an id already pending."""
    for queue in {row[0] for row in rows}:
        require(conn, queue)
    added = []
    ns = _ns()
    for queue, id_, topic, priority, due, envelope in rows:
        state = DELAYED if due > now else READY
        cur = conn.execute(
            "INSERT OR IGNORE INTO repid_messages (queue, id, topic, priority, state, at, ord, "
            "envelope) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (queue, id_, topic, priority, state, due, ns, envelope),
        )
        added.append(cur.rowcount == 1)
    return added


def claim(
    conn: sqlite3.Connection,
    queue: str,
    count: int,
    lease: float,
    topics: frozenset[str] | None,
) -> list[Row]:
    """Move due delayed rows to ready, give expired leases back, then lease up to `count`
    ready rows, best first."""
    now = time.time()
    conn.execute(
        "UPDATE repid_messages SET state = 0, ord = ? WHERE queue = ? AND state = 3 AND at <= ?",
        (_ns(), queue, now),
    )
    reclaimed = conn.execute(
        "UPDATE repid_messages SET state = 0, redelivered = 1, ord = ? "
        "WHERE queue = ? AND state = 1 AND at <= ?",
        (-_ns(), queue, now),
    ).rowcount
    if reclaimed:
        logger.warning(
            "%d expired leases in %s: those messages are available again", reclaimed, queue
        )
    topic_filter = ""
    args: list[object] = [now + lease, queue]
    if topics is not None:
        topic_filter = f" AND topic IN ({', '.join('?' * len(topics))})"
        args.extend(sorted(topics))
    args.append(count)
    rows = conn.execute(
        "UPDATE repid_messages SET state = 1, at = ?, token = token + 1 WHERE seq IN "
        "(SELECT seq FROM repid_messages WHERE queue = ? AND state = 0"
        f"{topic_filter} ORDER BY priority, ord, seq LIMIT ?) "
        "RETURNING seq, token, envelope, raw, redelivered, priority, ord",
        args,
    ).fetchall()
    rows.sort(key=lambda row: (row[5], row[6], row[0]))
    return [(seq, token, env, raw, red) for seq, token, env, raw, red, _, _ in rows]


def _forget_cancel(conn: sqlite3.Connection, id_: str) -> None:
    conn.execute("DELETE FROM repid_cancels WHERE id = ?", (id_,))


def ack(conn: sqlite3.Connection, seq: int, token: int, id_: str) -> bool:
    done = (
        conn.execute(
            "DELETE FROM repid_messages WHERE seq = ? AND token = ? AND state = 1", (seq, token)
        ).rowcount
        == 1
    )
    if done:
        _forget_cancel(conn, id_)
    return done


def nack(
    conn: sqlite3.Connection, seq: int, token: int, id_: str, envelope: bytes, raw: bytes | None
) -> bool:
    done = (
        conn.execute(
            "UPDATE repid_messages SET state = 2, at = ?, envelope = ?, raw = ? "
            "WHERE seq = ? AND token = ? AND state = 1",
            (time.time(), envelope, raw, seq, token),
        ).rowcount
        == 1
    )
    if done:
        _forget_cancel(conn, id_)
    return done


def reject(conn: sqlite3.Connection, items: Sequence[tuple[int, int]]) -> int:
    """Give leased rows back to the front of their queue unchanged; how many were still owned."""
    returned = 0
    for seq, token in items:
        returned += conn.execute(
            "UPDATE repid_messages SET state = 0, ord = ? "
            "WHERE seq = ? AND token = ? AND state = 1",
            (-_ns(), seq, token),
        ).rowcount
    return returned


def requeue(conn: sqlite3.Connection, seq: int, token: int, envelope: bytes, due: float) -> bool:
    state = DELAYED if due > time.time() else READY
    return (
        conn.execute(
            "UPDATE repid_messages SET state = ?, at = ?, ord = ?, redelivered = 0, envelope = ? "
            "WHERE seq = ? AND token = ? AND state = 1",
            (state, due, _ns(), envelope, seq, token),
        ).rowcount
        == 1
    )


def renew(conn: sqlite3.Connection, items: Sequence[tuple[int, int]], lease: float) -> None:
    deadline = time.time() + lease
    conn.executemany(
        "UPDATE repid_messages SET at = ? WHERE seq = ? AND token = ? AND state = 1",
        [(deadline, seq, token) for seq, token in items],
    )


def browse(
    conn: sqlite3.Connection, queue: str, state: int, after: int, count: int
) -> list[tuple[int, bytes, bytes | None]]:
    """Dead or delayed rows of `queue` after `seq`, oldest first."""
    require(conn, queue)
    rows: list[tuple[int, bytes, bytes | None]] = conn.execute(
        "SELECT seq, envelope, raw FROM repid_messages WHERE queue = ? AND state = ? AND seq > ? "
        "ORDER BY seq LIMIT ?",
        (queue, state, after, count),
    ).fetchall()
    return rows


def settle_browsed(
    conn: sqlite3.Connection,
    seq: int,
    state: int,
    op: str,
    id_: str,
    envelope: bytes,
    due: float,
) -> bool:
    """ack (delete), nack (delayed to dead) or requeue (back to work) a browsed row."""
    where = "WHERE seq = ? AND state = ?"
    if op == "ack":
        done = conn.execute(f"DELETE FROM repid_messages {where}", (seq, state)).rowcount == 1
        if done and state == DELAYED:
            _forget_cancel(conn, id_)
        return done
    if op == "nack":
        return (
            conn.execute(
                f"UPDATE repid_messages SET state = 2, envelope = ?, at = ? {where}",
                (envelope, time.time(), seq, state),
            ).rowcount
            == 1
        )
    new_state = DELAYED if due > time.time() else READY
    try:
        return (
            conn.execute(
                "UPDATE repid_messages SET state = ?, at = ?, ord = ?, redelivered = 0, "
                f"envelope = ?, raw = NULL {where}",
                (new_state, due, _ns(), envelope, seq, state),
            ).rowcount
            == 1
        )
    except sqlite3.IntegrityError:  # its id is pending again: both run (not a unique enqueue)
        return (
            conn.execute(
                "UPDATE repid_messages SET state = ?, at = ?, ord = ?, redelivered = 0, "
                f"envelope = ?, raw = NULL, dup = 1 {where}",
                (new_state, due, _ns(), envelope, seq, state),
            ).rowcount
            == 1
        )


def cancel(conn: sqlite3.Connection, queue: str, id_: str) -> str | None:
    require(conn, queue)
    removed = conn.execute(
        "DELETE FROM repid_messages WHERE queue = ? AND id = ? AND state IN (0, 3)", (queue, id_)
    ).rowcount
    if removed:
        _forget_cancel(conn, id_)
        return "dequeued"
    running = conn.execute(
        "SELECT 1 FROM repid_messages WHERE queue = ? AND id = ? AND state = 1", (queue, id_)
    ).fetchone()
    if running is None:
        return None
    conn.execute(
        "INSERT OR REPLACE INTO repid_cancels (id, expires) VALUES (?, ?)",
        (id_, time.time() + CANCEL_TTL),
    )
    return "requested"


def cancelled(conn: sqlite3.Connection, ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    now = time.time()
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        found.update(
            id_
            for (id_,) in conn.execute(
                f"SELECT id FROM repid_cancels WHERE expires > ? AND id IN "
                f"({', '.join('?' * len(chunk))})",
                (now, *chunk),
            )
        )
    return found
