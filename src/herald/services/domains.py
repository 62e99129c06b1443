"""Sending domains: Herald generates the DKIM key, prints the DNS records to publish, checks
SPF, DKIM and DMARC with live DNS, and refuses marketing email from a domain that does not pass.
The private key is sealed at rest (services/vault.py)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from herald.db.tables import sending_domains
from herald.domain.delivery import ChannelAdapters, DnsRecord, MechanismCheck
from herald.domain.errors import Conflict, InvalidInput, NotFound
from herald.domain.ids import new_id
from herald.services import vault

ALGORITHMS = ("rsa-2048", "ed25519")
_DOMAIN = re.compile(r"^(?=.{1,253}$)(?!-)([a-z0-9-]{1,63}(?<!-)\.)+[a-z]{2,63}$")
_SELECTOR = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def normalise_domain(domain: str) -> str:
    value = domain.strip().rstrip(".").lower()
    try:
        value = value.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidInput.on("domain", f"{domain!r} is not a valid domain name") from None
    if not _DOMAIN.match(value):
        raise InvalidInput.on("domain", f"{domain!r} is not a valid domain name (e.g. mail.example.com)")
    return value


def add_domain(conn: Connection, adapters: ChannelAdapters, master_key: bytes, workspace_id: str, domain: str, *,
               now: datetime, selector: str | None = None, algorithm: str = "rsa-2048",
               spf_include: str | None = None, dmarc_rua: str | None = None) -> dict[str, Any]:
    name = normalise_domain(domain)
    if algorithm not in ALGORITHMS:
        raise InvalidInput.on("algorithm", f"must be one of {', '.join(ALGORITHMS)}")
    selector = selector or f"herald{now:%Y%m}"
    if not _SELECTOR.match(selector):
        raise InvalidInput.on("selector", "use 1-63 characters of a-z, 0-9 and '-'")
    if conn.execute(select(sending_domains.c.id).where(sending_domains.c.workspace_id == workspace_id,
                                                       sending_domains.c.domain == name)).first():
        raise Conflict(f"{name} is already a sending domain of this workspace; `herald domains show {name}`")
    private_pem, dkim_txt = adapters.generate_dkim_key(algorithm)
    row: dict[str, Any] = {"id": new_id("dom"), "workspace_id": workspace_id, "domain": name, "dkim_selector": selector,
           "dkim_algorithm": algorithm, "dkim_private_key": vault.seal(master_key, private_pem.decode()),
           "dkim_txt": dkim_txt, "spf_include": spf_include, "dmarc_rua": dmarc_rua, "status": "pending",
           "checks": {}, "created_at": now}
    conn.execute(sending_domains.insert().values(row))
    return row


def get_domain(conn: Connection, workspace_id: str, domain: str) -> dict[str, Any]:
    name = normalise_domain(domain)
    row = conn.execute(select(sending_domains).where(sending_domains.c.workspace_id == workspace_id,
                                                     sending_domains.c.domain == name)).mappings().first()
    if row is None:
        raise NotFound(f"{name} is not a sending domain of this workspace; add it with `herald domains add {name}`")
    return dict(row)


def list_domains(conn: Connection, workspace_id: str) -> list[dict[str, Any]]:
    query = select(sending_domains).where(sending_domains.c.workspace_id == workspace_id).order_by(
        sending_domains.c.domain)
    return [dict(r) for r in conn.execute(query).mappings()]


def records(adapters: ChannelAdapters, row: Mapping[str, Any]) -> list[DnsRecord]:
    return adapters.dns_records(row["domain"], row["dkim_selector"], row["dkim_txt"], row["spf_include"],
                                row["dmarc_rua"])


async def check(adapters: ChannelAdapters, row: Mapping[str, Any]) -> dict[str, MechanismCheck]:
    """Live DNS checks of SPF, DKIM and DMARC (no database work: call `save_check` after)."""
    return dict(await adapters.check_domain(row["domain"], row["dkim_selector"], row["dkim_txt"], row["spf_include"]))


def save_check(conn: Connection, row: Mapping[str, Any], checks: Mapping[str, MechanismCheck], *,
               now: datetime) -> dict[str, Any]:
    verified = all(c.ok for c in checks.values()) and bool(checks)
    changes: dict[str, Any] = {"status": "verified" if verified else "failed", "checked_at": now,
                               "checks": {name: asdict(c) for name, c in checks.items()}}
    if verified and row.get("verified_at") is None:
        changes["verified_at"] = now
    conn.execute(update(sending_domains).where(sending_domains.c.id == row["id"]).values(**changes))
    return {**row, **changes}


def refusal(row: Mapping[str, Any] | None, domain: str, purpose: str) -> str | None:
    """Why email of `purpose` may not be sent from `domain`, or None. Marketing email needs a
    verified domain; transactional email needs the domain to be known (for its DKIM key)."""
    if row is None:
        return f"{domain} is not a sending domain of this workspace (herald domains add {domain})"
    if purpose == "marketing" and row["status"] != "verified":
        failing = [f"{name}: {c['problem']}" for name, c in (row.get("checks") or {}).items() if not c.get("ok")]
        why = "; ".join(failing) if failing else "it has not been verified yet"
        return f"{domain} is not verified for marketing email ({why}); run `herald domains verify {domain}`"
    return None


def private_key(master_key: bytes, row: Mapping[str, Any]) -> bytes:
    return vault.unseal(master_key, row["dkim_private_key"]).encode()
