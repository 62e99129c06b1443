"""Send a message to a contact on a channel, a channel order or the "best channel", and read a
message with its history (the send log's entry)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from herald.api.deps import ContainerDep, IdempotencyDep, PrincipalDep
from herald.api.schemas import PROBLEMS, Body
from herald.services import sending

router = APIRouter(prefix="/messages", tags=["messages"], responses=PROBLEMS)

ChannelName = Literal["email", "sms", "whatsapp", "push", "inbox"]


class MessageSend(Body):
    contact_id: str
    channel: Literal["best"] | ChannelName | list[ChannelName] = Field(
        description='"best" (the workspace\'s order for the contact\'s country), one channel, or an order to '
                    "fall back along")
    templates: dict[ChannelName, str] = Field(description="template id or name per channel the send may use",
                                              min_length=1)
    store_id: str | None = None
    purpose: Literal["marketing", "transactional"] | None = Field(
        default=None, description="the template's purpose when omitted")
    context: dict[str, Any] = Field(default_factory=dict,
                                    description='references the template talks about: {"order_id": ...}, '
                                                '{"checkout_id": ...}, {"variables": {...}}')


class MessagesQueued(BaseModel):
    message_ids: list[str]


class MessageEventOut(BaseModel):
    status: str
    reason: str | None
    detail: dict[str, Any]
    occurred_at: datetime


class MessageOut(BaseModel):
    id: str
    contact_id: str | None
    store_id: str | None
    channel: str
    purpose: str
    to_address: str
    status: str
    status_reason: str | None
    provider: str | None
    provider_message_id: str | None
    template_id: str | None
    created_at: datetime
    sent_at: datetime | None
    history: list[MessageEventOut]


@router.post("", status_code=201, response_model=MessagesQueued,
             summary="Queue a message to a contact (checked against the policy when it is sent)")
def send_message(body: MessageSend, who: PrincipalDep, c: ContainerDep, idem: IdempotencyDep) -> Response:
    template_ids = {str(channel): ref for channel, ref in body.templates.items()}
    with c.engine.begin() as conn:
        ids = sending.send_to_contact(conn, who, contact_id=body.contact_id, channel=body.channel,
                                      template_ids=template_ids, now=c.clock.now(), store_id=body.store_id,
                                      context=body.context, purpose=body.purpose)
        return idem.respond(conn, 201, MessagesQueued(message_ids=ids),
                            {"Location": f"/api/v1/messages/{ids[0]}"} if ids else None)


@router.get("/{message_id}", response_model=MessageOut, summary="A message, its status and its history")
def get_message(message_id: str, who: PrincipalDep, c: ContainerDep) -> MessageOut:
    with c.engine.begin() as conn:
        return MessageOut.model_validate(sending.get_message(conn, who, message_id))
