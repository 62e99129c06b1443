"""The in-site inbox over HTTP.

For the store's backend (API key): `GET /api/v1/inbox/{contact_id}` (items newest first, with the
unread count), `POST /api/v1/inbox/{contact_id}/read`, `GET /api/v1/inbox/{contact_id}/stream`
(server-sent events) and `POST /api/v1/inbox/{contact_id}/token`, which issues a signed, expiring
contact token for the store's site.

For the store's site (the token, no API key; CORS for the store's `domain` only): `GET /inbox/{token}`,
`POST /inbox/{token}/read`, `GET /inbox/{token}/stream`, and the embeddable `GET /inbox/widget.js`.
A token we did not sign answers 404, an expired one 401; a request from a browser on any other
origin than the store's site answers 403.

The stream sends each new item as `event: item` with JSON data and an `id:` line (the item id, or
for an item that committed late, the newest id already sent: where a reconnection resumes),
replays what came after `Last-Event-ID` (header, or `?last_event_id=` for a first connection),
sends a comment line as heartbeat when idle, and ends after `max_seconds` (EventSource reconnects
with its Last-Event-ID and resumes there; see services/inbox.py for the limits). New items
wake it at once in this process (services/inbox.py: InboxNotifier); items written by other
processes arrive within `poll_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from herald.api.deps import ContainerDep, CursorDep, LimitDep, PrincipalDep
from herald.api.problems import herald_problem, respond
from herald.api.routes.contacts import VisibleContactDep
from herald.api.schemas import PROBLEMS, Body
from herald.bootstrap import Container, derive_key
from herald.domain.auth import Principal
from herald.domain.errors import Forbidden, HeraldError, InvalidInput, NotFound
from herald.services import inbox
from herald.services.inbox import InboxAccess, InboxScope
from herald.services.pagination import Page

router = APIRouter(prefix="/inbox", tags=["inbox"], responses=PROBLEMS)
public = APIRouter(prefix="/inbox", tags=["inbox (store site)"], include_in_schema=False)

NO_STORE: Final = {"Cache-Control": "no-store, private", "Referrer-Policy": "no-referrer"}
TOKEN_KEY_PURPOSE: Final = b"inbox tokens v1"


# ---- bodies ------------------------------------------------------------------------------------

class InboxItemOut(BaseModel):
    id: str
    store_id: str | None
    message_id: str | None = Field(description="the message that put it here (null for none)")
    title: str
    body: str = Field(description="plain text: display it as text, never as HTML")
    url: str | None = Field(description="an absolute http(s) link, or null")
    created_at: datetime
    read_at: datetime | None


class InboxPage(BaseModel):
    data: list[InboxItemOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for older items; null at the end")
    unread: int
    total: int
    last_event_id: str = Field(description="open the stream with this as Last-Event-ID to receive "
                                           "every item that arrives after this list")


class InboxReadIn(Body):
    ids: list[str] | None = Field(default=None, min_length=1, max_length=inbox.MAX_READ_IDS,
                                  description="these items")
    up_to: str | None = Field(default=None, max_length=32, description="every item up to and including this one")


class InboxReadOut(BaseModel):
    marked: int = Field(description="items that were unread and are read now")
    unread: int
    total: int


class InboxTokenIn(Body):
    store_id: str | None = Field(default=None, max_length=32,
                                 description="the store whose site shows the inbox (a store key's own store "
                                             "by default; required with a workspace key)")
    ttl_seconds: int = Field(default=int(inbox.DEFAULT_TOKEN_TTL.total_seconds()), ge=60,
                             le=int(inbox.MAX_TOKEN_TTL.total_seconds()))


class InboxTokenOut(BaseModel):
    token: str = Field(description="opens this contact's inbox on the store's site until expires_at; "
                                   "treat it like a password (it is in URLs: serve pages over HTTPS)")
    contact_id: str
    store_id: str
    expires_at: datetime
    inbox_url: str
    stream_url: str
    widget_url: str
    embed: str = Field(description="the script tag to put in the store's page")


class PublicItem(BaseModel):
    id: str
    title: str
    body: str
    url: str | None
    created_at: datetime
    read_at: datetime | None


class PublicPage(BaseModel):
    data: list[PublicItem]
    next_cursor: str | None
    unread: int
    total: int
    last_event_id: str


# ---- stream timing -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StreamTiming:
    heartbeat_seconds: float = 15.0   # a comment line when nothing else was sent for this long
    poll_seconds: float = 3.0         # re-read the table at least this often (items from other processes)
    max_seconds: float = 60.0         # then end the stream; EventSource reconnects with Last-Event-ID
    retry_ms: int = 2_000             # the reconnection delay EventSource is told to use


def stream_timing() -> StreamTiming:
    """The stream's timing (tests override this dependency)."""
    return StreamTiming()


