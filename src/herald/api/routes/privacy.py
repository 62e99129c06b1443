"""GDPR/CCPA over the API (services/privacy.py, services/retention.py): export everything held
about a contact, erase a contact, and the workspace's retention limits.

A store-scoped key exports only contacts linked to its store, with only its store's rows; it may
not erase (erasure removes the person from every store of the workspace: 403, after the usual 404
for a contact it cannot see) nor read or change retention (403)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from herald.api.deps import ContainerDep, IdempotencyDep, PrincipalDep
from herald.api.routes.suppressions import WorkspaceCallerDep
from herald.api.schemas import PROBLEMS
from herald.api.schemas import Body as RequestBody
from herald.domain.errors import Forbidden
from herald.services import contacts, privacy, retention

router = APIRouter(tags=["privacy"], responses={**PROBLEMS, 403: {
    "description": "A store-scoped API key where a workspace key is needed"}})


class ErasureOut(BaseModel):
    erasure_id: int
    contact_id: str = Field(description="no longer exists; its id answers 404")
    removed: dict[str, int] = Field(description="rows deleted, detached or blanked, per kind")
    tombstones: int = Field(description="erased-address tombstones on the suppression list")


class RetentionOut(BaseModel):
    retention_days: dict[str, int] = Field(description="the limits in force, in days, per kind")
    overrides: dict[str, int] = Field(description="what this workspace set (other kinds use the default)")
    defaults: dict[str, int]


class RetentionIn(RequestBody):
    retention_days: dict[str, Any] = Field(
        description=f"days per kind ({', '.join(retention.DEFAULTS)}), whole numbers 1-{retention.MAX_DAYS}; "
                    "a kind left out uses its default", examples=[{"events": 365, "messages": 180}])


@router.get("/contacts/{contact_id}/export", summary="Everything held about a contact (GDPR/CCPA access)",
            description="One JSON document: the contact, contacts merged into it, identities, store links, "
                        "merges, suppressions of its addresses, consent history, checkouts, orders with lines, "
                        "fulfilments and refunds, events, and messages with their delivery events. Streamed; "
                        "dates are ISO 8601. A store key sees only its store's rows (`scope.store_id`).",
            responses={200: {"content": {"application/json": {}}}})
def export_contact(contact_id: str, who: PrincipalDep, c: ContainerDep) -> StreamingResponse:
    # Checked now (404 before any output); then read a page per short transaction while streaming.
    chunks = privacy.export_contact(c.engine, who.workspace_id, contact_id, now=c.clock.now(),
                                    tombstone_key=c.tombstone_key, store_id=who.store_id)
    return StreamingResponse(chunks, media_type="application/json", headers={
        "Content-Disposition": f'attachment; filename="contact-{contact_id}.json"'})


@router.post("/contacts/{contact_id}/erase", response_model=ErasureOut, summary="Erase a contact (GDPR/CCPA)",
             description="In one transaction: the contact's addresses become hashed `erased` tombstones on the "
                         "suppression list (so they stay suppressed); its events, checkouts, consent records, "
                         "identities and store links are deleted; its messages keep counts and cost but lose "
                         "every personal detail; its orders keep their amounts without the contact; contacts "
                         "merged into it are erased too. Recorded (with the counts) in the erasure log. Cannot "
                         "be undone; a second erase answers 404. Workspace keys only. Accepts an "
                         "`Idempotency-Key` header.")
def erase_contact(contact_id: str, who: PrincipalDep, c: ContainerDep, idem: IdempotencyDep) -> Response:
    with c.engine.begin() as conn:
        if who.store_id is not None:
            contacts.get_contact(conn, who, contact_id)  # 404 for a contact the key cannot see
            raise Forbidden("erasure removes the person from every store of the workspace: use a workspace API key")
        done = privacy.erase(conn, who.workspace_id, contact_id, tombstone_key=c.tombstone_key,
                             actor=who.api_key_id, now=c.clock.now())
        return idem.respond(conn, 200, ErasureOut(erasure_id=done.erasure_id, contact_id=done.contact_id,
                                                  removed=done.removed, tombstones=done.tombstones))


@router.get("/settings/retention", response_model=RetentionOut, summary="How long each kind of data is kept")
def get_retention(who: WorkspaceCallerDep, c: ContainerDep) -> RetentionOut:
    with c.engine.begin() as conn:
        return RetentionOut.model_validate(retention.get_settings(conn, who.workspace_id))


@router.put("/settings/retention", response_model=RetentionOut, summary="Set how long each kind of data is kept",
            description="Replaces the workspace's retention limits; data older than its limit is deleted by the "
                        "`privacy.retention` job (every 6 hours).")
def put_retention(body: RetentionIn, who: WorkspaceCallerDep, c: ContainerDep) -> RetentionOut:
    with c.engine.begin() as conn:
        return RetentionOut.model_validate(retention.set_settings(conn, who.workspace_id, body.retention_days))
