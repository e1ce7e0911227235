"""`repid._redact`: passwords and tokens in URLs are masked, the rest of the URL is kept."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from repid._redact import mask_url, mask_urls


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://user:s3cret@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:s3cret@host", "redis://:***@host"),
        ("amqps://guest:s3cret@host/vhost", "amqps://guest:***@host/vhost"),
        ("kafka://app:s3cret@k1:9092,k2:9092", "kafka://app:***@k1:9092,k2:9092"),
        ("unix://:s3cret@/run/redis.sock?db=2", "unix://:***@/run/redis.sock?db=2"),
        ("app:s3cret@k1:9092", "app:***@k1:9092"),
        # Characters a password should have escaped, but often does not.
        ("redis://u:a/b@host/0", "redis://u:***@host/0"),
        ("redis://u:a@b@host/0", "redis://u:***@host/0"),
        ("redis://u:a?b@host/0", "redis://u:***@host/0"),
        ("redis://u:a#b@host/0", "redis://u:***@host/0"),
        ("redis://u:a/b?c@d@host/0", "redis://u:***@host/0"),
        ("redis://h:1/0?token=s3cret&to=a@b", "redis://h:***@b"),  # hidden, if too much
        # Token-like query parameters; other parameters are kept.
        (
            "redis://h/0?password=s3cret&prefix=app:&access_token=s3cret",
            "redis://h/0?password=***&prefix=app:&access_token=***",
        ),
        (
            "amqp://h/?auth_mechanism=PLAIN&api_key=s3cret",
            "amqp://h/?auth_mechanism=PLAIN&api_key=***",
        ),
        ("memory://?secret=s3cret#frag", "memory://?secret=***#frag"),
        ("redis://h/0?sig=s3cret&signature=s3cret", "redis://h/0?sig=***&signature=***"),
    ],
)
def test_passwords_and_tokens_are_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "amqp://guest@host/",
        "kafka://k1:9092,k2:9092",
        "memory://",
        "redis://h/0?prefix=x&db=1&password=",
        "http://h/x?email=a@b",
        "redis://h/0?prefix=a@b",
        "not a url",
        "",
    ],
)
def test_urls_without_secrets_are_unchanged(url: str) -> None:
    assert mask_url(url) == url


def test_urls_inside_a_message_are_masked() -> None:
    text = (
        "cannot use 'redis://u:s3cret@h/0' nor amqp://g:s3cret@h/?token=s3cret, "
        'nor "kafka://a:s3cret@k:1"'
    )
    assert mask_urls(text) == (
        "cannot use 'redis://u:***@h/0' nor amqp://g:***@h/?token=***, nor \"kafka://a:***@k:1\""
    )


@given(
    user=st.text(alphabet=st.characters(blacklist_characters=":@/?#"), max_size=8),
    password=st.text(alphabet=st.characters(codec="utf-8"), min_size=6, max_size=20),
    host=st.from_regex(r"[a-z][a-z0-9.-]{0,10}(:[0-9]{1,5})?", fullmatch=True),
    path=st.sampled_from(["", "/", "/0", "/vhost", "/0?prefix=x"]),
)
def test_no_password_survives(user: str, password: str, host: str, path: str) -> None:
    masked = mask_url(f"redis://{user}:{password}@{host}{path}")
    assert masked == f"redis://{user}:***@{host}{path}"


# The pattern `mask_urls` used to run as one regex: it finds the same URLs, but was quadratic in
# the length of a run of letters. The one-pass search must find exactly what it found.
_OLD_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://(?:[^\s'\"<>`]*[^\s'\"<>`,.;:)\]])?")


@given(st.text(alphabet="ab1+.-:/@?=&# '\"<>`,;)]\n", max_size=60))
def test_mask_urls_finds_what_the_one_regex_found(text: str) -> None:
    expected = _OLD_URL_IN_TEXT.sub(lambda match: mask_url(match.group(0)), text)
    assert mask_urls(text) == expected


@pytest.mark.timeout(20)
def test_mask_urls_is_linear_in_long_texts() -> None:
    # 2 MB of letters took the old regex hours (0.4 s at 20 kB, four times longer per doubling).
    text = "x" * 2_000_000 + " redis://u:s3cret@h/0 " + "y" * 1_000_000
    masked = mask_urls(text)
    assert "s3cret" not in masked
    assert masked.count("redis://u:***@h/0") == 1
    assert len(masked) == len(text) - len("s3cret") + len("***")
