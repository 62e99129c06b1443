"""A contact's consent: current state and history (the evidence an auditor asks for), and changes,
with double opt-in. The ledger itself is append-only (services/consent.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import AwareDatetime, BaseModel, Field, IPvAnyAddress

from herald.api.deps import ContainerDep, CursorDep, IdempotencyDep, LimitDep, PrincipalDep
from herald.api.routes.contacts import VisibleContactDep
from herald.api.schemas import PROBLEMS, Body
from herald.services import contacts, preferences

router = APIRouter(prefix="/contacts", tags=["consent"], responses={
    **PROBLEMS, 403: {**PROBLEMS[422], "description": "A store key naming another store"}})

Channel = Literal["email", "sms", "whatsapp", "push"]
Purpose = Literal["marketing", "transactional"]


class ConsentChangeIn(Body):
    channel: Channel
    purpose: Purpose
    state: Literal["granted", "withdrawn"]
    store_id: str | None = Field(default=None, max_length=32,
                                 description="the store it applies to; omitted: all stores (a store key: its store)")
    source: str = Field(default="api", min_length=1, max_length=64,
                        description='where the statement was made, e.g. "checkout", "signup_form", "support"')
    wording_version: str | None = Field(default=None, max_length=64,
                                        description="the version of the consent text the person saw")
    ip: IPvAnyAddress | None = Field(default=None, description="the person's IP address; default: this request's")
    user_agent: str | None = Field(default=None, max_length=512, description="default: this request's")
    recorded_at: AwareDatetime | None = Field(
        default=None, description="when the person made the statement (not in the future); default: now. A "
                                  "statement older than the latest one for its channel, purpose and store is not "
                                  "recorded")
    double_opt_in: bool = Field(default=False, description="with state granted: record `pending` and return a "
                                                           "signed confirmation link (valid 7 days)")
    confirmation_template_id: str | None = Field(
        default=None, max_length=32, description="with double_opt_in: a transactional email template to send the "
                                                 "link with, as the variable `confirmation_url`")


class ConsentChangesIn(Body):
    changes: list[ConsentChangeIn] = Field(min_length=1, max_length=100)


class ConsentRecordOut(BaseModel):
    id: int
    channel: str
    purpose: str
    store_id: str | None
    state: str
    source: str
    wording_version: str | None
    ip: str | None
    user_agent: str | None
    recorded_at: datetime


class ConsentOut(BaseModel):
    contact_id: str
    current: list[ConsentRecordOut] = Field(description="the latest record per channel, purpose and store")
    history: list[ConsentRecordOut] = Field(description="every record, newest first, one page of it")
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page of history; null at the end")


class ConsentAppliedOut(BaseModel):
    channel: str
    purpose: str
    store_id: str | None
    state: str | None = Field(description="the state after the change (null: never recorded)")
    recorded: bool = Field(description="false when the change repeated the current state or was older than it")
    confirmation_url: str | None = None
    confirmation_expires_at: datetime | None = None
    confirmation_message_id: str | None = None


class ConsentChangesOut(BaseModel):
    contact_id: str
    results: list[ConsentAppliedOut]


@router.get("/{contact_id}/consent", response_model=ConsentOut, summary="A contact's consent and its history")
def get_consent(contact_id: str, who: PrincipalDep, c: ContainerDep, limit: LimitDep,
                cursor: CursorDep = None) -> ConsentOut:
    with c.engine.begin() as conn:
        contacts.get_contact(conn, who, contact_id)
        current = preferences.current_state(conn, who, contact_id)
        page = preferences.history(conn, who, contact_id, limit=limit, cursor=cursor)
    return ConsentOut(contact_id=contact_id, current=[ConsentRecordOut.model_validate(r) for r in current],
                      history=[ConsentRecordOut.model_validate(r) for r in page.items], next_cursor=page.next_cursor)


@router.post("/{contact_id}/consent", response_model=ConsentChangesOut, summary="Record consent changes",
             description="Each change is one statement of the person: appended to the ledger unless it repeats "
                         "the current state or is older than it. `double_opt_in: true` records `pending` and "
                         "returns a signed `confirmation_url` (valid 7 days; the page asks the person to confirm "
                         "with a button, so a mail scanner's prefetch confirms nothing); with "
                         "`confirmation_template_id` that email is queued too. A store key records for its own "
                         "store only. Accepts an `Idempotency-Key` header.")
def post_consent(contact_id: VisibleContactDep, body: ConsentChangesIn, request: Request, who: PrincipalDep,
                 c: ContainerDep, idem: IdempotencyDep) -> Response:
    ip = request.client.host[:45] if request.client else None
    user_agent = (request.headers.get("user-agent") or "")[:512] or None
    requested = [preferences.Requested(
        channel=ch.channel, purpose=ch.purpose, state=ch.state, store_id=ch.store_id, source=ch.source,
        wording_version=ch.wording_version, ip=str(ch.ip) if ch.ip is not None else ip,
        user_agent=ch.user_agent if ch.user_agent is not None else user_agent, recorded_at=ch.recorded_at,
        double_opt_in=ch.double_opt_in, confirmation_template_id=ch.confirmation_template_id)
        for ch in body.changes]
    with c.engine.begin() as conn:
        applied = preferences.record_requested(conn, who, contact_id, requested, links=c.consent_links,
                                               now=c.clock.now())
        out = ConsentChangesOut(contact_id=contact_id, results=[
            ConsentAppliedOut.model_validate(a, from_attributes=True) for a in applied])
        response = idem.respond(conn, 200, out)
    if any(a.confirmation_message_id for a in applied):
        c.notifier.notify()   # a confirmation email is queued: wake an idle worker
    return response
