"""Reading a provider's stored settings (`providers.config` and the sealed secrets), for the
adapters of every channel: unknown keys, missing values and malformed URLs raise
ProviderConfigError naming the key to fix."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from herald.domain.delivery import ProviderConfigError


def only_known(config: Mapping[str, Any], known: Iterable[str], kind: str) -> None:
    """Refuse settings the provider does not read (a typo must not be silently ignored)."""
    allowed = set(known)
    unknown = set(config) - allowed
    if unknown:
        raise ProviderConfigError(f"{kind}: unknown settings {', '.join(sorted(unknown))}; "
                                  f"known: {', '.join(sorted(allowed)) or 'none'}")


def need(values: Mapping[str, Any], name: str, kind: str) -> Any:
    """A value that must be present (not None, not empty), of any type."""
    value = values.get(name)
    if value in (None, ""):
        raise ProviderConfigError(f"{kind}: {name} is required")
    return value


def required(values: Mapping[str, Any], name: str, kind: str, what: str = "setting") -> str:
    """A non-empty string value."""
    value = values.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ProviderConfigError(f"{kind}: the {what} {name} is required")
    return value.strip()


def optional(values: Mapping[str, Any], name: str, kind: str) -> str | None:
    """A string value, None when absent or empty."""
    value = values.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ProviderConfigError(f"{kind}: {name} must be a string, not {type(value).__name__}")
    return value.strip() or None


def http_url(value: str, name: str, kind: str) -> str:
    """An absolute http(s) URL with a host."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        raise ProviderConfigError(f"{kind}: {name} {value!r} is not a URL") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ProviderConfigError(f"{kind}: {name} {value!r} must be an absolute https:// URL")
    return value
