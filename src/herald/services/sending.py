"""Send one message to one contact on a named channel, on an explicit channel order, or on the
"best channel" (the workspace's per-country channel order, domain/policy.best_channels). The first
channel the contact has an address for is queued; the rest become its fallback route
(services/messaging.py), taken when that channel refuses or fails the contact for good."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from herald.db.tables import contacts, message_events, messages
from herald.domain.auth import Principal
from herald.domain.errors import InvalidInput, NotFound
from herald.domain.policy import CHANNELS, best_channels
from herald.services import contacts as contacts_service
from herald.services import email, messaging, policy, templates
from herald.services.pagination import one_visible

BEST = "best"


def send_to_contact(conn: Connection, who: Principal, *, contact_id: str, channel: str | Sequence[str],
                    template_ids: Mapping[str, str], now: datetime, store_id: str | None = None,
                    context: Mapping[str, Any] | None = None, purpose: str | None = None) -> list[str]:
    """Queue the message; returns the ids of the messages queued now (one, or one per push
    subscription). `template_ids`: a template (id or name) per channel the send may use."""
    contact = _contact(conn, who, contact_id)
    order = _order(conn, who.workspace_id, contact, channel)
    found = {ch: templates.find_template(conn, who.workspace_id, ref) for ch, ref in template_ids.items()}
    usable = [ch for ch in order if ch in found]
    if not usable:
        raise InvalidInput.on("templates", f"give a template for one of the channels {', '.join(order) or '(none)'}"
                                           " the contact can be reached on")
    first, rest = usable[0], usable[1:]
    route = [{"channel": ch, "template_id": found[ch]["id"]} for ch in rest]
    store = store_id or who.store_id
    if first == "email":
        return [email.queue_email(conn, workspace_id=who.workspace_id, template=found[first], to=contact["email"],
                                  now=now, store_id=store, contact_id=contact["id"],
                                  context={**(context or {}), "route": route}, purpose=purpose)]
    if first == "push":
        return messaging.queue_push(conn, workspace_id=who.workspace_id, contact_id=contact["id"],
                                    template=found[first], now=now, store_id=store, context=context)
    to = contact["id"] if first == "inbox" else contact["phone"]
    return [messaging.queue_message(conn, workspace_id=who.workspace_id, channel=first, template=found[first],
                                    to=to, now=now, store_id=store, contact_id=contact["id"], context=context,
                                    purpose=purpose, route=route)]


def _order(conn: Connection, workspace_id: str, contact: Mapping[str, Any], channel: str | Sequence[str]) -> list[str]:
    addresses = {"email": contact["email"], "sms": contact["phone"], "whatsapp": contact["phone"],
                 "inbox": contact["id"], "push": contact["id"]}
    if channel == BEST:
        return best_channels(policy.get_settings(conn, workspace_id), contact["country"], addresses)
    wanted = [channel] if isinstance(channel, str) else list(channel)
    unknown = [ch for ch in wanted if ch not in CHANNELS]
    if unknown or not wanted:
        raise InvalidInput.on("channel", f"use {BEST!r} or channels from {', '.join(CHANNELS)}")
    return [ch for ch in wanted if addresses.get(ch)]


def _contact(conn: Connection, who: Principal, contact_id: str) -> dict[str, Any]:
    """The contact, visible to the caller (a store key: linked to its store), not merged away."""
    contacts_service.get_contact(conn, who, contact_id)
    row = conn.execute(select(contacts).where(contacts.c.id == contact_id)).mappings().one()
    if row["merged_into_id"]:
        raise NotFound(f"no contact {contact_id!r}; it was merged into {row['merged_into_id']!r}")
    return dict(row)


def get_message(conn: Connection, who: Principal, message_id: str) -> dict[str, Any]:
    """A message with its history (the send log's entry)."""
    query = select(messages).where(messages.c.workspace_id == who.workspace_id)
    if who.store_id is not None:
        query = query.where(messages.c.store_id == who.store_id)
    row = one_visible(conn, query, message_id, "message")
    e = message_events.c
    row["history"] = [dict(r) for r in conn.execute(
        select(e.status, e.reason, e.detail, e.occurred_at).where(e.message_id == message_id).order_by(e.id)
    ).mappings()]
    return row
