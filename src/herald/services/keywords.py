"""Inbound messages from buyers: SMS keywords (STOP, HELP, START) and the WhatsApp 24-hour window.

`handle_inbound_sms` runs in the caller's transaction and does everything a keyword means before it
returns the reply to send, so a STOP is on the suppression list and in the consent ledger when the
caller commits, before the confirmation goes out:
  * STOP: the number is suppressed (reason `unsubscribed`, source "sms:STOP") and the SMS marketing
    consent of the contact with that number is withdrawn in every store and for all stores;
  * START: an `unsubscribed` suppression of the number is removed (never another reason), and the SMS
    marketing consent that STOP withdrew is granted again (the workspace-wide key when STOP had
    withdrawn none), source "sms:START";
  * HELP: nothing changes.
Replies come from the workspace settings key "sms_keywords" {help_text, stop_text, start_text},
each falling back to a default; no other key of the settings is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import Connection, delete, or_, select, update

from herald.db.tables import contact_identities, contacts, suppressions, workspaces
from herald.domain.contacts import InvalidValue, normalize_phone
from herald.domain.errors import InvalidInput, NotFound
from herald.domain.keywords import Keyword, classify
from herald.services import consent
from herald.services import suppressions as suppression_list
from herald.services.preferences import ConsentKey, Record, latest_records, own_act_time

STOP_SOURCE: Final = "sms:STOP"
START_SOURCE: Final = "sms:START"
SETTINGS_KEY: Final = "sms_keywords"
MAX_REPLY_CHARS: Final = 640
DEFAULT_REPLIES: Final = {
    "help_text": "{name}: reply STOP to unsubscribe, START to subscribe again. Msg & data rates may apply.",
    "stop_text": "{name}: you are unsubscribed and will receive no more messages. Reply START to subscribe again.",
    "start_text": "{name}: you are subscribed again. Reply STOP to unsubscribe, HELP for help.",
}


@dataclass(frozen=True, slots=True)
class KeywordResult:
    """What an inbound SMS was and what to answer; `kind` and `reply_text` are None for an ordinary
    message (no reply)."""

    kind: Keyword | None
    reply_text: str | None
    contact_id: str | None = None


def handle_inbound_sms(conn: Connection, workspace_id: str, from_number: str, body: str,
                       now: datetime) -> KeywordResult:
    """Act on a keyword in the caller's transaction; returns the reply only once the act is written."""
    kind = classify(body)
    if kind is None:
        return KeywordResult(None, None)
    number = _e164(from_number, "from_number")
    contact_id = contact_by_phone(conn, workspace_id, number)
    if kind is Keyword.STOP:
        suppression_list.suppress(conn, workspace_id, "sms", number, "unsubscribed", source=STOP_SOURCE, now=now)
        if contact_id is not None:
            _withdraw_sms_marketing(conn, workspace_id, contact_id, now)
    elif kind is Keyword.START:
        conn.execute(delete(suppressions).where(
            suppressions.c.workspace_id == workspace_id, suppressions.c.channel == "sms",
            suppressions.c.address == suppression_list.normalise("sms", number),
            suppressions.c.reason == "unsubscribed"))
        if contact_id is not None:
            _regrant_sms_marketing(conn, workspace_id, contact_id, now)
    return KeywordResult(kind, reply_text(conn, workspace_id, kind), contact_id)


def _e164(raw: str, field: str) -> str:
    try:
        return normalize_phone(raw)
    except InvalidValue as exc:
        raise InvalidInput.on(field, str(exc)) from None


def contact_by_phone(conn: Connection, workspace_id: str, number: str) -> str | None:
    """The contact holding this E.164 number in the workspace, if any."""
    i = contact_identities.c
    found = conn.execute(select(i.contact_id).where(i.workspace_id == workspace_id, i.kind == "phone",
                                                    i.namespace == "", i.value == number)).scalar()
    return str(found) if found is not None else None


def _sms_marketing(latest: Mapping[ConsentKey, Record]) -> dict[ConsentKey, Record]:
    return {key: r for key, r in latest.items() if key[:2] == ("sms", "marketing")}


def _withdraw_sms_marketing(conn: Connection, workspace_id: str, contact_id: str, now: datetime) -> None:
    latest = _sms_marketing(latest_records(conn, contact_id))
    keys: set[ConsentKey] = {key for key, r in latest.items() if r.state != "withdrawn"}
    if ("sms", "marketing", None) not in latest:
        keys.add(("sms", "marketing", None))
    consent.record_many(conn, workspace_id, [
        consent.ConsentChange(contact_id=contact_id, store_id=key[2], channel="sms", purpose="marketing",
                              state="withdrawn", source=STOP_SOURCE, recorded_at=own_act_time(latest.get(key), now))
        for key in sorted(keys, key=lambda k: k[2] or "")])


def _regrant_sms_marketing(conn: Connection, workspace_id: str, contact_id: str, now: datetime) -> None:
    latest = _sms_marketing(latest_records(conn, contact_id))
    keys = {key for key, r in latest.items() if r.state == "withdrawn" and r.source == STOP_SOURCE}
    if not keys:
        keys = {("sms", "marketing", None)}
    consent.record_many(conn, workspace_id, [
        consent.ConsentChange(contact_id=contact_id, store_id=key[2], channel="sms", purpose="marketing",
                              state="granted", source=START_SOURCE, recorded_at=own_act_time(latest.get(key), now))
        for key in sorted(keys, key=lambda k: k[2] or "")])


def reply_text(conn: Connection, workspace_id: str, kind: Keyword) -> str:
    """The workspace's reply to a keyword: its "sms_keywords" setting, else the default."""
    row = conn.execute(select(workspaces.c.name, workspaces.c.settings)
                       .where(workspaces.c.id == workspace_id)).first()
    if row is None:
        raise NotFound(f"no workspace {workspace_id!r}")
    name = f"{kind.value}_text"
    configured = (row.settings or {}).get(SETTINGS_KEY)
    text = configured.get(name) if isinstance(configured, dict) else None
    if isinstance(text, str) and text.strip():
        return text.strip()[:MAX_REPLY_CHARS]
    return DEFAULT_REPLIES[name].format(name=row.name)


def record_inbound(conn: Connection, workspace_id: str, channel: str, address: str, at: datetime) -> str | None:
    """A buyer wrote to us on `channel` from `address`. For WhatsApp, the contact with that phone
    number gets `whatsapp_inbound_at` = `at` unless it already holds a later time (monotone: a
    delayed or replayed webhook never moves it back). Returns the contact's id, None if unknown."""
    if at.tzinfo is None:
        raise ValueError("record_inbound: `at` must be an aware (UTC) datetime")
    if channel not in consent.CHANNELS:
        raise ValueError(f"record_inbound: channel {channel!r} is not one of {', '.join(consent.CHANNELS)}")
    if channel not in ("sms", "whatsapp"):
        return None
    contact_id = contact_by_phone(conn, workspace_id, _e164(address, "address"))
    if contact_id is None or channel != "whatsapp":
        return contact_id
    c = contacts.c
    conn.execute(update(contacts).where(c.id == contact_id, or_(c.whatsapp_inbound_at.is_(None),
                                                                c.whatsapp_inbound_at < at))
                 .values(whatsapp_inbound_at=at))
    return contact_id