TimingDep = Annotated[StreamTiming, Depends(stream_timing)]
LastEventIdHeader = Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)]
LastEventIdQuery = Annotated[str | None, Query(alias="last_event_id", max_length=64,
                                               description="for a first connection; the Last-Event-ID header wins")]


# ---- API-key routes ----------------------------------------------------------------------------

def _scope(who: Principal, contact_id: str, store_id: str | None = None) -> InboxScope:
    if who.store_id is not None and store_id not in (None, who.store_id):
        raise NotFound(f"no store {store_id!r} in this workspace")
    return InboxScope(who.workspace_id, contact_id, who.store_id or store_id)


@router.get("/{contact_id}", response_model=InboxPage, summary="A contact's inbox (newest first)",
            description="A store key sees its store's items only; a workspace key sees every item of the "
                        "contact, or one store's with `store_id`. New items arrive on "
                        "`GET /api/v1/inbox/{contact_id}/stream` (server-sent events, `event: item`, "
                        "resumable with `Last-Event-ID`).")
def list_inbox(contact_id: VisibleContactDep, who: PrincipalDep, c: ContainerDep, limit: LimitDep,
               cursor: CursorDep = None,
               unread_only: Annotated[bool, Query(description="only unread items")] = False,
               store_id: Annotated[str | None, Query(max_length=32, description="only this store's items")] = None,
               ) -> InboxPage:
    scope = _scope(who, contact_id, store_id)
    page, counts, mark = _read_page(c, scope, limit, cursor, unread_only)
    return InboxPage(data=[InboxItemOut.model_validate(r) for r in page.items], next_cursor=page.next_cursor,
                     unread=counts.unread, total=counts.total, last_event_id=mark)


@router.post("/{contact_id}/read", response_model=InboxReadOut, summary="Mark items read",
             description='`{"ids": [...]}` marks those items, `{"up_to": id}` every item up to and including '
                         "that one. Unknown, foreign or already read items are left alone.")
def mark_read(contact_id: VisibleContactDep, body: InboxReadIn, who: PrincipalDep, c: ContainerDep) -> InboxReadOut:
    return _mark_read(c, _scope(who, contact_id), body)


@router.get("/{contact_id}/stream", include_in_schema=False)
async def stream(contact_id: VisibleContactDep, who: PrincipalDep, c: ContainerDep, timing: TimingDep,
                 last_event_id: LastEventIdHeader = None, last_event_id_query: LastEventIdQuery = None,
                 store_id: Annotated[str | None, Query(max_length=32)] = None) -> StreamingResponse:
    """Server-sent events of the contact's new items (text/event-stream); see the module docstring."""
    scope = _scope(who, contact_id, store_id)
    return _stream_response(c, scope, last_event_id or last_event_id_query, timing, time.monotonic()
                            + timing.max_seconds, _api_item, {})


@router.post("/{contact_id}/token", response_model=InboxTokenOut, summary="A token for the store's site",
             description="A signed, expiring token that opens this contact's inbox, and only it, on the "
                         "store's site: the JSON list (`GET /inbox/{token}`), marking read and the event "
                         "stream, answered to browsers on the store's `domain` only (CORS). Issue one per "
                         "page view or session from the store's backend and put `embed` in the page.")
def issue_token(contact_id: VisibleContactDep, body: InboxTokenIn, who: PrincipalDep, c: ContainerDep) -> InboxTokenOut:
    if who.store_id is not None and body.store_id not in (None, who.store_id):
        raise NotFound(f"no store {body.store_id!r} in this workspace")
    store_id = who.store_id or body.store_id
    if store_id is None:
        raise InvalidInput.on("store_id", "required with a workspace key: the store whose site shows the inbox")
    with c.engine.begin() as conn:
        inbox.require_owner(conn, who.workspace_id, contact_id, store_id)
    expires_at = (c.clock.now() + timedelta(seconds=body.ttl_seconds)).replace(microsecond=0)
    token = _tokens(c).issue(who.workspace_id, store_id, contact_id, expires_at)
    base = c.settings.public_base_url
    widget = f"{base}/inbox/widget.js"
    return InboxTokenOut(token=token, contact_id=contact_id, store_id=store_id, expires_at=expires_at,
                         inbox_url=f"{base}/inbox/{token}", stream_url=f"{base}/inbox/{token}/stream",
                         widget_url=widget, embed=f'<script src="{widget}" data-token="{token}" async></script>')


