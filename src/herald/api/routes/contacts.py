from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from herald.api.deps import ContainerDep, CursorDep, IdempotencyDep, LimitDep, PrincipalDep
from herald.api.schemas import (
    PROBLEMS,
    ContactCreate,
    ContactMerge,
    ContactMergeOut,
    ContactOut,
    ContactUpdate,
    Page,
    page_of,
)
from herald.services import contacts

router = APIRouter(prefix="/contacts", tags=["contacts"], responses=PROBLEMS)


@router.get("", response_model=Page[ContactOut], summary="List contacts (oldest first)")
def list_contacts(
    who: PrincipalDep, c: ContainerDep, limit: LimitDep, cursor: CursorDep = None,
    email: str | None = Query(default=None, description="exact match after normalisation"),
    phone: str | None = Query(default=None, description="E.164"),
    store_id: str | None = Query(default=None, description="only contacts linked to this store"),
) -> Page[ContactOut]:
    with c.engine.begin() as conn:
        page = contacts.list_contacts(conn, who, limit=limit, cursor=cursor, email=email,
                                      phone=phone, store_id=store_id)
    return page_of(ContactOut, page)


@router.post("", status_code=201, response_model=ContactOut, summary="Create a contact")
def create_contact(body: ContactCreate, who: PrincipalDep, c: ContainerDep, idem: IdempotencyDep) -> Response:
    with c.engine.begin() as conn:
        row = contacts.create_contact(conn, who, body.model_dump(exclude_unset=True), c.clock.now())
        return idem.respond(conn, 201, ContactOut.model_validate(row),
                            {"Location": f"/api/v1/contacts/{row['id']}"})


@router.get("/{contact_id}", response_model=ContactOut, summary="Get a contact")
def get_contact(contact_id: str, who: PrincipalDep, c: ContainerDep) -> ContactOut:
    with c.engine.begin() as conn:
        return ContactOut.model_validate(contacts.get_contact(conn, who, contact_id))


@router.patch("/{contact_id}", response_model=ContactOut, summary="Update a contact")
def update_contact(contact_id: str, body: ContactUpdate, who: PrincipalDep, c: ContainerDep) -> ContactOut:
    with c.engine.begin() as conn:
        row = contacts.update_contact(conn, who, contact_id, body.model_dump(exclude_unset=True),
                                      c.clock.now())
        return ContactOut.model_validate(row)


@router.delete("/{contact_id}", status_code=204, summary="Delete a contact",
               description="A workspace key deletes the contact. A store key unlinks it from its "
                           "store and deletes it only if no other store knows it.")
def delete_contact(contact_id: str, who: PrincipalDep, c: ContainerDep) -> Response:
    with c.engine.begin() as conn:
        contacts.delete_contact(conn, who, contact_id)
    return Response(status_code=204)


def visible_contact(contact_id: str, who: PrincipalDep, c: ContainerDep) -> str:
    """The path's contact, or 404 before the body is validated: an id the key cannot see is
    answered 404 whatever the body (it reveals nothing, and probes learn nothing from a 422)."""
    with c.engine.begin() as conn:
        contacts.get_contact(conn, who, contact_id)
    return contact_id


VisibleContactDep = Annotated[str, Depends(visible_contact)]


@router.post("/{contact_id}/merge", response_model=ContactOut, summary="Merge another contact into this one",
             description="The same person under two contacts (say a guest checkout and an account): "
                         "everything of `merge_id` (email, phone, external ids, store links, orders, "
                         "checkouts, events, messages, consent records) moves to this contact, its "
                         "empty profile fields are filled, tags are unioned and attributes merged "
                         "(this contact's values win), the commerce aggregates are recomputed and "
                         "`merge_id` is deleted (its id then answers 404). Recorded, with the reason "
                         "and the key that did it, in `GET /contacts/{contact_id}/merges`. Cannot be "
                         "undone. A store key may merge only contacts linked to its store. Accepts "
                         "an `Idempotency-Key` header.")
def merge_contact(contact_id: VisibleContactDep, body: ContactMerge, who: PrincipalDep, c: ContainerDep,
                  idem: IdempotencyDep) -> Response:
    with c.engine.begin() as conn:
        row = contacts.merge_contacts(conn, who, contact_id, body.merge_id, reason=body.reason, now=c.clock.now())
        return idem.respond(conn, 200, ContactOut.model_validate(row))


@router.get("/{contact_id}/merges", response_model=Page[ContactMergeOut],
            summary="The contacts merged into this one (oldest first)")
def list_merges(contact_id: str, who: PrincipalDep, c: ContainerDep, limit: LimitDep,
                cursor: CursorDep = None) -> Page[ContactMergeOut]:
    with c.engine.begin() as conn:
        page = contacts.list_merges(conn, who, contact_id, limit=limit, cursor=cursor)
    return page_of(ContactMergeOut, page)
