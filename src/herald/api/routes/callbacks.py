"""Provider status callbacks: `POST /callbacks/{provider_id}` (SES via SNS, SendGrid Event
Webhook, Mailgun webhooks). Verified on the raw body by the provider's own parser (bad -> 401,
nothing recorded); the events are applied and committed before the 200 (G5), and a repeat of
the same status changes nothing (G6)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from herald.api.deps import ContainerDep
from herald.api.schemas import PROBLEMS
from herald.domain.delivery import CallbackRequest, CallbackUnavailable, ProviderConfigError, SignatureError
from herald.domain.errors import BadSignature, HeraldError, NotFound, Unavailable
from herald.services import feedback, providers

router = APIRouter(prefix="/callbacks", tags=["provider callbacks"], responses=PROBLEMS)


class CallbackAccepted(BaseModel):
    events: int
    applied: int
    unmatched: int


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
    except SignatureError as exc:
        raise BadSignature(f"the callback's signature does not verify: {exc}") from None
    except CallbackUnavailable as exc:
        raise Unavailable(f"cannot verify the callback right now, retry later: {exc}", retry_after=60) from None
    except ValueError as exc:  # signed, but not the provider's documented shape
        raise HeraldError(f"the callback is not in the provider's documented format: {exc}") from None

    def apply() -> feedback.FeedbackReport:
        with c.engine.begin() as conn:
            return feedback.apply_events(conn, events, now=c.clock.now(), workspace_id=str(row["workspace_id"]),
                                         source=f"callback:{row['kind']}")
    report = await run_in_threadpool(apply)
    return CallbackAccepted(events=len(events), applied=report.applied, unmatched=report.unmatched)
