"""Dashboard safety: token or HTTP basic authentication (constant-time compares) and CSRF.

CSRF is the double-submit cookie: a random token in a `SameSite=Strict` cookie that every form
posts back; a POST whose field does not equal the cookie is refused.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "AUTH_COOKIE",
    "CSRF_COOKIE",
    "Auth",
    "BasicAuth",
    "TokenAuth",
    "auth_from_env",
    "csrf_ok",
    "new_csrf_token",
]

CSRF_COOKIE = "repid_csrf"
AUTH_COOKIE = "repid_token"


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True)
class TokenAuth:
    """A bearer token: `Authorization: Bearer <token>`, or the cookie the login form sets."""

    token: str = field(repr=False)

    def allows(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
        """Whether the request carries the token (header or login cookie)."""
        header = headers.get("authorization", "")
        if header[:7].lower() == "bearer " and _same(header[7:].strip(), self.token):
            return True
        return _same(cookies.get(AUTH_COOKIE, ""), self.token)

    def check_login(self, given: str) -> bool:
        """Whether the token typed into the login form is right."""
        return _same(given, self.token)


@dataclass(frozen=True)
class BasicAuth:
    """HTTP basic authentication with one user name and password."""

    user: str
    password: str = field(repr=False)

    def allows(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
        """Whether the request's `Authorization: Basic` header names the user and password."""
        header = headers.get("authorization", "")
        if header[:6].lower() != "basic ":
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, _, password = decoded.partition(":")
        # both compares run, so the time does not tell which part was wrong
        return _same(user, self.user) & _same(password, self.password)


Auth = TokenAuth | BasicAuth


def auth_from_env(environ: Mapping[str, str] | None = None) -> Auth | None:
    """`REPID_DASHBOARD_TOKEN`, else `REPID_DASHBOARD_USER`/`REPID_DASHBOARD_PASSWORD`, else None.

    Raises:
        ValueError: only one of the user and the password is set.
    """
    env = os.environ if environ is None else environ
    token = env.get("REPID_DASHBOARD_TOKEN")
    if token:
        return TokenAuth(token)
    user, password = env.get("REPID_DASHBOARD_USER"), env.get("REPID_DASHBOARD_PASSWORD")
    if user and password:
        return BasicAuth(user, password)
    if user or password:
        raise ValueError("set both REPID_DASHBOARD_USER and REPID_DASHBOARD_PASSWORD, or neither")
    return None


def new_csrf_token() -> str:
    """A fresh random CSRF token."""
    return secrets.token_urlsafe(24)


def csrf_ok(cookie: str | None, submitted: str | None) -> bool:
    """Whether a POST's CSRF field matches its cookie (both present)."""
    if not cookie or not submitted:
        return False
    return _same(cookie, submitted)
