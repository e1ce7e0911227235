"""One module per broker in the conformance suite.

Each module in this package defines `SPEC: BrokerSpec`; the suite finds them by listing the
package, so adding a broker is adding a file here (and nothing else in the suite changes). A spec
builds unconnected `Connection`s and names the capabilities the broker must declare.
Network brokers read their address from the environment (`REPID_REDIS_DSN`, `REPID_RABBITMQ_DSN`,
`REPID_KAFKA_BOOTSTRAP`) and default to the local servers `scripts/services.sh` starts.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Protocol
from uuid import uuid4

from repid import Connection

RUN_ID = uuid4().hex[:8]
"""Unique per test run: network brokers prefix their keys/queues with it, so runs never collide."""


class ConnectionFactory(Protocol):
    def __call__(
        self, *, lease_duration: float | None = None, args_bucket: bool = False
    ) -> Connection:
        """An unconnected connection; `lease_duration` only for brokers with `lease_renewal`."""
        ...


@dataclass(frozen=True)
class BrokerSpec:
    """How to build one broker for the suite and what it must declare.

    `capabilities` names the boolean `BrokerCapabilities` fields the broker declares True; the
    suite checks the declaration against it, so a broker cannot silently drop a guarantee.
    """

    make: ConnectionFactory
    capabilities: frozenset[str]


def load_specs() -> dict[str, BrokerSpec]:
    """Every broker spec in this package, by module name."""
    specs: dict[str, BrokerSpec] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if module.SPEC is not None:  # None: an opt-in spec not asked for in this run
            specs[info.name] = module.SPEC
    return specs
