from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query

from herald.api.deps import ContainerDep, CursorDep, LimitDep, PrincipalDep
from herald.api.schemas import PROBLEMS, Page, WebhookDeliveryOut, page_of
from herald.services import intake

router = APIRouter(prefix="/webhook-deliveries", tags=["store webhooks"], responses=PROBLEMS)
Status = Literal["received", "processed", "unknown_topic", "failed"]


@router.get("", response_model=Page[WebhookDeliveryOut],
            summary="Inbound store webhooks, oldest first (filter by status to see unknown topics or failures)")
def list_deliveries(who: PrincipalDep, c: ContainerDep, limit: LimitDep, cursor: CursorDep = None,
                    status: Status | None = Query(default=None), store_id: str | None = Query(default=None),
                    ) -> Page[WebhookDeliveryOut]:
    with c.engine.begin() as conn:
        page = intake.list_deliveries(conn, who, limit=limit, cursor=cursor, status=status, store_id=store_id)
    return page_of(WebhookDeliveryOut, page)


@router.get("/{delivery_id}", response_model=WebhookDeliveryOut, summary="One inbound store webhook")
def get_delivery(delivery_id: str, who: PrincipalDep, c: ContainerDep) -> WebhookDeliveryOut:
    with c.engine.begin() as conn:
        return WebhookDeliveryOut.model_validate(intake.get_delivery(conn, who, delivery_id))
