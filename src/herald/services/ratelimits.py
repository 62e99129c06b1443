"""Per-provider send rate limits (issue 6): how fast Herald hands messages to one provider, and
what a message does when that provider's bucket is empty.

A provider row's config may carry, beside its adapter's own settings (the adapters refuse
unknown keys, so `adapter_config` strips these before an adapter sees them):
  * rate_per_second: a number > 0, the provider's sustained rate (Twilio long code: 1, SES: 14 ...);
  * burst: a whole number >= 1 of sends that may go at once; default: the rate rounded down (at least 1).

The limit is enforced in the send path (`ProviderCache.take_slot` before `provider.send`), never in
an adapter, with the `limits` library's moving window: at most `burst` sends in any window of
`burst / rate_per_second` seconds. `limits` counts windows in whole seconds, so the window is that
quotient rounded up (to within 0.1 %): the sends never go faster than rate_per_second, and exactly
at it when burst / rate_per_second is a whole number of seconds (rate 2 with burst 2 is 2 sends
per 1 s; rate 2.5 with burst 5 is 5 per 2 s; rate 0.5 is 1 send per 2 s).

The buckets live in this process's memory by default; with a Redis URL (HERALD_REDIS_URL) they live
in Redis, so every worker process on every machine shares a provider's bucket. If Redis cannot be
reached the send goes ahead (a warning is logged): the provider's own throttling answer (429)
still fails over or retries, and a Redis outage does not stop all sending.

When every provider of a message is over its limit the message waits (`defer`): it stays queued
with status_reason "rate_limited" and a new send job is due when the bucket has room. That wait is
not an attempt, so a backlog behind a rate limit is never expired by it (G2).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import structlog
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import Connection, select, update

from herald.db import jobs as jobs_db
from herald.db.tables import messages
from herald.domain.delivery import FailureReason, SendResult
from herald.domain.errors import InvalidInput
from herald.domain.ids import ulid

log = structlog.get_logger(__name__)

RATE_LIMITED: Final = "rate_limited"      # the status_reason of a message waiting for a bucket
CONFIG_KEYS: Final = ("rate_per_second", "burst")
MAX_RATE: Final = 100_000.0
MAX_BURST: Final = 100_000
MAX_WINDOW_SECONDS: Final = 86_400
MIN_WAIT_SECONDS: Final = 0.05            # a slot freed between the refusal and the look at the window
_ROUNDING: Final = 1e-3                   # a window within 0.1 % of a whole second counts as that second
_REDIS_TIMEOUT_SECONDS: Final = 2.0
_NAMESPACE: Final = "herald-provider"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `burst` sends in any `window_seconds` seconds."""

    burst: int
    window_seconds: int

    @property
    def item(self) -> RateLimitItem:
        return RateLimitItemPerSecond(self.burst, self.window_seconds, namespace=_NAMESPACE)


# -- provider config --------------------------------------------------------------------------------

def adapter_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The provider's settings without the rate-limit keys: what its adapter reads."""
    return {k: v for k, v in config.items() if k not in CONFIG_KEYS}


def limit_of(config: Mapping[str, Any]) -> RateLimit | None:
    """The rate limit the provider config sets, None when it sets none. Raises InvalidInput naming
    the key to fix (config.rate_per_second, config.burst)."""
    rate, burst = config.get("rate_per_second"), config.get("burst")
    if rate is None:
        if burst is not None:
            raise InvalidInput.on("config.burst", "needs rate_per_second (sends per second) beside it")
        return None
    rate = _rate(rate)
    burst = max(1, math.floor(rate)) if burst is None else _burst(burst)
    exact = burst / rate
    window = max(1, math.ceil(exact * (1 - _ROUNDING)))
    if window > MAX_WINDOW_SECONDS:
        raise InvalidInput.on("config.rate_per_second", f"{rate:g} per second with burst {burst} refills once in "
                                                        f"{exact:g} s; at most one day: raise the rate")
    return RateLimit(burst, window)


def _rate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput.on("config.rate_per_second", f"must be a number of sends per second, not {value!r}")
    if not 0 < value <= MAX_RATE:
        raise InvalidInput.on("config.rate_per_second", f"must be above 0 and at most {MAX_RATE:g}, got {value:g}")
    return float(value)


