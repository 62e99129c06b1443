"""What the push providers (webpush.py, fcm.py, apns.py) share: reading a push message's content
and delivery hints, base64url, and checking stored settings. Pure helpers; no IO.

Delivery hints a push message may carry in `OutboundMessage.metadata` (all optional):
  * "urgency": very-low | low | normal | high (RFC 8030 section 5.3 words). Without it a
    transactional message is "high" and a marketing one "normal". Each provider maps it to its own
    knob: Web Push `Urgency`, FCM `android.priority`, APNs `apns-priority`.
  * "collapse_key": a newer message with the same key replaces an undelivered older one: Web Push
    `Topic` (at most 32 base64url characters, RFC 8030 section 5.4), FCM `android.collapse_key`,
    APNs `apns-collapse-id` (at most 64 bytes).
An unusable hint raises UnsupportedFeature (a bug in what built the message, never dropped).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from herald.domain.delivery import OutboundMessage, ProviderConfigError, PushContent, UnsupportedFeature

Json = dict[str, Any]
Urgency = Literal["very-low", "low", "normal", "high"]
URGENCIES: tuple[Urgency, ...] = ("very-low", "low", "normal", "high")
WEB_PUSH_TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")   # RFC 8030 5.4: URL/filename-safe base64, <= 32


def push_of(message: OutboundMessage, provider: str) -> PushContent:
    """The push content of `message`; UnsupportedFeature when it is not a push message."""
    if message.channel != "push" or message.push is None:
        raise UnsupportedFeature(f"{provider} sends push notifications; message {message.id} is a {message.channel} "
                                 "message without push content")
    return message.push


def urgency_of(message: OutboundMessage) -> Urgency:
    """The message's urgency hint, or the default for its purpose (see the module docstring)."""
    said = message.metadata.get("urgency")
    if said is None:
        return "high" if message.purpose == "transactional" else "normal"
    for urgency in URGENCIES:
        if said == urgency:
            return urgency
    raise UnsupportedFeature(f"message {message.id}: urgency {said!r} is not one of {', '.join(URGENCIES)}")


def apns_priority(urgency: Urgency) -> str:
    """APNs `apns-priority`: 10 delivers at once, 5 as power allows, 1 never wakes the device
    (Apple, "Sending notification requests to APNs", header fields)."""
    return {"high": "10", "normal": "5", "low": "5", "very-low": "1"}[urgency]


def collapse_key_of(message: OutboundMessage) -> str | None:
    key = message.metadata.get("collapse_key")
    if key is not None and not key.strip():
        raise UnsupportedFeature(f"message {message.id}: collapse_key is empty")
    return key


def expiry_time(now: datetime, ttl_seconds: int) -> int:
    """Unix seconds when a push stops being worth delivering; 0 for a TTL of 0 ("now or never",
    APNs' documented meaning of apns-expiration 0)."""
    return 0 if ttl_seconds <= 0 else math.floor(now.timestamp()) + ttl_seconds


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url (RFC 4648 section 5), as Web Push and JWTs write binary values."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Base64url with or without padding; browsers hand out unpadded values, some libraries padded
    ones and a few plain base64 ('+', '/'). ValueError when it is not base64 at all."""
    cleaned = text.strip().replace("+", "-").replace("/", "_").rstrip("=")
    if not re.fullmatch(r"[A-Za-z0-9_-]*", cleaned) or len(cleaned) % 4 == 1:
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


# ---- stored settings -------------------------------------------------------------------------------

def needed_text(values: Mapping[str, Any], name: str, kind: str, what: str) -> str:
    """A required, non-blank text setting or secret; ProviderConfigError saying what it is."""
    value = values.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ProviderConfigError(f"{kind}: `{name}` is missing: {what}")
    return value.strip()


def optional_text(values: Mapping[str, Any], name: str, kind: str) -> str | None:
    value = values.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ProviderConfigError(f"{kind}: `{name}` must be a non-empty string")
    return value.strip()


def base_url_setting(value: str, kind: str) -> str:
    """A provider base URL without its trailing slash; http:// is accepted for local test peers."""
    if not value.startswith(("https://", "http://")):
        raise ProviderConfigError(f"{kind}: base URL {value!r} must start with https://")
    return value.rstrip("/")
