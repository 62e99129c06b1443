"""Sending SMS, WhatsApp, push and in-site inbox messages (issue 6); email has its own path in
services/email.py. Both run as the `message.send` job and share the message's life: queued →
(policy) → rendered → "sending" committed → provider → sent / failed / retried / expired (G2).

One message goes to one address on one channel:
  * sms, whatsapp: an E.164 number (the contact's phone);
  * push: one push subscription (messages.to_address = push_subscriptions.id); `queue_push` makes
    one message per active subscription of the contact;
  * inbox: the contact (messages.to_address = contact id); written to inbox_items, no provider.

A send that names several channels ("best channel", or an explicit order) carries the rest of its
route in context["route"]: when the policy refuses the message for a reason of that channel
(consent, the WhatsApp window, a suppressed number) or the provider fails it permanently for the
address, the next channel's message is queued (context["fallback_of"] links them).

Providers of the channel are tried by priority; an outage, throttling or an auth failure fails
over to the next one unless the message may already have been sent (maybe_sent), exactly as
email does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Connection, Engine, select, update

from herald.db import jobs as jobs_db
from herald.db.tables import contacts, messages, push_subscriptions, stores
from herald.domain.delivery import (
    FailureReason,
    OutboundMessage,
    PushContent,
    SendResult,
    SmsContent,
    WhatsAppContent,
)
from herald.domain.errors import InvalidInput
from herald.domain.ids import new_id
from herald.domain.jobs import Outcome
from herald.domain.policy import Decision, SendRequest, WhatsAppTemplate
from herald.domain.sandbox import PROVIDER_KIND
from herald.pipeline import render
from herald.services import email, inbox, policy, ratelimits, sandbox, suppressions, templates, workspaces
from herald.services import providers as provider_rows

CHANNELS: Final = ("sms", "whatsapp", "push", "inbox")
JOB_KIND: Final = email.JOB_KIND
# Refusals that say "not on this channel" (another channel may still reach the contact).
CHANNEL_REFUSALS: Final = frozenset({"consent:missing", "consent:withdrawn", "consent:pending",
                                     "whatsapp:window_closed", "whatsapp:template_not_approved",
                                     "whatsapp:marketing_to_us", "suppressed:unsubscribed",
                                     "suppressed:hard_bounce", "suppressed:invalid", "no_address"})


@dataclass
class MessagingService:
    """What the non-email send path needs, built once per process by the entry point."""

    engine: Engine
    now: Callable[[], datetime]
    providers: provider_rows.ProviderCache
    tombstone_key: bytes | None = None


# -- queueing ------------------------------------------------------------------------------------------

def queue_message(conn: Connection, *, workspace_id: str, channel: str, template: Mapping[str, Any], to: str,
                  now: datetime, store_id: str | None, contact_id: str | None,
                  context: Mapping[str, Any] | None = None, purpose: str | None = None,
                  route: Sequence[Mapping[str, str]] = (), due_at: datetime | None = None) -> str:
    """Write the message and its send job; returns the message id. `route`: the channels to fall
    back to, in order, as [{"channel": ..., "template_id": ...}]."""
    if channel not in CHANNELS:
        raise InvalidInput.on("channel", f"must be one of {', '.join(CHANNELS)} (email: services/email)")
    if template["channel"] != channel:
        raise InvalidInput.on("template", f"is a {template['channel']} template, not {channel}")
    message_id = new_id("msg")
    conn.execute(messages.insert().values(
        id=message_id, workspace_id=workspace_id, store_id=store_id or template.get("store_id"),
        contact_id=contact_id, channel=channel, purpose=purpose or template["purpose"], to_address=to,
        status="queued", template_id=template["id"], context={**(context or {}), "route": [dict(r) for r in route]},
        attempts=0, created_at=now, updated_at=now))
    jobs_db.enqueue(conn, JOB_KIND, {"message_id": message_id, "channel": channel}, now=now, due_at=due_at,
                    max_attempts=email.MAX_ATTEMPTS, unique_key=f"{JOB_KIND}:{message_id}",
                    workspace_id=workspace_id)
    return message_id


def queue_text(conn: Connection, *, workspace_id: str, channel: str, to: str, text: str, now: datetime,
               store_id: str | None, contact_id: str | None, purpose: str = "transactional") -> str:
    """A message with literal text and no template (e.g. the reply to an SMS keyword, or a
    free-form WhatsApp answer inside the 24-hour window)."""
    if channel not in ("sms", "whatsapp"):
        raise InvalidInput.on("channel", "only sms and whatsapp messages can be literal text")
    if not text.strip():
        raise InvalidInput.on("text", "is empty")
    message_id = new_id("msg")
    conn.execute(messages.insert().values(
        id=message_id, workspace_id=workspace_id, store_id=store_id, contact_id=contact_id, channel=channel,
        purpose=purpose, to_address=to, status="queued", template_id=None, context={"text": text, "route": []},
        attempts=0, created_at=now, updated_at=now))
    jobs_db.enqueue(conn, JOB_KIND, {"message_id": message_id, "channel": channel}, now=now,
                    max_attempts=email.MAX_ATTEMPTS, unique_key=f"{JOB_KIND}:{message_id}",
                    workspace_id=workspace_id)
    return message_id


def queue_push(conn: Connection, *, workspace_id: str, contact_id: str, template: Mapping[str, Any], now: datetime,
               store_id: str | None, context: Mapping[str, Any] | None = None) -> list[str]:
    """One push message per active (not retired) subscription of the contact."""
    p = push_subscriptions.c
    ids = conn.execute(select(p.id).where(p.workspace_id == workspace_id, p.contact_id == contact_id,
                                          p.retired_at.is_(None)).order_by(p.id)).scalars().all()
    return [queue_message(conn, workspace_id=workspace_id, channel="push", template=template, to=sub_id, now=now,
                          store_id=store_id, contact_id=contact_id, context=context) for sub_id in ids]


# -- the send job ----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Prepared:
    outbound: OutboundMessage
    provider_rows: list[dict[str, Any]]


async def deliver(service: MessagingService, message_id: str, *, attempt: int, max_attempts: int) -> Outcome:
    """The `message.send` job for a non-email message: one attempt."""
    prepared = await asyncio.to_thread(_in_tx, service, lambda conn: _prepare(conn, service, message_id))
    if isinstance(prepared, _InboxDelivered):  # committed: wake the contact's open inbox streams
        inbox.notifier_for(service.engine).publish(prepared.workspace_id, prepared.contact_id)
        return None
    if prepared is None:
        return None
    result, row = await email.send_with_failover(service.providers, prepared.outbound, prepared.provider_rows)
    if ratelimits.is_rate_limited(result):  # every provider is over its rate limit: a wait, not an attempt
        return await asyncio.to_thread(_in_tx, service, lambda conn: ratelimits.defer(
            conn, message_id, row, result, now=service.now(), attempts_left=max_attempts - attempt + 1))
    last = attempt >= max_attempts
    return await asyncio.to_thread(_in_tx, service, lambda conn: email.record_outcome(
        conn, message_id, row, result, attempt=attempt, last=last, now=service.now(), address_gone=_forget_address))


def _in_tx(service: MessagingService, work: Callable[[Connection], Any]) -> Any:
    with service.engine.begin() as conn:
        return work(conn)


@dataclass(frozen=True, slots=True)
class _InboxDelivered:
    workspace_id: str
    contact_id: str


def _prepare(conn: Connection, service: MessagingService, message_id: str) -> _Prepared | _InboxDelivered | None:
    m = _row(conn, messages, message_id)
    if m is None or m["status"] not in ("queued", "sending"):
        return None
    now = service.now()
    template = templates.find_template(conn, m["workspace_id"], m["template_id"]) if m["template_id"] else None
    store = _row(conn, stores, m["store_id"]) if m["store_id"] else None
    target = _push_target(conn, m) if m["channel"] == "push" else None
    if m["channel"] == "push" and target is None:
        _refuse(conn, m, "no_address", "the push subscription was retired or removed", now)
        return None
    contact = _row(conn, contacts, m["contact_id"]) if m["contact_id"] else None
    whatsapp = None
    if template is not None and m["channel"] == "whatsapp":
        whatsapp = templates.whatsapp_policy_template(
            template, templates.chosen_language(template, (contact or {}).get("language")))
    settings = workspaces.settings_of(conn, m["workspace_id"])  # read once: the policy and the sandbox switch
    decision = _decide(conn, service, m, whatsapp, store, settings, now)
    if decision.verdict == "defer":
        email.defer(conn, m, decision, now=now)
        return None
    if decision.verdict == "refuse":
        assert decision.code is not None
        _refuse(conn, m, decision.code, decision.detail or decision.code, now)
        return None
    try:
        rendered_language, fields = _render(conn, m, template, store, contact)
    except render.RenderError as exc:
        _settle(conn, m, status="failed", reason=FailureReason.CONTENT_REJECTED.value,
                detail={"refusal": f"the template did not render: {exc}"}, now=now)
        return None
    if m["channel"] == "inbox":
        _deliver_inbox(conn, m, fields, now)
        return _InboxDelivered(m["workspace_id"], m["to_address"])
    outbound = _outbound(m, fields, target)
    rows = _providers_for(conn, m, target, settings)
    if not rows:
        _settle(conn, m, status="failed", reason="no_provider",
                detail={"refusal": f"no {m['channel']} provider is configured: `herald providers add`"}, now=now)
        return None
    conn.execute(update(messages).where(messages.c.id == m["id"]).values(
        status="sending", attempts=messages.c.attempts + 1, language=rendered_language, provider=rows[0]["kind"],
        updated_at=now))
    return _Prepared(outbound, rows)


def _decide(conn: Connection, service: MessagingService, m: Mapping[str, Any], whatsapp: WhatsAppTemplate | None,
            store: Mapping[str, Any] | None, workspace_settings: Mapping[str, Any], now: datetime) -> Decision:
    request = SendRequest(message_id=m["id"], contact_id=m["contact_id"], store_id=m["store_id"],
                          channel=m["channel"], purpose=m["purpose"], address=m["to_address"],
                          whatsapp_template=whatsapp)
    return policy.decide_batch(conn, m["workspace_id"], [request], now=now, tombstone_key=service.tombstone_key,
                               settings=policy.settings_from(workspace_settings),
                               fallback_timezone=store["timezone"] if store else None)[0]


def _render(conn: Connection, m: Mapping[str, Any], template: Mapping[str, Any] | None,
            store: Mapping[str, Any] | None, contact: Mapping[str, Any] | None) -> tuple[str | None, dict[str, Any]]:
    if template is None:  # queue_text: literal text
        return None, {"body": str((m["context"] or {}).get("text") or "")}
    variables = email.variables_for(conn, m, store or _NO_STORE, contact, unsubscribe_url=None)
    language, fields = templates.render_text_variant(template, (contact or {}).get("language"), variables)
    return language, dict(fields)


_NO_STORE: Final = {"name": "", "domain": None, "postal_address": None}


def _outbound(m: Mapping[str, Any], fields: Mapping[str, Any],
              target: Mapping[str, Any] | None) -> OutboundMessage:
    base = {"id": m["id"], "workspace_id": m["workspace_id"], "channel": m["channel"], "purpose": m["purpose"],
            "to": m["to_address"]}
    if m["channel"] == "sms":
        return OutboundMessage(**base, sms=SmsContent(fields["body"]))
    if m["channel"] == "whatsapp":
        if "template_name" in fields:
            content = WhatsAppContent(template_name=fields["template_name"],
                                      template_language=fields.get("template_language"),
                                      template_parameters=tuple(fields.get("parameters") or ()))
        else:
            content = WhatsAppContent(text=fields["body"])
        return OutboundMessage(**base, whatsapp=content)
    assert target is not None
    return OutboundMessage(**{**base, "to": target["token"]}, push=PushContent(
        title=fields.get("title", ""), body=fields.get("body", ""), url=fields.get("url") or None,
        icon=fields.get("icon") or None, keys=dict(target["keys"] or {})))


def _providers_for(conn: Connection, m: Mapping[str, Any], target: Mapping[str, Any] | None,
                   workspace_settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = sandbox.providers_for(conn, m["workspace_id"], m["channel"], workspace_settings=workspace_settings)
    if target is not None:  # push: the providers that speak the subscription's kind
        rows = [r for r in rows if r["kind"] in (target["kind"], PROVIDER_KIND)]
    return rows


def _push_target(conn: Connection, m: Mapping[str, Any]) -> dict[str, Any] | None:
    p = push_subscriptions.c
    row = conn.execute(select(push_subscriptions).where(p.id == m["to_address"], p.retired_at.is_(None))
                       ).mappings().first()
    return dict(row) if row else None


def _deliver_inbox(conn: Connection, m: Mapping[str, Any], fields: Mapping[str, Any], now: datetime) -> None:
    inbox.deliver(conn, m["workspace_id"], m["to_address"], m["id"], m["store_id"], fields.get("title", ""),
                  fields.get("body", ""), fields.get("url") or None, now)
    conn.execute(update(messages).where(messages.c.id == m["id"]).values(
        status="delivered", status_reason=None, provider="inbox", sent_at=now, updated_at=now))
    email.record_event(conn, m, "delivered", None, {"provider": "inbox"}, now)


# -- outcome, refusals, fallback -----------------------------------------------------------------------

def _forget_address(conn: Connection, m: Mapping[str, Any], row: Mapping[str, Any], result: SendResult,
                    now: datetime) -> None:
    """The provider says the address is gone: retire the push token, suppress the number, and
    move on along the send's route."""
    if m["channel"] == "push":
        conn.execute(update(push_subscriptions).where(push_subscriptions.c.id == m["to_address"]).values(
            retired_at=now, retired_reason=(result.provider_code or "invalid")[:64]))
    else:
        suppressions.suppress(conn, m["workspace_id"], m["channel"], m["to_address"], "invalid",
                              source=f"{m['channel']}:{row['kind']}", now=now, message_id=m["id"],
                              detail=result.detail or None)
    fall_back(conn, m, now)