# ---- the store's site --------------------------------------------------------------------------

class TokenExpired(HeraldError):
    status = 401
    title = "Unauthorized"
    slug = "token-expired"


@dataclass(frozen=True, slots=True)
class Gate:
    """A verified token, and the CORS headers its answers carry for the request's origin."""

    access: InboxAccess
    cors: dict[str, str]


@functools.lru_cache(maxsize=4)
def _token_maker(master_key: bytes) -> inbox.InboxTokens:
    return inbox.InboxTokens(derive_key(master_key, TOKEN_KEY_PURPOSE))


def _tokens(c: Container) -> inbox.InboxTokens:
    return _token_maker(c.master_key)


def allowed_origins(domain: str | None) -> frozenset[str]:
    """The browser origins of a store's site: its `domain` over https (or the scheme the domain
    setting names), with and without "www."."""
    text = (domain or "").strip().lower().rstrip("/")
    if not text:
        return frozenset()
    if "://" in text:
        parts = urlsplit(text)
        scheme, host = parts.scheme, parts.netloc
    else:
        scheme, host = "https", text.split("/", 1)[0]
    if scheme not in ("http", "https") or not host or "@" in host:
        return frozenset()
    bare = host.removeprefix("www.")
    return frozenset({f"{scheme}://{bare}", f"{scheme}://www.{bare}"})


def cors_headers(origin: str | None, domain: str | None) -> dict[str, str]:
    """The CORS headers for a request from `origin`; Forbidden for a browser on another site."""
    if origin is None:
        return {"Vary": "Origin"}
    if origin.lower() not in allowed_origins(domain):
        raise Forbidden(f"origin {origin[:200]!r} may not open this inbox: only the store's own site (the store's "
                        "`domain` setting) may")
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


def _gate(c: Container, token: str, origin: str | None) -> Gate:
    try:
        access = _tokens(c).verify(token, c.clock.now())
    except inbox.ExpiredToken:
        raise TokenExpired("this inbox token has expired; the store's site must get a new one from its "
                           "backend (POST /api/v1/inbox/{contact_id}/token)") from None
    except inbox.BadToken:
        raise NotFound("this inbox token is not valid (it may have been cut or altered)") from None
    with c.engine.begin() as conn:
        domain = inbox.store_domain(conn, access.workspace_id, access.store_id, access.contact_id)
    return Gate(access, cors_headers(origin, domain))


Origin = Annotated[str | None, Header(max_length=300)]