def _burst(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput.on("config.burst", f"must be a whole number of sends, not {value!r}")
    if not 1 <= value <= MAX_BURST:
        raise InvalidInput.on("config.burst", f"must be from 1 to {MAX_BURST}, got {value}")
    return value


# -- the buckets -------------------------------------------------------------------------------------

class ProviderRateLimits:
    """The providers' buckets, keyed by provider id: in memory (this process), or in Redis
    (`redis_url`: every process using that Redis shares them)."""

    def __init__(self, redis_url: str | None = None) -> None:
        self.shared = bool(redis_url)
        self._limiter = MovingWindowRateLimiter(_storage(redis_url) if redis_url else MemoryStorage())

    async def take(self, provider_id: str, limit: RateLimit) -> float | None:
        """Take one send from the provider's bucket: None when taken, else the seconds until the
        bucket has room again."""
        if self.shared:  # a network round trip: off the event loop
            return await asyncio.to_thread(self._take, provider_id, limit)
        return self._take(provider_id, limit)

    def _take(self, provider_id: str, limit: RateLimit) -> float | None:
        item = limit.item
        try:
            if self._limiter.hit(item, provider_id):
                return None
            room_at = self._limiter.get_window_stats(item, provider_id).reset_time
        except StorageError as exc:
            log.warning("rate limit storage unavailable; sending without the limit", provider_id=provider_id,
                        error=type(exc.storage_error).__name__)
            return None
        return max(room_at - time.time(), MIN_WAIT_SECONDS)

    def clear(self, provider_id: str, limit: RateLimit) -> None:
        """Empty the provider's window (a full bucket again)."""
        self._limiter.clear(limit.item, provider_id)


def _storage(redis_url: str) -> Storage:
    storage = storage_from_string(redis_url, wrap_exceptions=True, socket_timeout=_REDIS_TIMEOUT_SECONDS,
                                  socket_connect_timeout=_REDIS_TIMEOUT_SECONDS)
    assert isinstance(storage, Storage)  # a redis:// URL names the synchronous storage
    return storage


# -- the send path -----------------------------------------------------------------------------------

def rate_limited(message_id: str, row: Mapping[str, Any], wait: float) -> SendResult:
    """The outcome of a send that did not happen because the provider's bucket is empty: a
    throttling retry (so the send fails over to the next provider) that `is_rate_limited` knows."""
    return SendResult.retry(message_id, FailureReason.THROTTLED,
                            f"over the rate limit set for provider {row.get('name') or row['id']}: room again in "
                            f"{wait:.2f} s", provider_code=RATE_LIMITED, retry_after=wait)


def is_rate_limited(result: SendResult) -> bool:
    return result.status == "retry" and result.provider_code == RATE_LIMITED


def defer(conn: Connection, message_id: str, row: Mapping[str, Any], result: SendResult, *, now: datetime,
          attempts_left: int) -> None:
    """Every provider of the message is over its rate limit: it stays queued (status_reason
    "rate_limited") and a new send job is due when the bucket has room. Not an attempt: the
    message's send count is given back and the new job keeps the attempts this one had left."""
    from herald.services import email  # email builds on this module

    found = conn.execute(select(messages).where(messages.c.id == message_id)).mappings().first()
    if found is None:
        return
    m = dict(found)
    wait = result.retry_after or MIN_WAIT_SECONDS
    due = now + timedelta(seconds=wait)
    conn.execute(update(messages).where(messages.c.id == message_id).values(
        status="queued", status_reason=RATE_LIMITED, attempts=messages.c.attempts - 1, updated_at=now))
    email.record_event(conn, m, "deferred", RATE_LIMITED, {"provider": row["kind"], "provider_id": row["id"],
                                                           "until": due.isoformat(), "wait_seconds": round(wait, 3)},
                       now)
    jobs_db.enqueue(conn, email.JOB_KIND, {"message_id": message_id, "channel": m["channel"]}, now=now, due_at=due,
                    max_attempts=max(attempts_left, 1), workspace_id=m["workspace_id"],
                    unique_key=f"{email.JOB_KIND}:{message_id}:{RATE_LIMITED}:{ulid()}")
