"""Hosted consent pages a contact reaches from a signed link, with no account, no cookies and no
JavaScript: the double opt-in confirmation (`/c/{token}`) and the preference centre (`/p/{token}`).

GET never changes anything (mail scanners prefetch links); each page's form POSTs back to its own
URL. A link we did not sign answers 404, an expired one 400, and neither records anything. Every
value is HTML-escaped; responses are not cached, not framed, and send no Referer (the token is in
the URL)."""

from __future__ import annotations

import html
from typing import Final
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from herald.api.deps import ContainerDep
from herald.bootstrap import Container
from herald.pipeline.consent_links import BadToken, Confirmation, ExpiredToken, PreferenceAccess
from herald.services import consent, preferences
from herald.services.preferences import Centre, ConsentKey

router = APIRouter(tags=["hosted pages"], include_in_schema=False)

HEADERS: Final = {
    "Cache-Control": "no-store, private",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
}
CHANNEL_LABELS: Final = {"email": "Email", "sms": "SMS (text messages)", "whatsapp": "WhatsApp",
                         "push": "Push notifications"}
PURPOSE_LABELS: Final = {"marketing": "Marketing: offers and news",
                         "transactional": "Service messages: orders and deliveries"}
MAX_FORM_BYTES: Final = 65_536
MAX_FORM_FIELDS: Final = 2_000


class PageError(Exception):
    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    text = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width"><title>{html.escape(title)}</title></head><body style="font-family:'
            f'sans-serif;max-width:40em;margin:3em auto;padding:0 1em"><h1>{html.escape(title)}</h1>{body}'
            f"</body></html>")
    return HTMLResponse(text, status_code=status, headers=HEADERS)


def _error_page(err: PageError) -> HTMLResponse:
    return _page(err.title, f"<p>{html.escape(err.message)}</p>", err.status)


def _client(request: Request) -> tuple[str | None, str | None]:
    ip = request.client.host[:45] if request.client else None
    user_agent = (request.headers.get("user-agent") or "")[:512] or None
    return ip, user_agent


async def _form(request: Request) -> dict[str, list[str]]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise PageError(413, "Form too large", "The form sent is too large.")
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise PageError(400, "Form not understood", "The form sent could not be read; reload the page.") from None


def _invalid() -> PageError:
    return PageError(404, "Link not valid", "This link is not valid (it may have been cut or altered). "
                                            "Copy the whole link from the message, or ask the store for a new one.")


def _expired() -> PageError:
    return PageError(400, "Link expired", "This link has expired. Nothing was changed; ask the store for a new one.")


def _confirmation(c: Container, token: str) -> Confirmation:
    try:
        return c.consent_links.verify_confirmation(token, c.clock.now())
    except ExpiredToken:
        raise _expired() from None
    except BadToken:
        raise _invalid() from None


def _access(c: Container, token: str) -> PreferenceAccess:
    try:
        return c.consent_links.verify_preferences(token, c.clock.now())
    except ExpiredToken:
        raise _expired() from None
    except BadToken:
        raise _invalid() from None


# ---- double opt-in -----------------------------------------------------------------------------

def _what(confirmation: Confirmation, sender: str) -> str:
    channel = CHANNEL_LABELS.get(confirmation.channel, confirmation.channel)
    kind = "marketing messages" if confirmation.purpose == "marketing" else "service messages"
    return f"{kind} by {channel} from {sender}" if sender else f"{kind} by {channel}"


@router.get("/c/{token}", response_class=HTMLResponse)
def confirmation_page(token: str, c: ContainerDep) -> HTMLResponse:
    try:
        confirmation = _confirmation(c, token)
        with c.engine.begin() as conn:
            contact = preferences.find_contact(conn, confirmation.contact_id)
            if contact is None:
                raise _invalid()
            sender = preferences.sender_name(conn, contact, confirmation.store_id)
    except PageError as err:
        return _error_page(err)
    return _page("Confirm your subscription",
                 f"<p>Please confirm that you want to receive {html.escape(_what(confirmation, sender))}.</p>"
                 '<form method="post"><button type="submit" name="confirm" value="yes">Confirm my subscription'
                 "</button></form><p>If you did not ask for this, ignore this page: nothing changes.</p>")


_OUTCOMES: Final = {
    "confirmed": (200, "Subscription confirmed", "Thank you: your subscription is confirmed."),
    "already_granted": (200, "Already confirmed", "Your subscription was already confirmed."),
    "no_longer_pending": (409, "Link no longer valid", "Your preferences changed after this link was sent, so it "
                                                        "cannot be used any more. Nothing was changed."),
    "unknown_contact": (404, "Link not valid", "We no longer hold this subscription request."),
}


@router.post("/c/{token}", response_class=HTMLResponse)
async def confirm(token: str, request: Request, c: ContainerDep) -> HTMLResponse:
    try:
        confirmation = _confirmation(c, token)
    except PageError as err:
        return _error_page(err)
    ip, user_agent = _client(request)

    def work() -> str:
        with c.engine.begin() as conn:
            return preferences.confirm(conn, confirmation, ip=ip, user_agent=user_agent, now=c.clock.now())
    status, title, message = _OUTCOMES[await run_in_threadpool(work)]
    return _page(title, f"<p>{html.escape(message)}</p>", status)


# ---- preference centre -------------------------------------------------------------------------

