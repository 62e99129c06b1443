"""Sending one email: queue it (a `messages` row and a `message.send` job, in the caller's
transaction), then in the job: check, render, commit "sending", hand it to the provider, record
the outcome. Every message ends sent, suppressed (with the reason), failed (with the reason) or
expired (G2).

Checks at send time (G8), first refusal wins and is stored as the message's status_reason:
  * there is a sender (the store's email_from);
  * the send-time policy (domain/policy.py via services/policy.py): suppression, consent for the
    purpose, a verified sending domain for marketing, frequency caps, quiet hours (a deferral:
    the message stays queued and a new job is due at the next allowed minute), balance;
  * transactional email needs a known sending domain (its DKIM key), marketing email the store's
    postal address, and there must be a provider.

A provider's `retry` outcome is retried with backoff (its Retry-After when it gave one) until the
job's attempts run out, then the message expires. A retry for a provider outage or throttling
fails over at once to the workspace's next provider, unless the message may already have been
delivered (`maybe_sent`), where the same provider is retried later with the same Message-ID (G4).
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Connection, Engine, select, update

from herald.db import jobs as jobs_db
from herald.db.tables import (
    checkouts,
    contact_identities,
    contacts,
    fulfillments,
    message_events,
    messages,
    order_lines,
    orders,
    stores,
)
from herald.domain.contacts import InvalidValue, normalize_email
from herald.domain.delivery import DkimKey, EmailContent, FailureReason, OutboundMessage, SendResult
from herald.domain.errors import InvalidInput, NotFound
from herald.domain.ids import new_id
from herald.domain.jobs import Outcome, Retry
from herald.domain.money import from_minor
from herald.domain.policy import Decision, SendRequest
from herald.pipeline import consent_links, render, tracking
from herald.services import domains, policy, ratelimits, sandbox, suppressions, templates, workspaces
from herald.services import providers as provider_rows

JOB_KIND: Final = "message.send"
MAX_ATTEMPTS: Final = 15          # with the backoff below: about 10 hours of retrying
FAILOVER_REASONS: Final = frozenset({FailureReason.PROVIDER_DOWN, FailureReason.THROTTLED,
                                     FailureReason.AUTH_FAILED})
# A permanent failure for these reasons says the address itself is bad: suppress it.
ADDRESS_FAILURES: Final = frozenset({FailureReason.INVALID_ADDRESS, FailureReason.HOST_UNKNOWN})


@dataclass
class EmailService:
    """What the send path needs, built once per process by the entry point."""

    engine: Engine
    now: Callable[[], datetime]
    providers: provider_rows.ProviderCache
    links: tracking.TrackingLinks
    master_key: bytes
    inbound_domain: str | None = None   # where bounces and mailto unsubscribes arrive (herald inbound-smtp)
    preference_links: consent_links.ConsentLinks | None = None   # makes `preferences_url` (hosted preference centre)
    tombstone_key: bytes | None = None  # matches erased addresses' suppression tombstones


def queue_email(conn: Connection, *, workspace_id: str, template: Mapping[str, Any], to: str, now: datetime,
                store_id: str | None, contact_id: str | None = None, context: Mapping[str, Any] | None = None,
                purpose: str | None = None, due_at: datetime | None = None) -> str:
    """Write the message and its send job; returns the message id."""
    try:
        address = normalize_email(to)
    except InvalidValue as exc:
        raise InvalidInput.on("to", str(exc)) from None
    message_id = new_id("msg")
    if contact_id is None:
        contact_id = contact_for_address(conn, workspace_id, "email", address)
    conn.execute(messages.insert().values(
        id=message_id, workspace_id=workspace_id, store_id=store_id or template.get("store_id"),
        contact_id=contact_id, channel="email", purpose=purpose or template["purpose"], to_address=address,
        status="queued", template_id=template["id"], context=dict(context or {}), attempts=0,
        created_at=now, updated_at=now))
    jobs_db.enqueue(conn, JOB_KIND, {"message_id": message_id}, now=now, due_at=due_at, max_attempts=MAX_ATTEMPTS,
                    unique_key=f"{JOB_KIND}:{message_id}", workspace_id=workspace_id)
    return message_id


def contact_for_address(conn: Connection, workspace_id: str, kind: str, address: str) -> str | None:
    """The contact this (normalised) email address or E.164 phone number identifies, if any: the
    policy needs a contact to find consent, caps and local time."""
    i = contact_identities.c
    return conn.execute(select(i.contact_id).where(i.workspace_id == workspace_id, i.kind == kind,
                                                  i.namespace == "", i.value == address)).scalar()


@dataclass(frozen=True, slots=True)
class Prepared:
    outbound: OutboundMessage
    provider_rows: list[dict[str, Any]]


async def deliver(service: EmailService, message_id: str, *, attempt: int, max_attempts: int) -> Outcome:
    """The `message.send` job: one attempt at sending the message."""
    prepared = await asyncio.to_thread(_in_tx, service, lambda conn: _prepare(conn, service, message_id))
    if prepared is None:
        return None
    result, provider_row = await send_with_failover(service.providers, prepared.outbound, prepared.provider_rows)
    if ratelimits.is_rate_limited(result):  # every provider is over its rate limit: a wait, not an attempt
        return await asyncio.to_thread(_in_tx, service, lambda conn: ratelimits.defer(
            conn, message_id, provider_row, result, now=service.now(), attempts_left=max_attempts - attempt + 1))
    last = attempt >= max_attempts
    return await asyncio.to_thread(_in_tx, service, lambda conn: record_outcome(
        conn, message_id, provider_row, result, attempt=attempt, last=last, now=service.now(),
        address_gone=_address_bounced))


def _in_tx(service: EmailService, work: Callable[[Connection], Any]) -> Any:
    with service.engine.begin() as conn:
        return work(conn)


async def send_with_failover(providers: provider_rows.ProviderCache, outbound: OutboundMessage,
                             rows: Sequence[dict[str, Any]]) -> tuple[SendResult, dict[str, Any]]:
    """Try the providers in order (every channel's send path uses this): the next one on an outage,
    throttling, an auth failure or our own rate limit, never when the message may already have
    been sent (maybe_sent). Returns the last outcome and the provider it came from."""
    result: SendResult | None = None
    row = rows[0]
    for row in rows:
        wait = await providers.take_slot(row)  # the provider's rate limit (services/ratelimits.py)
        result = (ratelimits.rate_limited(outbound.id, row, wait) if wait is not None
                  else await providers.provider(row).send(outbound))
        if result.status != "retry" or result.maybe_sent or result.reason not in FAILOVER_REASONS:
            break
    assert result is not None
    return result, row


# -- before the provider: checks, render, "sending" committed ---------------------------------------

def _prepare(conn: Connection, service: EmailService, message_id: str) -> Prepared | None:
    m = _row(conn, messages, message_id)
    if m is None or m["status"] not in ("queued", "sending"):
        return None  # gone, or already settled (a job run twice changes nothing)
    now = service.now()
    store = _row(conn, stores, m["store_id"]) if m["store_id"] else None
    domain_row = _sending_domain(conn, m["workspace_id"], store)
    settings = workspaces.settings_of(conn, m["workspace_id"])  # read once: the policy and the sandbox switch
    decision = _policy(conn, service, m, store, settings, now)
    if decision.verdict == "defer":
        assert decision.until is not None
        defer(conn, m, decision, now=now)
        return None
    refusal = _refusal(m, store, domain_row, decision)
    if refusal is not None:
        status, reason, detail = refusal
        settle(conn, m, status=status, reason=reason, detail={"refusal": detail}, now=now)
        _fall_back(conn, m, reason, now)
        return None
    assert store is not None and domain_row is not None
    provider_list = sandbox.providers_for(conn, m["workspace_id"], "email", workspace_settings=settings)
    if not provider_list:
        settle(conn, m, status="failed", reason="no_provider",
                detail={"refusal": "no email provider is configured: `herald providers add`"}, now=now)
        return None
    try:
        outbound, language, subject = _render(conn, service, m, store, domain_row)
    except render.RenderError as exc:
        settle(conn, m, status="failed", reason=FailureReason.CONTENT_REJECTED.value,
                detail={"refusal": f"the template did not render: {exc}"}, now=now)
        return None
    conn.execute(update(messages).where(messages.c.id == message_id).values(
        status="sending", attempts=messages.c.attempts + 1, language=language, subject=subject[:998],
        sending_domain=outbound.sending_domain, provider=provider_list[0]["kind"], updated_at=now))
    return Prepared(outbound, provider_list)


def _sending_domain(conn: Connection, workspace_id: str, store: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The sending domain of the store's From address, or None (no sender, or not a sending domain)."""
    if store is None or not store["email_from"]:
        return None
    try:
        return domains.get_domain(conn, workspace_id, _domain(store["email_from"]))
    except (NotFound, InvalidInput):
        return None


def _policy(conn: Connection, service: EmailService, m: Mapping[str, Any], store: Mapping[str, Any] | None,
            workspace_settings: Mapping[str, Any], now: datetime) -> Decision:
    """The send-time policy's decision for this message (a batch of one)."""
    request = SendRequest(message_id=m["id"], contact_id=m["contact_id"], store_id=m["store_id"], channel="email",
                          purpose=m["purpose"], address=m["to_address"],
                          sending_domain=_domain(store["email_from"]) if store and store["email_from"] else None)
    fallback = store["timezone"] if store is not None else None
    return policy.decide_batch(conn, m["workspace_id"], [request], now=now, tombstone_key=service.tombstone_key,
                               settings=policy.settings_from(workspace_settings), fallback_timezone=fallback)[0]


def defer(conn: Connection, m: Mapping[str, Any], decision: Decision, *, now: datetime) -> None:
    """Hold the message until `decision.until` (quiet hours): it stays queued, a new send job is due
    then, and this one ends. The deferral is not an attempt: the message keeps all its retries."""
    assert decision.until is not None and decision.code is not None
    conn.execute(update(messages).where(messages.c.id == m["id"]).values(
        status="queued", status_reason=decision.code, updated_at=now))
    record_event(conn, m, "deferred", decision.code, {"until": decision.until.isoformat(), "why": decision.detail}, now)
    jobs_db.enqueue(conn, JOB_KIND, {"message_id": m["id"], "channel": m["channel"]}, now=now, due_at=decision.until,
                    max_attempts=MAX_ATTEMPTS, unique_key=f"{JOB_KIND}:{m['id']}:{decision.until:%Y%m%dT%H%M}",
                    workspace_id=m["workspace_id"])


def _refusal(m: Mapping[str, Any], store: Mapping[str, Any] | None, domain_row: Mapping[str, Any] | None,
             decision: Decision) -> tuple[str, str, str] | None:
    """(status, reason code, explanation) when the message may not be sent."""
    if decision.verdict == "refuse":
        assert decision.code is not None
        detail = decision.detail or decision.code
        if decision.code == "domain_unverified" and store is not None and store["email_from"]:
            detail = domains.refusal(domain_row, _domain(store["email_from"]), m["purpose"]) or detail
        return "suppressed", decision.code, detail
    if store is None or not store["email_from"]:
        return "failed", "no_sender", "the store has no sender address: set its email_from"
    why = domains.refusal(domain_row, _domain(store["email_from"]), m["purpose"])
    if why is not None:
        return "suppressed", "domain_unverified", why
    if m["purpose"] == "marketing" and not (store["postal_address"] or "").strip():
        return "suppressed", "no_postal_address", "marketing email must carry the store's postal address: set it"
    return None


def _render(conn: Connection, service: EmailService, m: Mapping[str, Any], store: Mapping[str, Any],
            domain_row: Mapping[str, Any]) -> tuple[OutboundMessage, str, str]:
    template = templates.find_template(conn, m["workspace_id"], m["template_id"])
    contact = _contact(conn, m["contact_id"])
    language, compiled = templates.compiled(template, (contact or {}).get("language"))
    marketing = m["purpose"] == "marketing"
    unsubscribe_url = service.links.unsubscribe_url(m["id"])
    preferences_url = (service.preference_links.preferences_url(contact["id"], service.now())
                       if service.preference_links is not None and contact is not None else None)
    variables = variables_for(conn, m, store, contact, unsubscribe_url=unsubscribe_url if marketing else None,
                              preferences_url=preferences_url)
    rendered = render.render_email(compiled, variables)
    body_html: str | None = rendered.html
    body_text = rendered.text
    headers: list[tuple[str, str]] = []
    if marketing:
        body_html, body_text = _with_footer(body_html, body_text, store["postal_address"], unsubscribe_url)
        token = unsubscribe_url.rsplit("/", 1)[1]
        mail_domain = service.inbound_domain or _domain(store["email_from"])
        headers += list_unsubscribe_headers(unsubscribe_url, token, mail_domain)
    if body_html is not None:
        body_html = service.links.rewrite(body_html, m["id"])
        body_html = tracking.add_open_pixel(body_html, service.links.open_url(m["id"]))
    return_path = f"bounce+{m['id']}@{service.inbound_domain}" if service.inbound_domain else store["email_from"]
    outbound = OutboundMessage(
        id=m["id"], workspace_id=m["workspace_id"], channel="email", purpose=m["purpose"], to=m["to_address"],
        email=EmailContent(from_address=store["email_from"], from_name=store["email_from_name"] or store["name"],
                           subject=rendered.subject, html=body_html, text=body_text, headers=tuple(headers)),
        sending_domain=domain_row["domain"], metadata={"return_path": return_path},
        dkim=DkimKey(domain_row["domain"], domain_row["dkim_selector"],
                     domains.private_key(service.master_key, domain_row), generated_by_herald=True))
    return outbound, language, rendered.subject


def list_unsubscribe_headers(https_url: str, token: str, mail_domain: str) -> list[tuple[str, str]]:
    """RFC 2369 + RFC 8058 one-click: the HTTPS URL (POST List-Unsubscribe=One-Click) and a mailto."""
    return [("List-Unsubscribe", f"<{https_url}>, <mailto:unsubscribe+{token}@{mail_domain}>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]


def _with_footer(body_html: str | None, body_text: str, address: str, unsubscribe_url: str) -> tuple[str | None, str]:
    """Make sure the store's postal address and an unsubscribe link are in the message."""
    text = body_text
    if address not in text:
        text += f"\n\n{address}"
    if unsubscribe_url not in text:
        text += f"\nUnsubscribe: {unsubscribe_url}"
    if body_html is None:
        return None, text
    additions = []
    if html.escape(address) not in body_html and address not in body_html:
        additions.append(html.escape(address).replace("\n", "<br>"))
    if html.escape(unsubscribe_url) not in body_html and unsubscribe_url not in body_html:
        additions.append(f'<a href="{html.escape(unsubscribe_url)}">Unsubscribe</a>')
    if additions:
        footer = ('<div style="font-size:12px;color:#666;text-align:center;padding:16px">'
                  + "<br>".join(additions) + "</div>")
        at = body_html.lower().rfind("</body>")
        body_html = body_html[:at] + footer + body_html[at:] if at >= 0 else body_html + footer
    return body_html, text


def _row(conn: Connection, table: Any, row_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(table).where(table.c.id == row_id)).mappings().first()
    return dict(row) if row is not None else None


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _contact(conn: Connection, contact_id: str | None) -> dict[str, Any] | None:
    if contact_id is None:
        return None
    row = conn.execute(select(contacts).where(contacts.c.id == contact_id)).mappings().first()
    return dict(row) if row else None


# -- after the provider: the outcome ----------------------------------------------------------------

AddressGone = Callable[[Connection, Mapping[str, Any], Mapping[str, Any], SendResult, datetime], None]


def record_outcome(conn: Connection, message_id: str, provider_row: Mapping[str, Any], result: SendResult, *,
                   attempt: int, last: bool, now: datetime, address_gone: AddressGone) -> Outcome:
    """Record what the provider said, for a message of any channel: sent; failed (and, when the
    failure says the address itself is bad, `address_gone` — the channel's consequence); retried
    with backoff or the provider's Retry-After; expired after the last attempt."""
    m = _row(conn, messages, message_id)
    if m is None:
        return None
    detail: dict[str, Any] = {"provider": provider_row["kind"], "provider_id": provider_row["id"],
                              "attempt": attempt}
    if result.provider_code:
        detail["provider_code"] = result.provider_code
    if result.detail:
        detail["diagnostic"] = result.detail[:1000]
    if result.status == "accepted":
        conn.execute(update(messages).where(messages.c.id == message_id).values(
            status="sent", status_reason=None, provider=provider_row["kind"],
            provider_message_id=result.provider_message_id, sent_at=now, updated_at=now))
        record_event(conn, m, "sent", None, detail, now)
        sandbox.after_accepted(conn, m, provider_row, now)
        return None
    reason = (result.reason or FailureReason.UNKNOWN).value
    if result.status == "failed":
        settle(conn, m, status="failed", reason=reason, detail=detail, now=now)
        if result.reason in ADDRESS_FAILURES:
            address_gone(conn, m, provider_row, result, now)
        return None
    if last:
        settle(conn, m, status="expired", reason=reason, detail=detail, now=now)
        return None
    detail["maybe_sent"] = result.maybe_sent
    conn.execute(update(messages).where(messages.c.id == message_id).values(
        status="queued", status_reason=reason, updated_at=now))
    record_event(conn, m, "deferred", reason, detail, now)
    return Retry(result.retry_after if result.retry_after else backoff(attempt), f"{reason}: {result.detail}"[:500])


def _address_bounced(conn: Connection, m: Mapping[str, Any], provider_row: Mapping[str, Any], result: SendResult,
                     now: datetime) -> None:
    """An email address the receiver says does not exist: suppress it, move on along the route."""
    suppressions.suppress(conn, m["workspace_id"], "email", m["to_address"], "hard_bounce",
                          source=f"smtp:{provider_row['kind']}", now=now, message_id=m["id"],
                          detail=result.detail or None)
    _fall_back(conn, m, "suppressed:hard_bounce", now)


def _fall_back(conn: Connection, m: Mapping[str, Any], reason: str, now: datetime) -> None:
    """A send with a fallback route ("best channel") moves on to its next channel when this one
    cannot reach the contact (services/messaging.py holds the route logic)."""
    from herald.services import messaging  # messaging builds on this module

    if (m["context"] or {}).get("route") and reason in messaging.CHANNEL_REFUSALS:
        messaging.fall_back(conn, m, now)


def backoff(attempt: int) -> float:
    """30 s, 1 min, 2 min ... capped at 1 h."""
    return float(min(30 * 2 ** (attempt - 1), 3600))


def settle(conn: Connection, m: Mapping[str, Any], *, status: str, reason: str, detail: Mapping[str, Any],
            now: datetime) -> None:
    conn.execute(update(messages).where(messages.c.id == m["id"]).values(status=status, status_reason=reason[:64],
                                                                          updated_at=now))
    record_event(conn, m, status, reason, detail, now)


def record_event(conn: Connection, m: Mapping[str, Any], status: str, reason: str | None, detail: Mapping[str, Any],
           now: datetime) -> None:
    conn.execute(message_events.insert().values(workspace_id=m["workspace_id"], message_id=m["id"], status=status,
                                                reason=reason[:64] if reason else None, detail=dict(detail),
                                                occurred_at=now, recorded_at=now))


# -- template variables ------------------------------------------------------------------------------

def variables_for(conn: Connection, m: Mapping[str, Any], store: Mapping[str, Any],
                  contact: Mapping[str, Any] | None, *, unsubscribe_url: str | None,
                  preferences_url: str | None = None) -> dict[str, Any]:
    """The variables a template sees (the names are documented in pipeline/render.py)."""
    context = m["context"] or {}
    variables: dict[str, Any] = {
        "contact": _contact_vars(contact, m["to_address"]),
        "store": {"name": store["name"], "url": f"https://{store['domain']}" if store["domain"] else "",
                  "address": store["postal_address"] or ""},
        "unsubscribe_url": unsubscribe_url or "",
        "preferences_url": preferences_url or "",   # the contact's preference centre; empty without a contact
    }
    if context.get("order_id"):
        variables["order"] = _order_vars(conn, context["order_id"])
    if context.get("checkout_id"):
        variables["checkout"] = _checkout_vars(conn, context["checkout_id"])
    for name, value in (context.get("variables") or {}).items():
        variables.setdefault(name, value)
    return variables


def _contact_vars(contact: Mapping[str, Any] | None, address: str) -> dict[str, Any]:
    if contact is None:
        return {"email": address, "first_name": "", "last_name": "", "attributes": {}}
    return {"email": contact["email"] or address, "first_name": contact["first_name"] or "",
            "last_name": contact["last_name"] or "", "country": contact["country"] or "",
            "language": contact["language"] or "", "attributes": contact["attributes"] or {},
            "tags": contact["tags"] or [], "orders_count": contact["orders_count"]}


def _money(minor: int, currency: str) -> render.Amount:
    """"82.00": prints as written, compares as a number in Liquid; the currency is separate."""
    return render.Amount(str(from_minor(minor, currency)))


def _order_vars(conn: Connection, order_id: str) -> dict[str, Any]:
    o = conn.execute(select(orders).where(orders.c.id == order_id)).mappings().first()
    if o is None:
        return {}
    lines = conn.execute(select(order_lines).where(order_lines.c.order_id == order_id)
                         .order_by(order_lines.c.id)).mappings().all()
    f = conn.execute(select(fulfillments).where(fulfillments.c.order_id == order_id)
                     .order_by(fulfillments.c.created_at.desc())).mappings().first()
    cur = o["currency"]
    return {"name": o["number"] or o["external_id"], "currency": cur, "total": _money(o["total_minor"], cur),
            "subtotal": _money(o["subtotal_minor"], cur), "discount_codes": o["discount_codes"] or [],
            "status_url": o["status_url"] or "", "shipping_country": o["shipping_country"] or "",
            "lines": [{"title": li["title"], "quantity": li["quantity"], "sku": li["sku"] or "", "image": "",
                       "price": _money(li["unit_price_minor"], cur), "total": _money(li["total_minor"], cur)}
                      for li in lines],
            "tracking": {"company": f["tracking_company"] or "",
                         "number": (f["tracking_numbers"] or [""])[0],
                         "url": (f["tracking_urls"] or [""])[0]} if f else {}}


def _checkout_vars(conn: Connection, checkout_id: str) -> dict[str, Any]:
    c = conn.execute(select(checkouts).where(checkouts.c.id == checkout_id)).mappings().first()
    if c is None:
        return {}
    cur = c["currency"]
    return {"recovery_url": c["recovery_url"] or "", "currency": cur, "total": _money(c["total_minor"], cur),
            "lines": c["lines"] or [], "discount_codes": c["discount_codes"] or []}


def status_of(conn: Connection, message_id: str) -> tuple[str, str | None]:
    row = conn.execute(select(messages.c.status, messages.c.status_reason).where(messages.c.id == message_id)).first()
    if row is None:
        raise NotFound(f"no message {message_id!r}")
    return row.status, row.status_reason
