"""The Kafka package's layout rules (issue 15), read from its source: no import cycle between
its modules (TYPE_CHECKING imports included), no import of another broker package or of the
worker/job/CLI layers, and aiokafka below its public API only from `_compat.py`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "repid" / "brokers" / "kafka"
NAME = "repid.brokers.kafka"
PUBLIC_AIOKAFKA = {
    "aiokafka",
    "aiokafka.abc",
    "aiokafka.admin",
    "aiokafka.errors",
    "aiokafka.structs",
}
FORBIDDEN = (
    "repid.brokers.memory",
    "repid.brokers.redis",
    "repid.brokers.rabbitmq",
    "repid.brokers.in_memory",
    "repid.worker",
    "repid.job",
    "repid.cli",
)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            # `from repid.brokers.kafka import records` imports the module `records`
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _modules() -> dict[str, set[str]]:
    return {
        f"{NAME}.{p.stem}" if p.stem != "__init__" else NAME: _imports(p)
        for p in sorted(PACKAGE.glob("*.py"))
    }


def test_the_modules_of_the_package_import_each_other_one_way() -> None:
    modules = _modules()
    graph = {
        m: {i for i in imports if i in modules and i != m and i != NAME}
        for m, imports in modules.items()
    }
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                pytest.fail(f"import cycle: {' -> '.join([*path, module, target])}")
            if target not in state:
                visit(target, [*path, module])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [])


def test_no_other_broker_package_nor_the_worker_layers() -> None:
    for module, imports in _modules().items():
        bad = sorted(i for i in imports if i.startswith(FORBIDDEN))
        assert not bad, f"{module} imports {bad}"


def test_aiokafka_internals_only_in_compat() -> None:
    for module, imports in _modules().items():
        if module.endswith("._compat"):
            continue
        private = sorted(
            i
            for i in imports
            if i.split(".")[0] == "aiokafka" and _aiokafka_module(i) not in PUBLIC_AIOKAFKA
        )
        assert not private, f"{module} imports aiokafka internals {private}"


def _aiokafka_module(name: str) -> str:
    """`aiokafka.admin.NewTopic` -> `aiokafka.admin`; a submodule stays itself."""
    parts = name.split(".")
    return ".".join(p for p in parts if p.islower() or p == parts[0])


def test_no_module_is_much_longer_than_600_lines() -> None:
    long = {p.name: n for p in PACKAGE.glob("*.py") if (n := len(p.read_text().splitlines())) > 620}
    assert not long


def test_the_kafka_extra_pins_the_aiokafka_versions_the_fast_path_was_tested_with() -> None:
    import tomllib

    from repid.brokers.kafka._compat import TESTED_AIOKAFKA

    pyproject = tomllib.loads((PACKAGE.parents[2] / "pyproject.toml").read_text())
    (requirement,) = pyproject["project"]["optional-dependencies"]["kafka"]
    pinned = {v.strip() for v in requirement.removeprefix("aiokafka==").split(",")}
    assert requirement.startswith("aiokafka=="), "pin the versions the tests ran"
    assert pinned == set(TESTED_AIOKAFKA)
