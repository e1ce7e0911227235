"""Pages read on GitHub show code (issue 27): GitHub does not expand the `--8<--` snippet
includes mkdocs builds from, so each include is followed by a `Source:` link to the example
file it comes from, and that link points at a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
INCLUDE = re.compile(r'^--8<-- "([^":]+)(?::[^"]*)?"\s*$')
SOURCE = re.compile(r"^Source: \[`examples/([^`]+)`\]\(((?:\.\./)*)examples/([^)]+)\)$")


def missing_sources(page: Path) -> list[str]:
    """The includes of `page` with no correct `Source:` link after their code fence."""
    lines = page.read_text().splitlines()
    problems = []
    for number, line in enumerate(lines):
        include = INCLUDE.match(line)
        if include is None:
            continue
        name = include.group(1)
        closing = next(i for i in range(number + 1, len(lines)) if lines[i].startswith("```"))
        following = [text for text in lines[closing + 1 : closing + 4] if text.strip()]
        source = SOURCE.match(following[0]) if following else None
        if source is None or source.group(1) != name or source.group(3) != name:
            problems.append(f"{page.name}:{number + 1}: {name} has no Source: link")
            continue
        target = (page.parent / source.group(2) / "examples" / name).resolve()
        if not target.is_file():
            problems.append(f"{page.name}:{number + 1}: {target} does not exist")
    return problems


def test_the_check_sees_an_include_without_a_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text('``` { .python }\n--8<-- "quickstart.py"\n```\n\nSome text.\n')
    assert missing_sources(page) == ["page.md:2: quickstart.py has no Source: link"]
    page.write_text(
        '``` { .python }\n--8<-- "quickstart.py"\n```\n\n'
        "Source: [`examples/quickstart.py`](examples/quickstart.py)\n"
    )
    assert missing_sources(page) == [
        f"page.md:2: {tmp_path / 'examples' / 'quickstart.py'} does not exist"
    ]


def test_every_snippet_include_is_followed_by_its_source_link() -> None:
    pages = [page for page in DOCS.rglob("*.md") if "examples" not in page.parts]
    assert len(pages) > 10
    includes = sum(
        1 for page in pages for line in page.read_text().splitlines() if INCLUDE.match(line)
    )
    assert includes > 40  # the check looks at the pages that have them
    problems = [problem for page in pages for problem in missing_sources(page)]
    assert problems == []
