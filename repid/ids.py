"""Job ids: unique across processes, and recognisable as drawn in this process.

Brokers import ids from here, never from `repid.job`, so no broker depends on the producer API.
"""

from __future__ import annotations

import itertools
import os

__all__ = ["generated_here", "new_id"]


class _IdSource:
    """Ids unique across processes: a random 64-bit prefix per process plus a counter.

    Ids must be unique, not secret; this is ~3x cheaper than a random draw per id. Forked
    children draw a new prefix, so worker processes never share a sequence.
    """

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count(int.from_bytes(os.urandom(4)))


_ids = _IdSource()


def new_id() -> str:
    """A new unique 32-hex-digit id (the shape of `uuid4().hex`)."""
    return f"{_ids.prefix}{next(_ids.counter) & 0xFFFFFFFFFFFFFFFF:016x}"


def generated_here(id_: str) -> bool:
    """Ids drawn by `new_id` in this process are unique by construction."""
    return len(id_) == 32 and id_.startswith(_ids.prefix)
