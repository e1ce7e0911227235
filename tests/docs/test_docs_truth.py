"""Docs tell the truth (issue 17): no page calls a broker that ships "planned", "following",
"coming", "later" or something it "will use"."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])

_BROKER = r"(?:in-memory|memory|redis|rabbitmq|kafka|nats(?: jetstream)?|postgres(?:ql)?|sqlite)"
_FUTURE = (
    r"\bplanned\b(?! time)|\bfollowing\b(?!\s+(?:the|a|an|this|these|its|their)\b)"
    r"|\bwill (?:use|support|ship|come|be added)\b|\bcoming soon\b|'s later\b"
    r"|\bnot (?:yet )?(?:implemented|supported|available) yet\b"
)
PATTERNS = [
    # "<broker> ... planned" / "planned ... <broker>", within one sentence
    re.compile(rf"\b{_BROKER}\b[^.\n]{{0,120}}?(?:{_FUTURE})", re.IGNORECASE),
    re.compile(rf"(?:{_FUTURE})[^.\n]{{0,60}}?\b{_BROKER}\b", re.IGNORECASE),
]


def future_claims(text: str) -> list[str]:
    """Sentences of `text` that speak of a shipped broker as not there yet."""
    flat = re.sub(r"\s*\n\s*", " ", text)
    found = []
    for pattern in PATTERNS:
        found.extend(match.group(0) for match in pattern.finditer(flat))
    return found


@pytest.mark.parametrize(
    "sentence",
    [
        "in-memory today, with Redis, RabbitMQ and Kafka following",
        "A Kafka broker is planned.",
        "The RabbitMQ broker will use aio-pika.",
        "or Redis's later",
        "NATS JetStream support is coming soon",
    ],
)
def test_the_check_catches_the_sentences_of_issue_17(sentence: str) -> None:
    assert future_claims(sentence), sentence


@pytest.mark.parametrize(
    "sentence",
    [
        "Redis, RabbitMQ, Kafka, NATS JetStream and PostgreSQL, all following the same protocol.",
        "the next run is computed from the previous planned time of the cron job",
        "RabbitMQ 3.10 and later",
    ],
)
def test_the_check_leaves_true_sentences_alone(sentence: str) -> None:
    assert future_claims(sentence) == [], sentence


def test_shipped_brokers_are_all_importable() -> None:
    """The brokers `_BROKER` names as shipped really ship."""
    import repid

    for name in (
        "InMemoryMessageBroker",
        "RedisMessageBroker",
        "RabbitMessageBroker",
        "KafkaMessageBroker",
        "NatsMessageBroker",
        "PostgresMessageBroker",
        "SqliteMessageBroker",
    ):
        assert hasattr(repid, name), name


def test_no_page_says_a_shipped_broker_is_planned() -> None:
    assert len(PAGES) > 5, "no docs pages found"
    offending = {
        str(page.relative_to(ROOT)): claims
        for page in PAGES
        if (claims := future_claims(page.read_text(encoding="utf-8")))
    }
    assert offending == {}, f"docs speak of shipped brokers as future work: {offending}"
