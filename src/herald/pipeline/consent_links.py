"""Signed, expiring links to the hosted consent pages: the double opt-in confirmation
(`{base}/c/{token}`) and a contact's preference centre (`{base}/p/{token}`). Stdlib only.

A token is url-safe base64 (no padding) of

    version (1 byte) | kind (1 byte: c = confirm, p = preferences) | expires (8 bytes, big-endian
    Unix seconds) | fields, each as length (1 byte) + UTF-8 | HMAC-SHA256(key, everything before)[:16]

Fields of a confirmation: contact id, channel, purpose, store id ("" for all stores), wording
version ("" for none), and the time of the pending record it confirms (microseconds since the
epoch, decimal), so a link only ever confirms the very request it was sent for. Fields of a
preference link: the contact id.

The kind is inside the MAC, so a preference token cannot be replayed as a confirmation. The MAC is
checked (constant time) before anything else is read; only a token we signed can be reported as
expired (`ExpiredToken`), anything else is a `BadToken`. `previous_keys` still verify but never sign
(key rotation).
"""

from __future__ import annotations

import base64
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from herald.pipeline.tracking import MAC_BYTES, decode_token, mac
from herald.pipeline.tracking import BadToken as BadToken  # re-exported: the pages catch it from here

CONFIRMATION_TTL: Final = timedelta(days=7)
PREFERENCES_TTL: Final = timedelta(days=180)   # links in mail read months later keep working

_VERSION: Final = 1
_MAX_FIELD_BYTES: Final = 255          # one length byte
_MAX_TOKEN_CHARS: Final = 2_000
_CONFIRM: Final = b"c"
_PREFERENCES: Final = b"p"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ExpiredToken(BadToken):
    """A token we signed whose time is up."""


@dataclass(frozen=True, slots=True)
class Confirmation:
    """What a double opt-in link confirms: the pending record of (contact, channel, purpose, store)
    recorded at `pending_since`."""

    contact_id: str
    channel: str
    purpose: str
    store_id: str | None
    wording_version: str | None
    pending_since: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class PreferenceAccess:
    contact_id: str
    expires_at: datetime


class ConsentLinks:
    """Makes and verifies the consent links of one Herald instance."""

    def __init__(self, base_url: str, key: bytes, *, previous_keys: Sequence[bytes] = ()) -> None:
        base = base_url.rstrip("/")
        if not re.fullmatch(r"https?://[^\s/?#]+(?:/[^\s?#]*)?", base):
            raise ValueError("consent links base URL must be an absolute http(s) URL")
        if len(key) < 16:
            raise ValueError("consent links key must be at least 16 bytes")
        self.base_url = base
        self._key = key
        self._verify_keys = (key, *previous_keys)

    # -- making --------------------------------------------------------------------------------

    def confirmation_url(self, confirmation: Confirmation) -> str:
        fields = (confirmation.contact_id, confirmation.channel, confirmation.purpose, confirmation.store_id or "",
                  confirmation.wording_version or "", str(_micros(confirmation.pending_since)))
        return f"{self.base_url}/c/{self._token(_CONFIRM, confirmation.expires_at, fields)}"

    def preferences_url(self, contact_id: str, now: datetime, ttl: timedelta = PREFERENCES_TTL) -> str:
        return f"{self.base_url}/p/{self._token(_PREFERENCES, now + ttl, (contact_id,))}"

    # -- verifying -----------------------------------------------------------------------------

    def verify_confirmation(self, token: str, now: datetime) -> Confirmation:
        """Raises BadToken (not ours) or ExpiredToken (ours, past its time)."""
        expires_at, fields = self._open(token, _CONFIRM, now, count=6)
        contact_id, channel, purpose, store_id, wording, since = fields
        if not contact_id or not channel or not purpose or not since.isdigit():
            raise BadToken("malformed token")
        return Confirmation(contact_id, channel, purpose, store_id or None, wording or None, _from_micros(int(since)),
                            expires_at)

    def verify_preferences(self, token: str, now: datetime) -> PreferenceAccess:
        """Raises BadToken (not ours) or ExpiredToken (ours, past its time)."""
        expires_at, (contact_id,) = self._open(token, _PREFERENCES, now, count=1)
        if not contact_id:
            raise BadToken("malformed token")
        return PreferenceAccess(contact_id, expires_at)

    # -- the format ----------------------------------------------------------------------------

    def _token(self, kind: bytes, expires_at: datetime, fields: Sequence[str]) -> str:
        if expires_at.tzinfo is None:
            raise ValueError("expires_at must be an aware datetime")
        payload = bytearray((_VERSION,)) + kind + int(expires_at.timestamp()).to_bytes(8, "big", signed=True)
        for value in fields:
            raw = value.encode()
            if len(raw) > _MAX_FIELD_BYTES:
                raise ValueError(f"a consent link field is longer than {_MAX_FIELD_BYTES} bytes")
            payload += bytes((len(raw),)) + raw
        sealed = bytes(payload) + mac(self._key, bytes(payload))
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def _open(self, token: str, kind: bytes, now: datetime, *, count: int) -> tuple[datetime, list[str]]:
        raw = decode_token(token, max_chars=_MAX_TOKEN_CHARS, min_payload=10)
        payload, given = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if not any(hmac.compare_digest(given, mac(key, payload)) for key in self._verify_keys):
            raise BadToken("signature mismatch")
        if payload[0] != _VERSION or payload[1:2] != kind:
            raise BadToken("unknown token version or kind")
        expires_at = _EPOCH + timedelta(seconds=int.from_bytes(payload[2:10], "big", signed=True))
        fields = _fields(payload[10:])
        if len(fields) != count:
            raise BadToken("malformed token")
        if now >= expires_at:
            raise ExpiredToken("this link has expired")
        return expires_at, fields


def _fields(data: bytes) -> list[str]:
    fields: list[str] = []
    at = 0
    while at < len(data):
        end = at + 1 + data[at]
        if end > len(data):
            raise BadToken("malformed token")
        try:
            fields.append(data[at + 1:end].decode())
        except UnicodeDecodeError as err:
            raise BadToken("malformed token") from err
        at = end
    return fields


def _micros(at: datetime) -> int:
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)
