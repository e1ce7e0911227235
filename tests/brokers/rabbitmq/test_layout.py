"""The RabbitMQ package's layout rules: no import cycle (TYPE_CHECKING imports included), no
import of another broker package or of the worker layer, short modules with short docstrings."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import repid.brokers.rabbitmq

PACKAGE = "repid.brokers.rabbitmq"
HERE = Path(repid.brokers.rabbitmq.__file__).parent
MODULES = {f"{PACKAGE}.{path.stem}": path for path in sorted(HERE.glob("*.py"))}
MODULES[PACKAGE] = MODULES.pop(f"{PACKAGE}.__init__")
FORBIDDEN = ("repid.brokers.memory", "repid.brokers.redis", "repid.brokers.kafka",
             "repid.worker", "repid.job", "repid.cli")  # fmt: skip


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_import_cycle_inside_the_package() -> None:
    graph = {
        name: {other for other in _imports(path) if other in MODULES and other != name}
        for name, path in MODULES.items()
    }
    graph[PACKAGE] = set()  # the package's __init__ only re-exports the broker
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError on a cycle


def test_no_other_broker_and_no_worker_layer() -> None:
    for name, path in MODULES.items():
        bad = {imp for imp in _imports(path) if imp.startswith(FORBIDDEN)}
        assert not bad, f"{name} imports {sorted(bad)}"


def test_modules_are_short_and_say_their_job_briefly() -> None:
    for name, path in MODULES.items():
        lines = path.read_text().count("\n")
        assert lines <= 600, f"{name} has {lines} lines"
        docstring = ast.get_docstring(ast.parse(path.read_text()))
        assert docstring, f"{name} has no module docstring"
        text = [line for line in docstring.splitlines() if line.strip()]
        assert len(text) <= 3, f"{name}'s docstring is an essay"
