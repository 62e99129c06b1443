"""A contact's push subscriptions (Web Push endpoints, FCM and APNs tokens): register, list, retire."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from herald.api.deps import ContainerDep, IdempotencyDep, PrincipalDep
from herald.api.schemas import PROBLEMS, Body
from herald.services import push_subscriptions

router = APIRouter(prefix="/contacts", tags=["push"], responses=PROBLEMS)


class PushSubscriptionIn(Body):
    # Required, but checked by the service after the contact: a foreign contact answers 404 whatever the body.
    kind: Literal["webpush", "fcm", "apns"] | None = Field(default=None, description="required")
    token: str | None = Field(default=None, max_length=2000,
                              description="required. Web Push: the subscription's endpoint URL; FCM/APNs: the "
                                          "device token")
    keys: dict[str, str] | None = Field(default=None, description="Web Push only: {p256dh, auth} (base64url)")
    user_agent: str | None = Field(default=None, max_length=512)


class PushSubscriptionOut(BaseModel):
    id: str
    contact_id: str
    kind: str
    token: str
    created_at: datetime
    retired_at: datetime | None
    retired_reason: str | None


@router.post("/{contact_id}/push-subscriptions", status_code=201, response_model=PushSubscriptionOut,
             summary="Register a push subscription for a contact (the same token again refreshes it)")
def register(contact_id: str, body: PushSubscriptionIn, who: PrincipalDep, c: ContainerDep,
             idem: IdempotencyDep) -> Response:
    with c.engine.begin() as conn:
        row = push_subscriptions.register(conn, who, contact_id, kind=body.kind, token=body.token, keys=body.keys,
                                          user_agent=body.user_agent, now=c.clock.now())
        return idem.respond(conn, 201, PushSubscriptionOut.model_validate(row))


@router.get("/{contact_id}/push-subscriptions", response_model=list[PushSubscriptionOut],
            summary="A contact's push subscriptions, retired ones included")
def list_subscriptions(contact_id: str, who: PrincipalDep, c: ContainerDep) -> list[PushSubscriptionOut]:
    with c.engine.begin() as conn:
        return [PushSubscriptionOut.model_validate(r) for r in push_subscriptions.list_for(conn, who, contact_id)]


@router.delete("/{contact_id}/push-subscriptions/{subscription_id}", status_code=204,
               summary="Retire a push subscription (the browser or app unsubscribed)")
def retire(contact_id: str, subscription_id: str, who: PrincipalDep, c: ContainerDep) -> Response:
    with c.engine.begin() as conn:
        push_subscriptions.retire(conn, who, contact_id, subscription_id, c.clock.now())
    return Response(status_code=204)
