from __future__ import annotations

from fastapi import APIRouter, Query, Response

from herald.api.deps import ContainerDep, CursorDep, IdempotencyDep, LimitDep, PrincipalDep
from herald.api.schemas import PROBLEMS, ContactCreate, ContactOut, ContactUpdate, Page, page_of
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
