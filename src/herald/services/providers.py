"""A workspace's channel providers (SMTP relays, SES/SendGrid/Mailgun accounts): stored with
their secrets sealed, built into live provider objects by the channel adapters, and cached so
that connection pools live across sends. Lower priority is tried first.

A provider's config may also set its send rate (`rate_per_second`, `burst`: services/ratelimits.py);
those keys are validated here and never reach the adapter, which refuses keys it does not read."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from herald.db.tables import providers
from herald.domain.delivery import CallbackParser, Channel, ChannelAdapters, Provider, ProviderConfigError
from herald.domain.errors import Conflict, InvalidInput, NotFound
from herald.domain.ids import new_id
from herald.services import ratelimits, vault


def add_provider(conn: Connection, adapters: ChannelAdapters, master_key: bytes, workspace_id: str, *,
                 channel: Channel, kind: str, name: str, config: Mapping[str, Any], secrets: Mapping[str, str],
                 priority: int, now: datetime) -> dict[str, Any]:
    kinds = adapters.provider_kinds(channel)
    if kind not in kinds:
        raise InvalidInput.on("kind", f"{channel} providers are {', '.join(kinds)}; got {kind!r}")
    ratelimits.limit_of(config)
    try:  # refuses unusable settings now, not at the first send
        adapters.make_provider(kind, ratelimits.adapter_config(config), secrets)
    except (ProviderConfigError, ValueError, TypeError, KeyError) as exc:
        raise InvalidInput.on("config", f"{kind}: {exc}") from None
    if conn.execute(select(providers.c.id).where(providers.c.workspace_id == workspace_id,
                                                 providers.c.name == name)).first():
        raise Conflict(f"a provider named {name!r} already exists in this workspace")
    row = {"id": new_id("prv"), "workspace_id": workspace_id, "channel": channel, "kind": kind, "name": name,
           "config": dict(config), "secrets": vault.seal(master_key, json.dumps(dict(secrets))) if secrets else None,
           "priority": priority, "enabled": True, "created_at": now, "updated_at": now}
    conn.execute(providers.insert().values(row))
    return row


def for_channel(conn: Connection, workspace_id: str, channel: str) -> list[dict[str, Any]]:
    p = providers.c
    query = (select(providers).where(p.workspace_id == workspace_id, p.channel == channel, p.enabled.is_(True))
             .order_by(p.priority, p.id))
    return [dict(r) for r in conn.execute(query).mappings()]


def get_provider(conn: Connection, provider_id: str) -> dict[str, Any]:
    row = conn.execute(select(providers).where(providers.c.id == provider_id)).mappings().first()
    if row is None:
        raise NotFound(f"no provider {provider_id!r}")
    return dict(row)


def secrets_of(master_key: bytes, row: Mapping[str, Any]) -> dict[str, str]:
    sealed = row.get("secrets")
    return dict(json.loads(vault.unseal(master_key, sealed))) if sealed else {}


class ProviderCache:
    """Live provider objects by (provider id, updated_at): a changed row builds a new one. Also
    the providers' rate-limit buckets (`take_slot`), in this process's memory unless `rate_limits`
    keeps them in Redis."""

    def __init__(self, adapters: ChannelAdapters, master_key: bytes,
                 rate_limits: ratelimits.ProviderRateLimits | None = None) -> None:
        self.adapters = adapters
        self.master_key = master_key
        self.rate_limits = rate_limits or ratelimits.ProviderRateLimits()
        self._limits: dict[str, tuple[datetime, ratelimits.RateLimit | None]] = {}
        self._live: dict[str, tuple[datetime, Provider]] = {}
        self._stale: list[Provider] = []
        self._parsers: dict[str, tuple[datetime, CallbackParser, list[str]]] = {}
        self._lock = threading.Lock()

    def provider(self, row: Mapping[str, Any]) -> Provider:
        with self._lock:
            hit = self._live.get(row["id"])
            if hit is not None and hit[0] == row["updated_at"]:
                return hit[1]
            made = self.adapters.make_provider(row["kind"], ratelimits.adapter_config(row["config"]),
                                               secrets_of(self.master_key, row))
            if hit is not None:
                self._stale.append(hit[1])
            self._live[row["id"]] = (row["updated_at"], made)
            return made

    def callback_parser(self, row: Mapping[str, Any]) -> tuple[CallbackParser, list[str]]:
        """The provider's callback parser (kept, so its replay cache lives) and the keys that
        verify its callbacks (the current `webhook_key` and, during a rotation, the previous)."""
        with self._lock:
            hit = self._parsers.get(row["id"])
            if hit is None or hit[0] != row["updated_at"]:  # unseal the secrets once per version of the row
                secrets = secrets_of(self.master_key, row)
                keys = [secrets[name] for name in ("webhook_key", "previous_webhook_key") if secrets.get(name)]
                parser = self.adapters.callback_parser(row["kind"], ratelimits.adapter_config(row["config"]), secrets)
                hit = (row["updated_at"], parser, keys)
                self._parsers[row["id"]] = hit
        return hit[1], hit[2]

    async def take_slot(self, row: Mapping[str, Any]) -> float | None:
        """Take one send from the provider's rate-limit bucket before sending: None when the send
        may go (or the provider has no limit), else the seconds until its bucket has room."""
        limit = self.rate_limit(row)
        return None if limit is None else await self.rate_limits.take(row["id"], limit)

    def rate_limit(self, row: Mapping[str, Any]) -> ratelimits.RateLimit | None:
        """The provider's rate limit (validated once per version of the row)."""
        with self._lock:
            hit = self._limits.get(row["id"])
            if hit is None or hit[0] != row["updated_at"]:
                hit = (row["updated_at"], ratelimits.limit_of(row["config"]))
                self._limits[row["id"]] = hit
        return hit[1]

    async def aclose(self) -> None:
        with self._lock:
            everything = [p for _at, p in self._live.values()] + self._stale
            self._live.clear()
            self._stale.clear()
        for provider in everything:
            await provider.aclose()
