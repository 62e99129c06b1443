"""The one place that builds Herald's parts from settings: engine, clock, master key, and
(as issues add them) the concrete channel and store adapters. Entry points (api, worker, cli)
call `build()`; nothing below this layer reads settings or names a concrete adapter."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from herald.db.engine import make_engine
from herald.db.migrate import head_revision, is_up_to_date
from herald.domain.clock import Clock, SystemClock
from herald.domain.connectors import StoreApi, WebhookConnector
from herald.domain.delivery import ChannelAdapters
from herald.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from herald.pipeline.consent_links import ConsentLinks
    from herald.services.email import EmailService
    from herald.services.messaging import MessagingService


@dataclass
class WorkNotifier:
    """Wakes in-process workers when new work is enqueued (idle workers otherwise poll)."""

    _listeners: list[Callable[[], Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def subscribe(self, listener: Callable[[], Any]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def notify(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener()


@dataclass
class Container:
    settings: Settings
    engine: Engine
    clock: Clock
    master_key: bytes
    notifier: WorkNotifier = field(default_factory=WorkNotifier)
    _connectors: Mapping[str, WebhookConnector] | None = None
    _adapters: ChannelAdapters | None = None
    _email: EmailService | None = None
    _messaging: MessagingService | None = None
    _consent_links: ConsentLinks | None = None

    @property
    def connectors(self) -> Mapping[str, WebhookConnector]:
        """Store platform -> webhook connector (herald.stores), built on first use."""
        if self._connectors is None:
            from herald.stores import registry

            self._connectors = registry.connectors()
        return self._connectors

    def store_api(self, platform: str, base_url: str, credentials: Mapping[str, str]) -> StoreApi:
        """A client for a store's REST/Admin API (backfill); the caller closes it."""
        from herald.stores import registry

        return registry.make_api(platform, base_url, credentials)

    @property
    def adapters(self) -> ChannelAdapters:
        """The channel providers (herald.channels), built on first use."""
        if self._adapters is None:
            from herald.channels import registry

            self._adapters = registry.adapters(self.settings.dns_nameservers)
        return self._adapters

    @property
    def email(self) -> EmailService:
        """The email send path with its live providers (connection pools), built on first use."""
        if self._email is None:
            from herald.pipeline.tracking import TrackingLinks
            from herald.services.email import EmailService
            from herald.services.providers import ProviderCache
            from herald.services.ratelimits import ProviderRateLimits

            buckets = ProviderRateLimits(self.settings.redis_url or None)  # shared through Redis when set
            self._email = EmailService(
                engine=self.engine, now=self.clock.now,
                providers=ProviderCache(self.adapters, self.master_key, buckets),
                links=TrackingLinks(self.settings.public_base_url, derive_key(self.master_key, b"tracking links v1")),
                master_key=self.master_key, inbound_domain=self.settings.inbound_domain or None,
                preference_links=self.consent_links, tombstone_key=self.tombstone_key)
        return self._email

    @property
    def messaging(self) -> MessagingService:
        """The SMS / WhatsApp / push / inbox send path; shares the email path's provider cache."""
        if self._messaging is None:
            from herald.services.messaging import MessagingService

            self._messaging = MessagingService(engine=self.engine, now=self.clock.now,
                                               providers=self.email.providers, tombstone_key=self.tombstone_key)
        return self._messaging

    @property
    def tombstone_key(self) -> bytes:
        """The key of erased addresses' suppression tombstones (services/suppressions.py)."""
        from herald.services.suppressions import TOMBSTONE_PURPOSE

        return derive_key(self.master_key, TOMBSTONE_PURPOSE)

    @property
    def consent_links(self) -> ConsentLinks:
        """Signed links to the hosted double opt-in confirmation and preference centre."""
        if self._consent_links is None:
            from herald.pipeline.consent_links import ConsentLinks

            self._consent_links = ConsentLinks(self.settings.public_base_url,
                                               derive_key(self.master_key, b"consent links v1"))
        return self._consent_links

    async def aclose_providers(self) -> None:
        if self._email is not None:
            await self._email.providers.aclose()

    def close(self) -> None:
        self.engine.dispose()


def build(settings: Settings | None = None, *, clock: Clock | None = None) -> Container:
    settings = settings or load_settings()
    engine = make_engine(
        settings.database_url,
        sqlite_synchronous=settings.sqlite_synchronous,
        pool_size=max(10, min(settings.worker_concurrency, 40)),
    )
    return Container(settings=settings, engine=engine, clock=clock or SystemClock(),
                     master_key=load_master_key(settings))


def load_master_key(settings: Settings) -> bytes:
    """HERALD_SECRET_KEY, or in embedded (SQLite) mode a key generated once into a 0600 file.

    It encrypts secrets at rest and keys the HMACs that pseudonymise personal data in logs.
    """
    if settings.secret_key:
        if len(settings.secret_key) < 32:
            raise SettingsError("HERALD_SECRET_KEY: must be at least 32 characters (use 64 hex chars)")
        return settings.secret_key.encode()
    if not settings.is_sqlite:
        raise SettingsError(
            "HERALD_SECRET_KEY: required with PostgreSQL so every process shares it; "
            "generate one with: python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    path: Path = settings.secret_key_file
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def derive_key(master_key: bytes, purpose: bytes) -> bytes:
    """A key for one purpose (HKDF-SHA256 of the master key), so no two uses share a key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"herald " + purpose).derive(master_key)


def require_current_schema(container: Container) -> None:
    if not is_up_to_date(container.engine):
        raise SettingsError(
            f"the database is not at schema {head_revision()}: run `herald migrate` first"
        )
