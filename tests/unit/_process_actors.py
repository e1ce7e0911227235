"""Module-level actors for `run_in_process=True` tests: a process pool pickles functions by
reference, so they must live in a module the pool's workers can import.
"""

from __future__ import annotations

import os


def current_pid() -> int:
    """Return the pid of the process running the actor."""
    return os.getpid()


def multiply(a: int, b: int) -> int:
    return a * b
