"""The two small protocols a store connector (herald.stores.<platform>) implements, and the
errors it raises. Services depend on these protocols only; bootstrap.py is the one place that
maps a platform name to its concrete connector.

Inbound webhooks (`WebhookConnector`):
  1. `verify(headers, body, secrets, now)` on the raw body, before anything is parsed or stored;
     raises `SignatureError` (-> 401, nothing stored). `secrets` holds the current secret and,
     during a rotation, the previous one: any of them may match.
  2. `identify(headers, body)` -> `DeliveryInfo`: the topic and the platform's own delivery id
     (the dedupe key), from headers where the platform sends them.
  3. later, in a job after commit: `parse(topic, body, store)` -> typed objects
     (domain/commerce.py); raises `UnknownTopic` (stored and reported, never dropped) or
     `BadPayload` (the delivery is marked failed with the reason).

Backfill (`StoreApi`): one page of customers or orders at a time, from a cursor; rate limits
surface as `RateLimited(retry_after)` so the caller (services/sync.py) decides how to wait.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from herald.domain.commerce import StoreInfo, StoreObject

Headers = Mapping[str, str]  # lower-cased header names
Resource = Literal["customers", "orders"]


class SignatureError(Exception):
    """The delivery is not signed by the store: missing, malformed or wrong signature."""


class UnknownTopic(Exception):
    """A topic this connector does not translate; the delivery is kept and reported."""


class BadPayload(Exception):
    """Signed correctly but not the documented shape; the message says what is wrong."""


class RateLimited(Exception):
    def __init__(self, retry_after: float, detail: str = "rate limited") -> None:
        super().__init__(f"{detail}; retry after {retry_after:g} s")
        self.retry_after = retry_after


class StoreApiError(Exception):
    """The platform's API refused or failed; the message says what to fix (credentials, URL...)."""


@dataclass(frozen=True, slots=True)
class DeliveryInfo:
    topic: str
    dedupe_key: str  # the platform's delivery/event id, or a hash of the body if it has none
    is_ping: bool = False  # a test/handshake delivery: acknowledged and stored, nothing to process


class WebhookConnector(Protocol):
    platform: str

    def verify(self, headers: Headers, body: bytes, secrets: Sequence[str], now: datetime) -> None: ...

    def identify(self, headers: Headers, body: bytes) -> DeliveryInfo: ...

    def parse(self, topic: str, body: bytes, store: StoreInfo) -> list[StoreObject]: ...


@dataclass(frozen=True, slots=True)
class ApiPage:
    objects: list[StoreObject]
    next_cursor: str | None  # None: this was the last page


class StoreApi(Protocol):
    """A store's REST API, bound to one store's base URL and credentials."""

    async def page(self, resource: Resource, cursor: str | None) -> ApiPage: ...

    async def aclose(self) -> None: ...
