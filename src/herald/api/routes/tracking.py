"""What recipients reach from an email, with no authentication and no cookies: signed click
redirects, the open pixel, the hosted unsubscribe page and the RFC 8058 one-click unsubscribe
(`POST` with `List-Unsubscribe=One-Click`, effective at once). A token that does not verify gets
a 404 and records nothing; a click always redirects, even if recording it fails."""

from __future__ import annotations

import base64
import html

import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from herald.api.deps import ContainerDep
from herald.bootstrap import Container
from herald.domain.delivery import DeliveryEvent
from herald.domain.errors import NotFound
from herald.pipeline.tracking import BadToken, TrackedKind, TrackedLink
from herald.services import feedback, preferences

router = APIRouter(prefix="/t", tags=["tracking"], include_in_schema=False)
log = structlog.get_logger("herald.tracking")

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_STORE = {"Cache-Control": "no-store, private", "Referrer-Policy": "no-referrer"}


def _verified(c: Container, token: str, kind: TrackedKind) -> TrackedLink:
    try:
        return c.email.links.verify(token, kind=kind)
    except BadToken:
        raise NotFound("this link is not valid (it may have been cut or altered)") from None


def _record(c: Container, event: DeliveryEvent) -> None:
    with c.engine.begin() as conn:
        feedback.apply_events(conn, [event], now=c.clock.now(), source="tracking")


@router.get("/c/{token}")
async def click(token: str, c: ContainerDep) -> Response:
    link = _verified(c, token, "click")
    assert link.target is not None
    event = DeliveryEvent(kind="clicked", provider="herald", occurred_at=c.clock.now(), message_id=link.message_id,
                          url=link.target)
    try:
        await run_in_threadpool(_record, c, event)
    except Exception:  # the buyer gets to the shop whatever happens to our bookkeeping
        log.exception("click_not_recorded", message_id=link.message_id)
    return RedirectResponse(link.target, status_code=302, headers=NO_STORE)


@router.get("/o/{token}")
async def open_pixel(token: str, c: ContainerDep) -> Response:
    link = _verified(c, token, "open")
    event = DeliveryEvent(kind="opened", provider="herald", occurred_at=c.clock.now(), message_id=link.message_id)
    try:
        await run_in_threadpool(_record, c, event)
    except Exception:
        log.exception("open_not_recorded", message_id=link.message_id)
    return Response(PIXEL, media_type="image/gif", headers=NO_STORE)


@router.get("/u/{token}", response_class=HTMLResponse)
async def unsubscribe_page(token: str, c: ContainerDep) -> HTMLResponse:
    link = _verified(c, token, "unsubscribe")
    action = html.escape(f"/t/u/{token}")
    manage = await run_in_threadpool(_preferences_link, c, link.message_id)
    return HTMLResponse(_page("Unsubscribe", "<p>Stop receiving marketing email from this store?</p>"
                              f'<form method="post" action="{action}">'
                              '<button type="submit" name="confirm" value="yes">Unsubscribe</button></form>'
                              + manage), headers=NO_STORE)


@router.post("/u/{token}", response_class=HTMLResponse)
async def unsubscribe(token: str, request: Request, c: ContainerDep) -> HTMLResponse:
    """RFC 8058 one-click (`List-Unsubscribe=One-Click`) and the hosted page's button alike."""
    link = _verified(c, token, "unsubscribe")
    one_click = b"List-Unsubscribe=One-Click" in (await request.body())[:4096]

    def work() -> bool:
        with c.engine.begin() as conn:
            return feedback.unsubscribe(conn, link.message_id, now=c.clock.now(),
                                        source="one-click" if one_click else "unsubscribe-page")
    if not await run_in_threadpool(work):
        raise NotFound("this message is no longer known; write to the store to unsubscribe")
    manage = await run_in_threadpool(_preferences_link, c, link.message_id)
    return HTMLResponse(_page("Unsubscribed", "<p>You are unsubscribed: you will not receive marketing email "
                              "from this store any more.</p>" + manage), headers=NO_STORE)


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" "
            f"content=\"width=device-width\"><title>{title}</title></head><body style=\"font-family:sans-serif;"
            f"max-width:32em;margin:3em auto\"><h1>{title}</h1>{body}</body></html>")


def _preferences_link(c: Container, message_id: str) -> str:
    """A link to the recipient's preference centre (every channel and store), when the message has a
    contact; "" otherwise, and on any failure (the unsubscribe itself must never fail for it)."""
    try:
        with c.engine.begin() as conn:
            contact_id = preferences.contact_of_message(conn, message_id)
    except Exception:
        log.exception("preferences_link_failed", message_id=message_id)
        return ""
    if contact_id is None:
        return ""
    url = c.consent_links.preferences_url(contact_id, c.clock.now())
    return f'<p><a href="{html.escape(url, quote=True)}">Manage all your preferences</a></p>'
