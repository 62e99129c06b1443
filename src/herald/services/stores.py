"""A store's connection to its platform: the webhook secret (rotated with a grace period in
which the previous one is still accepted), the REST/Admin API credentials used for backfill,
and the Segment-spec write key. Secrets are sealed with services/vault.py; the write key is
stored as its SHA-256 only and shown once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, select, update

from herald.db.tables import stores
from herald.domain.auth import Principal, display_prefix, generate_api_key, hash_api_key
from herald.domain.commerce import StoreInfo
from herald.domain.contacts import InvalidValue, normalize_email
from herald.domain.errors import Forbidden, InvalidInput, NotFound
from herald.services import vault
from herald.services.workspaces import get_store

WRITE_KEY_PREFIX = "wk_"
DEFAULT_ROTATION_GRACE = timedelta(days=3)
# What each platform's API credentials must contain (herald stores connect --api-...).
CREDENTIAL_FIELDS: dict[str, tuple[str, ...]] = {
    "shopify": ("access_token",),
    "woocommerce": ("consumer_key", "consumer_secret"),
}


@dataclass(frozen=True, slots=True)
class WebhookKeys:
    """What the webhook endpoint needs: the store and every secret that may sign right now."""

    store: StoreInfo
    secrets: list[str]


def store_info(row: dict[str, Any]) -> StoreInfo:
    return StoreInfo(id=row["id"], workspace_id=row["workspace_id"], platform=row["platform"],
                     currency=row["currency"], domain=row["domain"])


def _workspace_only(who: Principal, what: str) -> None:
    if who.store_id is not None:
        raise Forbidden(f"a store-scoped API key cannot {what}; use a workspace key")


def set_webhook_secret(conn: Connection, who: Principal, store_id: str, secret: str, *, master_key: bytes,
                       now: datetime, grace: timedelta = DEFAULT_ROTATION_GRACE) -> dict[str, Any]:
    """Set the secret deliveries are signed with. The secret it replaces keeps verifying for
    `grace`, so deliveries already signed with it (and retries of them) are not refused."""
    _workspace_only(who, "change webhook secrets")
    row = get_store(conn, who, store_id)
    secret = secret.strip()
    if len(secret) < 8:
        raise InvalidInput.on("webhook_secret", "must be at least 8 characters (paste the secret the platform shows)")
    values: dict[str, Any] = {"webhook_secret": vault.seal(master_key, secret)}
    if row["webhook_secret"]:
        values |= {"previous_webhook_secret": row["webhook_secret"], "previous_webhook_secret_until": now + grace}
    conn.execute(update(stores).where(stores.c.id == store_id).values(values))
    return get_store(conn, who, store_id)


def set_api_credentials(conn: Connection, who: Principal, store_id: str, *, base_url: str,
                        credentials: dict[str, str], master_key: bytes) -> dict[str, Any]:
    _workspace_only(who, "change API credentials")
    row = get_store(conn, who, store_id)
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInput.on("api_base_url", "must be the store's address, e.g. https://shop.example.com")
    if row["platform"] == "woocommerce" and parts.scheme != "https":
        raise InvalidInput.on("api_base_url", "WooCommerce accepts REST API keys only over https:// (over "
                                              "http it demands OAuth 1.0a signatures, which Herald does not send)")
    needed = CREDENTIAL_FIELDS.get(row["platform"])
    if needed is None:
        raise InvalidInput.on("platform", f"backfill is not available for {row['platform']} stores "
                                          f"(only {', '.join(CREDENTIAL_FIELDS)})")
    missing = [f for f in needed if not credentials.get(f)]
    if missing:
        raise InvalidInput.on(missing[0], f"a {row['platform']} store needs {', '.join(needed)}")
    sealed = vault.seal(master_key, json.dumps({k: credentials[k] for k in needed}))
    conn.execute(update(stores).where(stores.c.id == store_id)
                 .values(api_base_url=base_url.strip().rstrip("/"), api_credentials=sealed))
    return get_store(conn, who, store_id)


def create_write_key(conn: Connection, who: Principal, store_id: str) -> tuple[dict[str, Any], str]:
    """A new Segment-spec write key for the store (the old one stops working). Shown once."""
    get_store(conn, who, store_id)
    key = WRITE_KEY_PREFIX + generate_api_key()[4:]
    conn.execute(update(stores).where(stores.c.id == store_id)
                 .values(write_key_hash=hash_api_key(key), write_key_prefix=display_prefix(key)[:24]))
    return get_store(conn, who, store_id), key


def webhook_keys(conn: Connection, store_id: str, platform: str, *, master_key: bytes,
                 now: datetime) -> WebhookKeys:
    """The store a delivery is addressed to and the secrets that may have signed it."""
    row = conn.execute(select(stores).where(stores.c.id == store_id)).mappings().first()
    if row is None or row["platform"] != platform:
        raise NotFound(f"no {platform} store {store_id!r}")
    secrets = []
    if row["webhook_secret"]:
        secrets.append(vault.unseal(master_key, row["webhook_secret"]))
    until = row["previous_webhook_secret_until"]
    if row["previous_webhook_secret"] and until is not None and until > now:
        secrets.append(vault.unseal(master_key, row["previous_webhook_secret"]))
    return WebhookKeys(store_info(dict(row)), secrets)


def api_credentials(conn: Connection, who: Principal, store_id: str, *,
                    master_key: bytes) -> tuple[StoreInfo, str, dict[str, str]]:
    row = get_store(conn, who, store_id)
    if not row["api_base_url"] or not row["api_credentials"]:
        raise InvalidInput.on("api_credentials", f"store {store_id} has no API credentials: set them with "
                                                 "`herald stores connect STORE --api-url URL ...`")
    creds: dict[str, str] = json.loads(vault.unseal(master_key, row["api_credentials"]))
    return store_info(row), row["api_base_url"], creds


def connection_summary(row: dict[str, Any]) -> dict[str, Any]:
    """What may be shown about a store's connection: never a secret, only whether it is set."""
    return {
        "webhook_secret_set": bool(row.get("webhook_secret")),
        "previous_webhook_secret_until": row.get("previous_webhook_secret_until"),
        "api_base_url": row.get("api_base_url"),
        "api_credentials_set": bool(row.get("api_credentials")),
        "write_key_prefix": row.get("write_key_prefix"),
        "sync_state": row.get("sync_state") or {},
    }


def set_sender(conn: Connection, who: Principal, store_id: str, *, email_from: str | None,
               email_from_name: str | None, postal_address: str | None) -> dict[str, Any]:
    """The store's email sender identity; only the values given change ("" clears one)."""
    row = get_store(conn, who, store_id)
    changes: dict[str, Any] = {}
    if email_from is not None:
        try:
            changes["email_from"] = normalize_email(email_from) if email_from else None
        except InvalidValue as exc:
            raise InvalidInput.on("email_from", str(exc)) from None
    if email_from_name is not None:
        changes["email_from_name"] = email_from_name.strip() or None
    if postal_address is not None:
        changes["postal_address"] = postal_address.strip() or None
    if changes:
        conn.execute(update(stores).where(stores.c.id == store_id).values(**changes))
    return {**row, **changes}