def _box_value(key: ConsentKey) -> str:
    return f"{key[0]}:{key[1]}:{key[2] or 'all'}"


def _parse_box(value: str) -> ConsentKey:
    parts = value.split(":")
    if len(parts) != 3 or parts[0] not in consent.CHANNELS or parts[1] not in consent.PURPOSES or not parts[2]:
        raise PageError(400, "Form not understood", "The form sent could not be read; reload the page.")
    return parts[0], parts[1], None if parts[2] == "all" else parts[2]


def _centre(c: Container, token: str) -> Centre:
    access = _access(c, token)
    with c.engine.begin() as conn:
        centre = preferences.preference_centre(conn, access.contact_id)
    if centre is None:
        raise PageError(404, "Link not valid", "We no longer hold any data about you: there is nothing to manage.")
    return centre


@router.get("/p/{token}", response_class=HTMLResponse)
def preference_page(token: str, c: ContainerDep) -> HTMLResponse:
    try:
        centre = _centre(c, token)
    except PageError as err:
        return _error_page(err)
    return _preference_form(centre, notice=None)


@router.post("/p/{token}", response_class=HTMLResponse)
async def save_preferences(token: str, request: Request, c: ContainerDep) -> HTMLResponse:
    try:
        access = _access(c, token)
        form = await _form(request)
        shown = _shown(form.get("shown", []))
        ticked = [_parse_box(v) for v in form.get("box", [])]
    except PageError as err:
        return _error_page(err)
    unsubscribe_all = form.get("action", ["save"])[-1] == "unsubscribe_all"
    ip, user_agent = _client(request)

    def work() -> Centre | None:
        with c.engine.begin() as conn:
            centre = preferences.preference_centre(conn, access.contact_id)
            if centre is None:
                return None
            preferences.apply_preferences(conn, centre, shown, ticked, unsubscribe_all=unsubscribe_all, ip=ip,
                                          user_agent=user_agent, now=c.clock.now())
            return preferences.preference_centre(conn, access.contact_id)
    try:
        centre = await run_in_threadpool(work)
    except preferences.UnknownBox as exc:
        return _error_page(PageError(409, "Preferences changed", str(exc)))
    if centre is None:
        return _error_page(PageError(404, "Link not valid", "We no longer hold any data about you."))
    notice = ("You are unsubscribed from all marketing messages." if unsubscribe_all
              else "Your preferences are saved.")
    return _preference_form(centre, notice=notice)


def _shown(values: list[str]) -> dict[ConsentKey, bool]:
    """The boxes the page showed, each as it was shown: "channel:purpose:store:1" (ticked) or ":0"."""
    shown: dict[ConsentKey, bool] = {}
    for value in values:
        box, _, was = value.rpartition(":")
        if was not in ("0", "1"):
            raise PageError(400, "Form not understood", "The form sent could not be read; reload the page.")
        shown[_parse_box(box)] = was == "1"
    return shown


def _preference_form(centre: Centre, *, notice: str | None) -> HTMLResponse:
    parts = []
    if notice:
        parts.append(f'<p role="status"><strong>{html.escape(notice)}</strong></p>')
    who = centre.workspace_name or "this seller"
    parts.append(f"<p>Choose what {html.escape(who)} may send you. Untick a box to stop those messages.</p>")
    if not centre.channels:
        parts.append("<p>We hold no email address or phone number for you, so we send you nothing.</p>")
        return _page("Your preferences", "".join(parts))
    parts.append('<form method="post">')
    for channel in centre.channels:
        parts.append(_channel_table(centre, channel))
    parts.append('<p><button type="submit" name="action" value="save">Save my preferences</button></p>'
                 '<p><button type="submit" name="action" value="unsubscribe_all">Unsubscribe from all marketing'
                 "</button></p></form>")
    return _page("Your preferences", "".join(parts))


def _channel_table(centre: Centre, channel: str) -> str:
    label = html.escape(CHANNEL_LABELS.get(channel, channel))
    head = "".join(f'<th scope="col">{html.escape(name)}</th>' for _id, name in centre.stores)
    rows = []
    for purpose in consent.PURPOSES:
        cells = "".join(_cell(centre, (channel, purpose, store_id), store_name)
                        for store_id, store_name in centre.stores)
        rows.append(f'<tr><th scope="row" style="text-align:left">{html.escape(PURPOSE_LABELS[purpose])}</th>'
                    f"{cells}</tr>")
    return (f'<fieldset style="margin:1em 0"><legend>{label}</legend><table style="border-collapse:collapse">'
            f"<tr><td></td>{head}</tr>{''.join(rows)}</table></fieldset>")


def _cell(centre: Centre, key: ConsentKey, store_name: str) -> str:
    state = centre.state(key)
    ticked = state == "granted"
    value = html.escape(_box_value(key), quote=True)
    name = html.escape(f"{CHANNEL_LABELS.get(key[0], key[0])}, {PURPOSE_LABELS[key[1]]}, {store_name}", quote=True)
    pending = "<br><small>awaiting your confirmation</small>" if state == "pending" else ""
    return (f'<td style="text-align:center;padding:.3em .8em">'
            f'<input type="checkbox" name="box" value="{value}" aria-label="{name}"{" checked" if ticked else ""}>'
            f'<input type="hidden" name="shown" value="{value}:{1 if ticked else 0}">{pending}</td>')

