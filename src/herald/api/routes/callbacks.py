"""Provider webhooks: `POST /callbacks/{provider_id}` (SES via SNS, SendGrid, Mailgun, Twilio
status and incoming messages, the WhatsApp Cloud API, SMS gateways). Verified on the raw body by
the provider's own parser (bad -> 401, nothing recorded); status events and incoming messages
(SMS keywords, the WhatsApp 24-hour window: services/conversations.py) are applied and committed
before the 200 (G5); a repeat of the same status changes nothing (G6). `GET` answers the WhatsApp
Cloud API's subscription handshake (hub.challenge). WhatsApp's message_template_status_update
changes record Meta's review on the templates that use it (services/whatsapp_templates.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from herald.api.deps import ContainerDep
from herald.api.schemas import PROBLEMS
from herald.domain.delivery import CallbackRequest, CallbackUnavailable, ProviderConfigError, SignatureError
from herald.domain.errors import BadSignature, HeraldError, NotFound, Unavailable
from herald.services import conversations, feedback, providers, whatsapp_templates

router = APIRouter(prefix="/callbacks", tags=["provider callbacks"], responses=PROBLEMS)


class CallbackAccepted(BaseModel):
    events: int
    applied: int
    unmatched: int
    inbound: int = 0


@router.post("/{provider_id}", response_model=CallbackAccepted, summary="Receive a provider's signed status callback")
async def receive_callback(provider_id: str, request: Request, c: ContainerDep) -> CallbackAccepted:
    def load() -> dict[str, object]:
        with c.engine.begin() as conn:
            return providers.get_provider(conn, provider_id)
    row = await run_in_threadpool(load)
    try:
        parser, keys = c.email.providers.callback_parser(row)
    except ProviderConfigError as exc:
        raise NotFound(str(exc)) from None
    call = CallbackRequest(method=request.method, url=str(request.url),
                           headers={k.lower(): v for k, v in request.headers.items()}, body=await request.body())
    try:
        events = await parser.parse_callback(call, keys, c.clock.now())
        parse_inbound = getattr(parser, "parse_inbound", None)  # providers that also relay incoming messages
        inbound = await parse_inbound(call, keys, c.clock.now()) if parse_inbound is not None else []
        reviews = await c.adapters.template_updates(parser, call, keys, c.clock.now())
    except SignatureError as exc:
        raise BadSignature(f"the callback's signature does not verify: {exc}") from None
    except CallbackUnavailable as exc:
        raise Unavailable(f"cannot verify the callback right now, retry later: {exc}", retry_after=60) from None
    except ValueError as exc:  # signed, but not the provider's documented shape
        raise HeraldError(f"the callback is not in the provider's documented format: {exc}") from None

    def apply() -> feedback.FeedbackReport:
        with c.engine.begin() as conn:
            report = feedback.apply_events(conn, events, now=c.clock.now(), workspace_id=str(row["workspace_id"]),
                                           source=f"callback:{row['kind']}")
            if inbound:
                conversations.apply_inbound(conn, row, inbound, c.clock.now())
            if reviews:
                whatsapp_templates.record_reviews(conn, str(row["workspace_id"]), reviews)
            return report
    report = await run_in_threadpool(apply)
    return CallbackAccepted(events=len(events), applied=report.applied, unmatched=report.unmatched,
                            inbound=len(inbound))


@router.get("/{provider_id}", response_class=PlainTextResponse,
            summary="Answer a provider's webhook subscription handshake (WhatsApp Cloud API hub.challenge)")
async def verify_subscription(provider_id: str, request: Request, c: ContainerDep) -> PlainTextResponse:
    def load() -> dict[str, object]:
        with c.engine.begin() as conn:
            return providers.get_provider(conn, provider_id)
    row = await run_in_threadpool(load)
    try:
        parser, _keys = c.email.providers.callback_parser(row)
    except ProviderConfigError as exc:
        raise NotFound(str(exc)) from None
    verify = getattr(parser, "verify_subscription", None)
    if verify is None:
        raise NotFound(f"{row['kind']} providers have no subscription handshake")
    secrets = providers.secrets_of(c.master_key, row)
    tokens = [secrets[name] for name in ("verify_token", "previous_verify_token") if secrets.get(name)]
    challenge = verify(dict(request.query_params), tokens)
    if challenge is None:
        raise BadSignature("hub.verify_token does not match the provider's verify_token")
    return PlainTextResponse(str(challenge))