@public.get("/widget.js")
def widget_script() -> Response:
    """The embeddable widget (web/inbox-widget.js)."""
    return Response(_widget_source(), media_type="text/javascript; charset=utf-8",
                    headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"})


@functools.cache
def _widget_source() -> str:
    return resources.files("herald").joinpath("web", "inbox-widget.js").read_text("utf-8")


@public.options("/{token}")
@public.options("/{token}/read")
@public.options("/{token}/stream")
def preflight(token: str, c: ContainerDep, origin: Origin = None) -> Response:
    gate = _gate(c, token, origin)
    headers = {**gate.cors, "Access-Control-Allow-Methods": "GET, POST",
               "Access-Control-Allow-Headers": "Content-Type, Last-Event-ID", "Access-Control-Max-Age": "600"}
    return Response(status_code=204, headers=headers)


@public.get("/{token}")
def public_inbox(token: str, request: Request, c: ContainerDep, limit: LimitDep, cursor: CursorDep = None,
                 unread_only: bool = False, origin: Origin = None) -> Response:
    gate = _gate(c, token, origin)
    try:
        page, counts, mark = _read_page(c, gate.access.scope, limit, cursor, unread_only)
    except HeraldError as exc:
        return _problem(exc, request, gate.cors)
    body = PublicPage(data=[PublicItem.model_validate(r) for r in page.items], next_cursor=page.next_cursor,
                      unread=counts.unread, total=counts.total, last_event_id=mark)
    return JSONResponse(body.model_dump(mode="json"), headers={**gate.cors, **NO_STORE})


@public.post("/{token}/read")
def public_read(token: str, body: InboxReadIn, request: Request, c: ContainerDep, origin: Origin = None) -> Response:
    gate = _gate(c, token, origin)
    try:
        result = _mark_read(c, gate.access.scope, body)
    except HeraldError as exc:
        return _problem(exc, request, gate.cors)
    return JSONResponse(result.model_dump(mode="json"), headers={**gate.cors, **NO_STORE})


@public.get("/{token}/stream")
async def public_stream(token: str, c: ContainerDep, timing: TimingDep, origin: Origin = None,
                        last_event_id: LastEventIdHeader = None,
                        last_event_id_query: LastEventIdQuery = None) -> StreamingResponse:
    gate = await run_in_threadpool(_gate, c, token, origin)
    # The stream ends no later than the token: reconnecting then asks for a fresh one (401).
    left = (gate.access.expires_at - c.clock.now()).total_seconds()
    deadline = time.monotonic() + max(0.0, min(timing.max_seconds, left))
    return _stream_response(c, gate.access.scope, last_event_id or last_event_id_query, timing, deadline,
                            _public_item, {**gate.cors, "Referrer-Policy": "no-referrer"})


def _problem(exc: HeraldError, request: Request, cors: dict[str, str]) -> Response:
    return respond(herald_problem(exc, request.url.path), headers={**exc.headers, **cors})


# ---- shared ------------------------------------------------------------------------------------

def _read_page(c: Container, scope: InboxScope, limit: int, cursor: str | None,
               unread_only: bool) -> tuple[Page[dict[str, Any]], inbox.Counts, str]:
    mark = inbox.stream_mark()  # before reading: what the list misses, a stream from here sends
    with c.engine.begin() as conn:
        page = inbox.list_items(conn, scope, limit=limit, cursor=cursor, unread_only=unread_only)
        counts = inbox.counts(conn, scope)
    return page, counts, mark


def _mark_read(c: Container, scope: InboxScope, body: InboxReadIn) -> InboxReadOut:
    with c.engine.begin() as conn:
        marked = inbox.mark_read(conn, scope, c.clock.now(), ids=body.ids, up_to=body.up_to)
        counts = inbox.counts(conn, scope)
    return InboxReadOut(marked=marked, unread=counts.unread, total=counts.total)


def _api_item(row: dict[str, Any]) -> str:
    return InboxItemOut.model_validate(row).model_dump_json()


def _public_item(row: dict[str, Any]) -> str:
    return PublicItem.model_validate(row).model_dump_json()


def _stream_response(c: Container, scope: InboxScope, last_event_id: str | None, timing: StreamTiming,
                     deadline: float, render: Callable[[dict[str, Any]], str],
                     headers: dict[str, str]) -> StreamingResponse:
    return StreamingResponse(_events(c, scope, last_event_id, timing, deadline, render),
                             media_type="text/event-stream",
                             headers={**headers, "Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _events(c: Container, scope: InboxScope, last_event_id: str | None, timing: StreamTiming,
                  deadline: float, render: Callable[[dict[str, Any]], str]) -> AsyncIterator[str]:
    """The event stream until `deadline` (time.monotonic()) or until the client goes (Starlette
    cancels the response; `finally` unsubscribes)."""
    notifier = inbox.notifier_for(c.engine)
    listener = notifier.subscribe(scope.workspace_id, scope.contact_id)  # before the first read: no wake is lost
    try:
        cursor = await run_in_threadpool(_open_cursor, c, scope, last_event_id)
        yield f"retry: {timing.retry_ms}\n\n"  # the stream is live from here: what comes next is sent
        last_write = time.monotonic()
        while time.monotonic() < deadline:
            listener.event.clear()
            position = cursor.after
            items, more = await run_in_threadpool(_fresh_items, c, scope, cursor)
            if items:
                events = []
                for row in items:
                    position = max(position, row["id"])  # a late item does not move a reconnection back
                    events.append(_event(position, render(row)))
                yield "".join(events)
                last_write = time.monotonic()
            if more:
                continue
            now = time.monotonic()
            if now - last_write >= timing.heartbeat_seconds:
                yield ": keep-alive\n\n"
                last_write = now
            wait = min(timing.poll_seconds, last_write + timing.heartbeat_seconds - now, deadline - now)
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(listener.event.wait(), wait)
    finally:
        notifier.unsubscribe(listener)


def _event(position: str, data: str) -> str:
    """`id:` is where a reconnection resumes (the newest item id sent so far: the item's own id
    unless it is a late commit); JSON has no raw line breaks, so the data is one `data:` line."""
    return f"id: {position}\nevent: item\ndata: {data}\n\n"


def _open_cursor(c: Container, scope: InboxScope, last_event_id: str | None) -> inbox.StreamCursor:
    with c.engine.connect() as conn:
        return inbox.open_cursor(conn, scope, last_event_id)


def _fresh_items(c: Container, scope: InboxScope,
                 cursor: inbox.StreamCursor) -> tuple[list[dict[str, Any]], bool]:
    with c.engine.connect() as conn:
        return inbox.fresh_items(conn, scope, cursor)

