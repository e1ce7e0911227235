"""SQLite: one file for the whole run (every connection of a test opens it, as separate
processes would), in a temporary directory removed when the run ends."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from repid import Connection, SqliteBucketBroker, SqliteMessageBroker
from tests.conformance.specs import RUN_ID, BrokerSpec

_DIR = Path(tempfile.mkdtemp(prefix=f"repid-sqlite-{RUN_ID}-"))
FILE = _DIR / "conformance.db"
atexit.register(shutil.rmtree, _DIR, True)


def _sqlite(*, lease_duration: float | None = None, args_bucket: bool = False) -> Connection:
    broker = (
        SqliteMessageBroker(FILE)
        if lease_duration is None
        else SqliteMessageBroker(FILE, lease_duration=lease_duration)
    )
    return Connection(
        broker,
        args_bucket_broker=SqliteBucketBroker(FILE) if args_bucket else None,
        results_bucket_broker=SqliteBucketBroker(FILE, use_result_bucket=True),
    )


SPEC = BrokerSpec(
    make=_sqlite,
    capabilities=frozenset(
        {
            "actor_limits",
            "cancellation",
            "event_bus",
            "inspection",
            "lease_renewal",
            "native_dead_letters",
            "native_delays",
            "persistent",
            "shared_state",
            "strict_priorities",
            "worker_registry",
        }
    ),
)
