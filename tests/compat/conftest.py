"""The compat tests that involve a broker run on every broker of the conformance suite, through
its fixtures (`conn`, `new_queue`, ...): 1.6 code must behave the same whichever broker it uses.
"""

from __future__ import annotations

from tests.conformance.conftest import (  # noqa: F401 - fixtures, used by name
    _cleanup,
    broker_name,
    broker_spec,
    conn,
    make_conn,
    new_queue,
)
