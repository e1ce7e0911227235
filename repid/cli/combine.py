"""`repid run` with several targets, or packages to scan: their actors in one worker.

`plan_targets` sorts the command line into targets resolved one by one (`resolve_target`) and
packages whose every module is imported (`scan_package`); `combine` merges what they hold:

- routers: the same object found twice counts once; an actor name registered by two of them
  with different functions is an error naming both places (within one target, a list of
  routers keeps its rule: a later actor name wins);
- settings: those of the one `Worker` target, if any (two are an error);
- connection: `--app`/`--broker`, else the one the targets and modules agree on (a `Repid`
  app, or a `Worker` bound to a connection); two different ones are an error naming both.

A single target that is not a package to scan goes through `repid.cli.session.connect`
unchanged. See `docs/cli.md`.
"""

from __future__ import annotations

import argparse
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from repid.cli.session import connect, open_connection, open_explicit
from repid.cli.target import (
    DEFAULT_ATTRS,
    CLIError,
    Target,
    import_module,
    import_object,
    module_app,
    module_routers,
    resolve_target,
    target_of,
)
from repid.connection import Connection
from repid.main import Repid
from repid.router import ActorData, Router
from repid.worker import Worker

__all__ = [
    "Plan",
    "Source",
    "check_targets",
    "combine",
    "connect_targets",
    "package_of_path",
    "plan_targets",
    "scan_package",
]

logger = logging.getLogger("repid.cli")

_SHOWN = 4
"""How many places an error lists before `...`."""


@dataclass
class Plan:
    """What `repid run` was given, sorted."""

    specs: list[str] = field(default_factory=list)
    """Targets resolved as a single target is (`module`, `module:attr`, `module:factory`)."""
    packages: list[str] = field(default_factory=list)
    """Dotted names of the packages (or modules) whose every module is scanned."""

    @property
    def single(self) -> str | None:
        """The one target when there is nothing else: it runs exactly as it always did."""
        if len(self.specs) == 1 and not self.packages:
            return self.specs[0]
        return None


@dataclass
class Source:
    """One place actors come from: a target, or one router of a scanned module."""

    label: str
    """The target as given, or the scanned module's name (for error messages)."""
    routers: list[Router]
    worker: Worker | None = None
    connections: list[Connection] = field(default_factory=list)
    """The connections this place brings (its Repid app, a Worker bound to one)."""


def _is_path(text: str) -> bool:
    return "/" in text or os.sep in text


def package_of_path(path: str) -> str:
    """The dotted name of the package directory `path` (`app/`, `src/app/jobs/`).

    The directory's parents that are packages (have an `__init__.py`) are part of the name; the
    first one that is not is put on `sys.path` (as pytest does), so the package imports.
    """
    directory = Path(path).resolve()
    if not directory.is_dir():
        raise CLIError(f"{path!r} is not a directory: expected a package directory or name")
    parts = [directory.name]
    root = directory.parent
    while (root / "__init__.py").is_file() and root.parent != root:
        parts.insert(0, root.name)
        root = root.parent
    name = ".".join(parts)
    if not all(part.isidentifier() for part in parts):
        raise CLIError(f"{path!r}: {name!r} is not an importable package name")
    if not any(Path(entry or os.getcwd()).resolve() == root for entry in sys.path):
        sys.path.insert(0, str(root))
    return name


def _scannable(name: str) -> bool:
    """Whether a bare `name` target is a package to scan: one whose `__init__` holds none of
    `worker`, `router`, `routers`, `app`, or only a Repid app and no Router (the two cases a
    single target used to refuse)."""
    module = import_module(name)
    if not hasattr(module, "__path__"):
        return False
    present = [getattr(module, attr) for attr in DEFAULT_ATTRS if hasattr(module, attr)]
    if not present:
        return True
    found = present[0]
    return isinstance(found, Repid) and not module_routers(module)


def plan_targets(targets: Sequence[str], scans: Sequence[str]) -> Plan:
    """Sort the positional targets and the `--scan` packages (a path names a package)."""
    plan = Plan()
    for text in targets:
        if _is_path(text):
            plan.packages.append(package_of_path(text))
        elif ":" not in text and _scannable(text):
            plan.packages.append(text)
        else:
            plan.specs.append(text)
    for text in scans:
        plan.packages.append(package_of_path(text) if _is_path(text) else text)
    return plan


def scan_package(name: str) -> list[ModuleType]:
    """`name` and every module below it, imported (`__main__` modules are skipped: importing
    one runs a program). A module that fails to import is an error naming it."""
    try:
        root = import_module(name)
        modules = [root]
        path = getattr(root, "__path__", None)
        if path is not None:
            modules.extend(
                import_module(info.name)  # imported as found: walk_packages then walks it
                for info in pkgutil.walk_packages(path, root.__name__ + ".")
                if info.name.rpartition(".")[2] != "__main__"
            )
    except CLIError as exc:
        raise CLIError(f"scanning {name!r}: {exc}") from exc
    return modules


def _module_sources(module: ModuleType) -> list[Source]:
    """One source per Router (or Worker) at the top level of a scanned module."""
    values = list(vars(module).values())
    connections = [value.connection for value in values if isinstance(value, Repid)]
    connections += [
        value.bound_connection
        for value in values
        if isinstance(value, Worker) and value.bound_connection is not None
    ]
    sources = [Source(module.__name__, [router]) for router in module_routers(module)]
    if connections:  # a module with an app and no router still brings its connection
        sources.append(Source(module.__name__, [], None, connections))
    return sources


