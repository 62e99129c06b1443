"""Inbound store webhooks: `POST /hooks/{platform}/{store_id}`.

The signature is checked on the raw body before anything is parsed or stored (bad -> 401,
nothing stored); the delivery is committed, with its processing job, before the 200; a replay
of the same delivery id answers 200 again and changes nothing. Processing happens after commit
in the `intake.webhook` job, so platforms get their acknowledgement fast."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from herald.api.deps import ContainerDep
from herald.api.schemas import PROBLEMS
from herald.bootstrap import Container
from herald.domain.errors import NotFound
from herald.services import intake, stores

router = APIRouter(prefix="/hooks", tags=["store webhooks"], responses=PROBLEMS)


class HookAccepted(BaseModel):
    delivery_id: str
    topic: str
    duplicate: bool


@router.post("/{platform}/{store_id}", response_model=HookAccepted,
             summary="Receive a store platform's webhook (Shopify, WooCommerce, Magento, custom site)")
async def receive_hook(platform: str, store_id: str, request: Request, c: ContainerDep) -> HookAccepted:
    connector = c.connectors.get(platform)
    if connector is None:
        raise NotFound(f"no webhook connector {platform!r}; use one of {', '.join(sorted(c.connectors))}")
    body = await request.body()
    headers = {k.lower(): v for k, v in request.headers.items()}
    receipt = await run_in_threadpool(_receive, c, platform, store_id, headers, body)
    if not receipt.duplicate:
        c.notifier.notify()
    return HookAccepted(delivery_id=receipt.delivery_id, topic=receipt.topic, duplicate=receipt.duplicate)


def _receive(c: Container, platform: str, store_id: str, headers: dict[str, str], body: bytes) -> intake.Receipt:
    now = c.clock.now()
    with c.engine.begin() as conn:
        keys = stores.webhook_keys(conn, store_id, platform, master_key=c.master_key, now=now)
    info = intake.check_signature(c.connectors[platform], keys, headers, body, now)
    with c.engine.begin() as conn:
        return intake.receive(conn, keys, info, headers, body, now)
