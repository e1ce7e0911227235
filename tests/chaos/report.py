"""Render the chaos suite's results (JSON lines from `record_result`) into docs.

Usage: `python -m tests.chaos.report RESULTS [--markdown PAGE] [--json FILE]` (scripts/chaos.sh:
docs/chaos.md and docs/chaos-results.json).

The JSON file gets every scenario-by-broker entry with its figures and test outcome; the
markdown page gets its results section (between the `chaos-results` markers) replaced with a
summary matrix and one table per scenario.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.chaos._harness import BROKERS, ROOT

START = "<!-- chaos-results:start -->"
END = "<!-- chaos-results:end -->"

TITLES = {
    "C1": "random SIGKILLs of workers",
    "C2": "broker restarted mid-run",
    "C3": "connections dropped (TCP proxy)",
    "C4": "SIGTERM with jobs running",
    "C6": "deferred jobs across a worker restart",
    "C7": "actor longer than the lease / window",
    "C8": "poison job",
}

COLUMNS = {
    "C1": [
        "enqueued",
        "workers",
        "kills",
        "lost",
        "duplicates",
        "in_flight_at_kills",
        "unsettled_at_kills",
        "completed_twice",
        "survivors_uncommitted",
        "redelivery_p50_s",
        "redelivery_p99_s",
        "redelivery_max_s",
    ],
    "C4": [
        "enqueued",
        "running_at_sigterm",
        "finished_in_grace",
        "returned_to_queue",
        "attempts_counted",
        "lost",
        "completed_twice",
        "exit_after_sigterm_max_s",
    ],
    "C7": ["enqueued", "window_s", "actor_s", "longest_run_s", "runs", "duplicates", "lost"],
    "C8": [
        "enqueued",
        "poison_jobs",
        "retries",
        "poison_runs",
        "dead_lettered",
        "lost",
        "duplicates",
        "first_to_last_attempt_p50_s",
    ],
}
"""Figures shown per scenario (others: every figure recorded, in recorded order)."""

SUMMARY = {
    "C1": lambda f: (
        f"lost {f['lost']}, dup {f['duplicates']} ≤ {f['in_flight_at_kills']}, "
        f"p99 {f['redelivery_p99_s']} s"
    ),
    "C4": lambda f: (
        f"lost {f['lost']}, {f['finished_in_grace']} finished in grace, "
        f"{f['returned_to_queue']} returned, {f['attempts_counted']} attempts counted"
    ),
    "C7": lambda f: f"lost {f['lost']}, {f['runs']} runs of {f['enqueued']} jobs",
    "C8": lambda f: f"lost {f['lost']}, {f['dead_lettered']} dead after {f['retries']} retries",
}


def load(path: Path) -> list[dict[str, Any]]:
    """Latest entry per (scenario, broker, size), each with the outcome of its test."""
    outcomes: dict[str, str] = {}
    entries: dict[tuple[str, str, str], dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("kind") == "outcome":
            outcomes[record["test"]] = record["outcome"]
        elif "scenario" in record:
            entries[(record["scenario"], record["broker"], record["size"])] = record
    # A test that failed before recording figures still shows, with its outcome.
    for test in outcomes:
        match = re.search(r"::test_(c\d+)_\w*\[(\w+)\]", test)
        if match is None or any(e.get("test") == test for e in entries.values()):
            continue
        scenario, broker = match.group(1).upper(), match.group(2)
        if not any(k[:2] == (scenario, broker) for k in entries):
            entries[(scenario, broker, "?")] = {
                "scenario": scenario,
                "broker": broker,
                "size": "?",
                "figures": {},
                "note": "no figures: the test failed before recording them",
                "test": test,
            }
    result = []
    for key in sorted(entries, key=lambda k: (k[0], BROKERS.index(k[1]) if k[1] in BROKERS else 9)):
        entry = dict(entries[key])
        entry["outcome"] = outcomes.get(entry.get("test", ""), "unknown")
        result.append(entry)
    return result


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _summary(entry: Mapping[str, Any]) -> str:
    figures = entry["figures"]
    if not figures:
        return f"**{entry['outcome'].upper()}** (no figures)"
    try:
        text = SUMMARY[entry["scenario"]](figures)
    except KeyError:
        text = f"lost {figures.get('lost', '?')}"
    mark = "pass" if entry["outcome"] == "passed" else f"**{entry['outcome'].upper()}**"
    return f"{mark}: {text}"


def markdown(entries: Sequence[Mapping[str, Any]], meta: Mapping[str, str]) -> str:
    """The results section: a scenario-by-broker matrix, then one table per scenario."""
    lines = [
        f"Run {meta['date']} on commit `{meta['commit']}` ({meta['machine']}), "
        f"sizes: {meta['sizes']}. Generated by `scripts/chaos.sh`; raw figures in "
        "[chaos-results.json](chaos-results.json).",
        "",
    ]
    scenarios = sorted({e["scenario"] for e in entries})
    brokers = [b for b in BROKERS if any(e["broker"] == b for e in entries)]
    rows = []
    for scenario in scenarios:
        row = [f"{scenario}: {TITLES.get(scenario, '')}"]
        for broker in brokers:
            found = [e for e in entries if e["scenario"] == scenario and e["broker"] == broker]
            row.append("<br>".join(_summary(e) for e in found) or "-")
        rows.append(row)
    lines += _table(["Scenario", *brokers], rows)
    lines += ["", "`-`: no result in this run (not run, or the run was interrupted)."]
    for scenario in scenarios:
        group = [e for e in entries if e["scenario"] == scenario]
        columns = COLUMNS.get(scenario) or list(
            dict.fromkeys(k for e in group for k in e["figures"])
        )
        lines += ["", f"### {scenario}: {TITLES.get(scenario, '')}", ""]
        rows = [
            [e["broker"], e["size"], e["outcome"], *(_cell(e["figures"].get(c)) for c in columns)]
            for e in group
        ]
        lines += _table(["broker", "size", "test", *columns], rows)
        notes = [f"- {e['broker']}: {e['note']}" for e in group if e.get("note")]
        if notes:
            lines += ["", *notes]
    return "\n".join(lines) + "\n"


def _meta(entries: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    dates = sorted(str(e.get("at", "")) for e in entries)
    return {
        "date": dates[-1] if dates else "never",
        "commit": commit,
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "sizes": ", ".join(sorted({str(e["size"]) for e in entries} - {"?"})) or "none",
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="JSON lines written by the chaos tests")
    parser.add_argument("--markdown", type=Path, help="page whose results section is replaced")
    parser.add_argument("--json", type=Path, help="where to write every entry as JSON")
    args = parser.parse_args(argv)
    entries = load(args.results)
    meta = _meta(entries)
    if args.json:
        args.json.write_text(json.dumps({"run": meta, "results": entries}, indent=2) + "\n")
    section = markdown(entries, meta)
    if args.markdown:
        page = args.markdown.read_text()
        if START not in page or END not in page:
            print(f"{args.markdown} has no {START} ... {END} section", file=sys.stderr)
            return 1
        head, rest = page.split(START, 1)
        _, tail = rest.split(END, 1)
        args.markdown.write_text(f"{head}{START}\n{section}{END}{tail}")
    else:
        sys.stdout.write(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