def _refuse(conn: Connection, m: Mapping[str, Any], code: str, why: str, now: datetime) -> None:
    _settle(conn, m, status="suppressed", reason=code, detail={"refusal": why}, now=now)
    if code in CHANNEL_REFUSALS:
        fall_back(conn, m, now)


def fall_back(conn: Connection, m: Mapping[str, Any], now: datetime) -> str | None:
    """Queue the next channel of the message's route, if any; returns the new message id."""
    route = list((m["context"] or {}).get("route") or [])
    while route and m["contact_id"]:
        step, route = route[0], route[1:]
        contact = _row(conn, contacts, m["contact_id"])
        address = _address_for(contact, step["channel"])
        if address is None:
            continue
        template = templates.find_template(conn, m["workspace_id"], step["template_id"])
        context = {k: v for k, v in (m["context"] or {}).items() if k != "route"}
        context["fallback_of"] = m["id"]
        if step["channel"] == "email":
            return email.queue_email(conn, workspace_id=m["workspace_id"], template=template, to=address, now=now,
                                     store_id=m["store_id"], contact_id=m["contact_id"], context=context,
                                     purpose=m["purpose"])
        return queue_message(conn, workspace_id=m["workspace_id"], channel=step["channel"], template=template,
                             to=address, now=now, store_id=m["store_id"], contact_id=m["contact_id"],
                             context=context, purpose=m["purpose"], route=route)
    return None


def _address_for(contact: Mapping[str, Any] | None, channel: str) -> str | None:
    if contact is None:
        return None
    if channel == "email":
        return str(contact["email"]) if contact["email"] else None
    if channel in ("sms", "whatsapp"):
        return str(contact["phone"]) if contact["phone"] else None
    if channel == "inbox":
        return str(contact["id"])
    return None  # push: queue_push, one message per subscription


def _settle(conn: Connection, m: Mapping[str, Any], *, status: str, reason: str, detail: Mapping[str, Any],
            now: datetime) -> None:
    email.settle(conn, m, status=status, reason=reason, detail=detail, now=now)


def _row(conn: Connection, table: Any, row_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(table).where(table.c.id == row_id)).mappings().first()
    return dict(row) if row is not None else None
