"""Provider rate limits (services/ratelimits.py): the config keys and their errors, the keys kept
from the adapters (which refuse keys they do not read), and the buckets: per process in memory,
shared between ProviderCache instances (as between worker processes) through Redis.

Redis: HERALD_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379/15), else HERALD_REDIS_URL (what .ci/run
sets); without either the Redis tests skip saying so (fail under HERALD_REQUIRE_SERVICES=1)."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from typing import Any

import pytest

from herald.bootstrap import Container
from herald.channels import registry
from herald.domain.errors import InvalidInput
from herald.domain.ids import new_id
from herald.services import providers, workspaces
from herald.services.providers import ProviderCache
from herald.services.ratelimits import ProviderRateLimits, RateLimit, adapter_config, limit_of
from tests.channels.httpserver import closed_port
from tests.conftest import require_service

ACCOUNT = "AC" + "0123456789abcdef" * 2
TWILIO = {"account_sid": ACCOUNT, "from": "+15005550006", "base_url": "http://127.0.0.1:9"}
MASTER_KEY = b"k" * 64


def redis_url() -> str:
    return os.environ.get("HERALD_TEST_REDIS_URL") or os.environ.get("HERALD_REDIS_URL") or \
        require_service("HERALD_TEST_REDIS_URL", "Redis")


def a_row(config: dict[str, Any]) -> dict[str, Any]:
    return {"id": new_id("prv"), "kind": "twilio", "name": "twilio", "channel": "sms", "config": config,
            "secrets": None, "updated_at": datetime(2026, 1, 1, tzinfo=UTC)}


def takes(cache: ProviderCache, row: dict[str, Any], n: int) -> list[float | None]:
    async def run() -> list[float | None]:
        return [await cache.take_slot(row) for _ in range(n)]
    return asyncio.run(run())


@pytest.mark.parametrize(("config", "limit"), [
    ({}, None),
    ({"rate_per_second": 2, "burst": 2}, RateLimit(2, 1)),
    ({"rate_per_second": 14}, RateLimit(14, 1)),           # burst: the rate, rounded down
    ({"rate_per_second": 2.5, "burst": 5}, RateLimit(5, 2)),
    ({"rate_per_second": 2.5}, RateLimit(2, 1)),           # 2 per second: never above the rate
    ({"rate_per_second": 0.5}, RateLimit(1, 2)),
    ({"rate_per_second": 1 / 3}, RateLimit(1, 3)),
    ({"rate_per_second": 0.3}, RateLimit(1, 4)),           # 1 per 3.33 s, rounded up to whole seconds
])
def test_the_config_keys_make_a_moving_window_never_faster_than_the_rate(config: dict[str, Any],
                                                                          limit: RateLimit | None) -> None:
    assert limit_of(config) == limit
    assert adapter_config({**TWILIO, **config}) == TWILIO


@pytest.mark.parametrize(("config", "field", "says"), [
    ({"rate_per_second": "fast"}, "config.rate_per_second", "must be a number"),
    ({"rate_per_second": True}, "config.rate_per_second", "must be a number"),
    ({"rate_per_second": float("nan")}, "config.rate_per_second", "must be a number"),
    ({"rate_per_second": 0}, "config.rate_per_second", "above 0"),
    ({"rate_per_second": -1}, "config.rate_per_second", "above 0"),
    ({"rate_per_second": 1e-6}, "config.rate_per_second", "at most one day"),
    ({"rate_per_second": 2, "burst": 1.5}, "config.burst", "whole number"),
    ({"rate_per_second": 2, "burst": 0}, "config.burst", "from 1 to"),
    ({"burst": 5}, "config.burst", "needs rate_per_second"),
])
def test_a_bad_rate_limit_names_the_key_to_fix(config: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        limit_of(config)
    assert caught.value.fields[0].field == field
    assert says in caught.value.fields[0].reason


def test_add_provider_validates_the_limit_and_keeps_it_from_the_adapter(container: Container) -> None:
    now = container.clock.now()
    with container.engine.begin() as conn:
        ws = workspaces.create_workspace(conn, name="Seller", slug="seller", now=now)["id"]
        added = providers.add_provider(conn, container.adapters, container.master_key, ws, channel="sms",
                                       kind="twilio", name="limited", config={**TWILIO, "rate_per_second": 1},
                                       secrets={"auth_token": "t" * 32}, priority=0, now=now)
        with pytest.raises(InvalidInput, match=r"config\.rate_per_second"):
            providers.add_provider(conn, container.adapters, container.master_key, ws, channel="sms", kind="twilio",
                                   name="bad", config={**TWILIO, "rate_per_second": -1},
                                   secrets={"auth_token": "t" * 32}, priority=1, now=now)
        stored = providers.get_provider(conn, added["id"])
    assert stored["config"]["rate_per_second"] == 1
    cache = container.email.providers
    assert cache.provider(stored).key == "twilio"          # built without the keys the adapter refuses
    assert cache.callback_parser(stored)[0].key == "twilio"
    assert cache.rate_limit(stored) == RateLimit(1, 1)


def test_in_memory_each_cache_has_its_own_buckets() -> None:
    row = a_row({**TWILIO, "rate_per_second": 2, "burst": 2})
    one, two = (ProviderCache(registry.adapters(), MASTER_KEY) for _ in range(2))
    first = takes(one, row, 3)
    assert first[:2] == [None, None] and first[2] is not None and 0 < first[2] <= 1
    assert takes(two, row, 1) == [None]
    assert takes(one, a_row(TWILIO), 5) == [None] * 5  # no limit set: never waits


def test_through_redis_two_caches_share_one_bucket() -> None:
    url = redis_url()
    row = a_row({**TWILIO, "rate_per_second": 2, "burst": 2})
    one, two = (ProviderCache(registry.adapters(), MASTER_KEY, ProviderRateLimits(url)) for _ in range(2))
    assert takes(one, row, 1) == [None]
    assert takes(two, row, 1) == [None]
    [wait] = takes(one, row, 1)
    assert wait is not None and 0 < wait <= 1
    [wait] = takes(two, row, 1)
    assert wait is not None and 0 < wait <= 1


def test_when_redis_is_unreachable_the_send_goes_ahead() -> None:
    buckets = ProviderRateLimits(f"redis://127.0.0.1:{closed_port()}/0")
    cache = ProviderCache(registry.adapters(), MASTER_KEY, buckets)
    assert takes(cache, a_row({**TWILIO, "rate_per_second": 1, "burst": 1}), 2) == [None, None]


def test_the_redis_url_setting_names_what_is_wrong() -> None:
    from herald.settings import SettingsError, load_settings

    assert load_settings(redis_url="redis://127.0.0.1:6379/0").redis_url == "redis://127.0.0.1:6379/0"
    with pytest.raises(SettingsError, match=r"HERALD_REDIS_URL: .*must start with redis://"):
        load_settings(redis_url="http://127.0.0.1:6379")
