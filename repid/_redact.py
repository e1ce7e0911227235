"""Hide credentials in URLs before they reach an error message, a log line or a repr.

`mask_url` masks one URL (its password and token-like query values); `mask_urls` masks every
URL found inside a longer text, such as a client library's exception message.
"""

from __future__ import annotations

import re

__all__ = ["MASK", "mask_url", "mask_urls"]

MASK = "***"
"""What a hidden value is replaced with."""

_SENSITIVE_PARAM = re.compile(
    r"pass|pwd|token|secret|key|credential|signature|^sig$|session", re.IGNORECASE
)
"""Query parameter names whose values are hidden (password=, access_token=, api_key=, ...)."""

_SCHEME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+.-")
"""Characters of a URL scheme (RFC 3986): a letter, then letters, digits, `+`, `.` or `-`."""

_URL_TAIL = re.compile(r"(?:[^\s'\"<>`]*[^\s'\"<>`,.;:)\]])?")
"""What follows `://` in a URL inside free text: it ends at whitespace or a quote (as in
`repr()` output), and punctuation that ends a sentence is not part of it."""


def mask_url(url: str) -> str:
    """`url` with its password and token-like query parameter values replaced by `***`.

    `redis://user:secret@host:6379/0?token=abc&prefix=x` becomes
    `redis://user:***@host:6379/0?token=***&prefix=x`. The user name, hosts, path and other
    parameters are kept as written, so the result still says which server was meant. Works on
    anything: a string that is not a URL comes back unchanged (or with its `user:password@`
    part masked), and it never raises.

    Args:
        url: A URL, or a `user:password@host` address without a scheme.

    Returns:
        The masked URL.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    # The user info ends at the last "@": a password with an unescaped "/", "@", "?" or "#" in
    # it is still hidden. When that "@" is in what looks like the query, it ends the user info
    # only if a "user:" comes before any "/", "?" or "#"; otherwise the last "@" before the
    # query does. Hiding too much (a query value with "@" in it) beats leaking a password.
    head_end = min((i for i in (rest.find("?"), rest.find("#")) if i != -1), default=len(rest))
    at = rest.rfind("@")
    if at > head_end:
        user_end = rest.find(":")
        first_delimiter = min((i for i in map(rest.find, "/?#") if i != -1), default=len(rest))
        if user_end == -1 or user_end > first_delimiter:
            at = rest.rfind("@", 0, head_end)
    userinfo = ""
    if at != -1:
        user, colon, _password = rest[:at].partition(":")
        userinfo = f"{user}:{MASK}@" if colon else f"{user}@"
        rest = rest[at + 1 :]
    authority_end = min((i for i in map(rest.find, "/?#") if i != -1), default=len(rest))
    authority, tail = userinfo + rest[:authority_end], rest[authority_end:]
    path_and_query, hash_sign, fragment = tail.partition("#")
    path, question_mark, query = path_and_query.partition("?")
    if query:
        query = "&".join(_mask_param(pair) for pair in query.split("&"))
    masked = f"{authority}{path}{question_mark}{query}{hash_sign}{fragment}"
    return f"{scheme}{separator}{masked}"


def _mask_param(pair: str) -> str:
    name, equals, value = pair.partition("=")
    if equals and value and _SENSITIVE_PARAM.search(name):
        return f"{name}={MASK}"
    return pair


def mask_urls(text: str) -> str:
    """`text` with every `scheme://...` URL in it masked by `mask_url`.

    For messages that were not written by repid (a client library's exception text) and may
    quote the URL they were given.
    """
    # Found from each "://" outwards, not by one regex scanning for a scheme at every letter:
    # that regex was quadratic in the length of a run of letters (seconds for a 50 kB error
    # text). This finds exactly the URLs `[A-Za-z][A-Za-z0-9+.-]*://` + `_URL_TAIL` matches,
    # in one pass.
    separator = text.find("://")
    if separator == -1:
        return text
    parts: list[str] = []
    done = 0  # text[:done] is in `parts` already
    while separator != -1:
        start = separator
        while start > done and text[start - 1] in _SCHEME_CHARS:
            start -= 1
        while start < separator and not ("A" <= text[start] <= "Z" or "a" <= text[start] <= "z"):
            start += 1  # a scheme starts with a letter
        if start == separator:  # no scheme before this "://"
            separator = text.find("://", separator + 1)
            continue
        tail = _URL_TAIL.match(text, separator + 3)
        end = tail.end() if tail is not None else separator + 3
        parts.append(text[done:start])
        parts.append(mask_url(text[start:end]))
        done = end
        separator = text.find("://", end)
    parts.append(text[done:])
    return "".join(parts)
