"""The Kafka broker's `bootstrap_servers`: `host:port` entries only. An entry with credentials
or a scheme in it is refused, masked, rather than taken for a host name and echoed in errors."""

from __future__ import annotations

from repid._redact import mask_url
from repid.errors import ConfigurationError

__all__ = ["check_bootstrap_servers"]


def check_bootstrap_servers(servers: str | list[str]) -> str | list[str]:
    """Return `servers` unchanged if every entry is `host[:port]`.

    Raises:
        ConfigurationError: an entry holds `user:password@` or `scheme://` (the message shows
            it with the password masked and says where credentials go instead).
    """
    entries = servers.split(",") if isinstance(servers, str) else list(servers)
    for entry in entries:
        if not isinstance(entry, str):
            raise ConfigurationError(
                f"bootstrap_servers entries must be strings, got {type(entry).__name__}"
            )
        if "@" in entry or "://" in entry:
            raise ConfigurationError(
                f"bootstrap_servers takes host:port entries, got {mask_url(entry.strip())!r}: "
                "pass credentials in client_options (security_protocol, sasl_mechanism, "
                "sasl_plain_username, sasl_plain_password)"
            )
    return servers