def _scan_sources(package: str) -> list[Source]:
    modules = scan_package(package)
    sources = [source for module in modules for source in _module_sources(module)]
    logger.info(
        "scanned %r: %d module(s), %d router(s)",
        package,
        len(modules),
        sum(1 for source in sources if source.routers),
    )
    return sources


def _target_source(spec: str, module: ModuleType, target: Target) -> Source:
    if target.connection is not None:
        connections = [target.connection]
    else:
        app = module_app(module)
        connections = [] if app is None else [app.connection]
    return Source(spec, target.routers, target.worker, connections)


def _function(actor: ActorData) -> str:
    fn: Any = actor.fn
    qualname = getattr(fn, "__qualname__", type(fn).__qualname__)
    return f"{getattr(fn, '__module__', '?')}.{qualname}"


def merge_actors(sources: Sequence[Source]) -> dict[str, ActorData]:
    """Every actor of the sources, by name; the same name with different functions in two
    places is an error."""
    actors: dict[str, ActorData] = {}
    owners: dict[str, str] = {}
    seen: list[Router] = []
    for source in sources:
        own: dict[str, ActorData] = {}
        for router in source.routers:
            if not any(router is known for known in seen):
                seen.append(router)
                own.update(router.actors)
        for name, actor in own.items():
            known_actor = actors.get(name)
            if known_actor is None:
                actors[name] = actor
                owners[name] = source.label
            elif known_actor is not actor and known_actor.fn is not actor.fn:
                raise CLIError(
                    f"actor {name!r} is registered twice with different functions: "
                    f"in {owners[name]!r} ({_function(known_actor)}) and in {source.label!r} "
                    f"({_function(actor)}); rename one (@router.actor(name=...))"
                )
    return actors


def _listed(labels: Sequence[str]) -> str:
    shown = ", ".join(map(repr, labels[:_SHOWN]))
    return shown + (", ..." if len(labels) > _SHOWN else "")


def pick_worker(sources: Sequence[Source]) -> Worker | None:
    """The `Worker` target whose settings apply (one at most)."""
    workers: list[tuple[Worker, str]] = []
    for source in sources:
        worker = source.worker
        if worker is not None and not any(worker is w for w, _ in workers):
            workers.append((worker, source.label))
    if len(workers) > 1:
        raise CLIError(
            f"several Worker targets ({_listed([label for _, label in workers])}): a worker "
            "has one set of settings; name one Worker and the routers of the others"
        )
    return workers[0][0] if workers else None


def agreed_connection(sources: Sequence[Source]) -> Connection | None:
    """The one connection the sources bring (None: none); two different ones are an error."""
    found: list[tuple[Connection, str]] = []
    for source in sources:
        for connection in source.connections:
            if not any(connection is c for c, _ in found):
                found.append((connection, source.label))
    if len(found) > 1:
        (_, first), (_, second) = found[:2]
        raise CLIError(
            f"{first!r} and {second!r} define different connections (Repid apps or Workers "
            "bound to one) for the same worker: pass --app MODULE:APP or --broker URL to "
            "choose one"
        )
    return found[0][0] if found else None


def combine(
    sources: Sequence[Source], explicit: Connection | None, given: Sequence[str]
) -> tuple[Target, Connection]:
    """One target with the actors, settings and connection of every source (`given`: the
    targets and packages, for the error when none has an actor)."""
    actors = merge_actors(sources)
    if not actors:
        raise CLIError(
            f"no actors found in {_listed(given)}: no Router at the top level of its modules"
        )
    worker = pick_worker(sources)
    connection = explicit if explicit is not None else agreed_connection(sources)
    if connection is None:
        try:
            connection = Repid.get_magic_connection()
        except ValueError:
            raise CLIError(
                "no connection: pass --app module:app or --broker URL, or define one Repid app "
                "in one of the targets' modules"
            ) from None
    merged = Router()
    merged.actors.update(actors)
    return Target([merged], worker, connection), connection


async def connect_targets(args: argparse.Namespace) -> tuple[Target, Connection]:
    """`connect` for `repid run`: every target and scanned package, combined and connected."""
    plan = plan_targets(args.target, args.scan or [])
    if plan.single is not None:
        return await connect(argparse.Namespace(**{**vars(args), "target": plan.single}))
    explicit, open_module_app = await open_explicit(args)
    sources: list[Source] = []
    for spec in plan.specs:
        module, target = await resolve_target(spec, open_module_app)
        sources.append(_target_source(spec, module, target))
    for package in plan.packages:
        sources.extend(_scan_sources(package))
    combined, connection = combine(sources, explicit, [*plan.specs, *plan.packages])
    await open_connection(connection)
    Repid.set_magic_connection(connection)
    return combined, connection


def check_targets(args: argparse.Namespace, *, explicit: bool) -> None:
    """What can be checked before worker processes start: imports, actor names, settings and
    (without `--app`/`--broker`) connections. Factories are not called (their children do)."""
    plan = plan_targets(args.target, args.scan or [])
    if plan.single is not None:
        import_object(plan.single)
        return
    sources: list[Source] = []
    for spec in plan.specs:
        module, obj = import_object(spec)
        if not (callable(obj) and not isinstance(obj, Router | Repid | type)):
            sources.append(_target_source(spec, module, target_of(spec, module, obj)))
    for package in plan.packages:
        sources.extend(_scan_sources(package))
    merge_actors(sources)
    pick_worker(sources)
    if not explicit:
        agreed_connection(sources)
