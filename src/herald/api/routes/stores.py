from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from herald.api.deps import ContainerDep, CursorDep, IdempotencyDep, LimitDep, PrincipalDep
from herald.api.schemas import (
    PROBLEMS,
    Page,
    StoreConnectionOut,
    StoreConnectionUpdate,
    StoreCreate,
    StoreOut,
    StoreSenderOut,
    StoreSenderUpdate,
    WriteKeyCreated,
    page_of,
)
from herald.bootstrap import Container
from herald.services import stores, workspaces

router = APIRouter(prefix="/stores", tags=["stores"], responses=PROBLEMS)


@router.get("", response_model=Page[StoreOut], summary="List the stores this key can see")
def list_stores(who: PrincipalDep, c: ContainerDep, limit: LimitDep, cursor: CursorDep = None) -> Page[StoreOut]:
    with c.engine.begin() as conn:
        page = workspaces.list_stores(conn, who, limit=limit, cursor=cursor)
    return page_of(StoreOut, page)


@router.post("", status_code=201, response_model=StoreOut, summary="Add a store (workspace keys only)")
def create_store(body: StoreCreate, who: PrincipalDep, c: ContainerDep, idem: IdempotencyDep) -> Response:
    with c.engine.begin() as conn:
        row = workspaces.create_store(conn, who, now=c.clock.now(), **body.model_dump())
        return idem.respond(conn, 201, StoreOut.model_validate(row), {"Location": f"/api/v1/stores/{row['id']}"})


@router.get("/{store_id}", response_model=StoreOut, summary="Get a store")
def get_store(store_id: str, who: PrincipalDep, c: ContainerDep) -> StoreOut:
    with c.engine.begin() as conn:
        return StoreOut.model_validate(workspaces.get_store(conn, who, store_id))


def _connection(c: Container, row: dict[str, Any]) -> StoreConnectionOut:
    return StoreConnectionOut(store_id=row["id"], platform=row["platform"],
                              webhook_url=f"{c.settings.public_base_url}/hooks/{row['platform']}/{row['id']}",
                              **stores.connection_summary(row))


@router.get("/{store_id}/connection", response_model=StoreConnectionOut,
            summary="The store's platform connection (whether secrets are set; never the secrets)")
def get_connection(store_id: str, who: PrincipalDep, c: ContainerDep) -> StoreConnectionOut:
    with c.engine.begin() as conn:
        return _connection(c, workspaces.get_store(conn, who, store_id))


@router.patch("/{store_id}/connection", response_model=StoreConnectionOut,
              summary="Set the webhook secret (rotation keeps the previous one valid 3 days) or API credentials")
def update_connection(store_id: str, body: StoreConnectionUpdate, who: PrincipalDep,
                      c: ContainerDep) -> StoreConnectionOut:
    now = c.clock.now()
    with c.engine.begin() as conn:
        row = workspaces.get_store(conn, who, store_id)
        if body.webhook_secret is not None:
            row = stores.set_webhook_secret(conn, who, store_id, body.webhook_secret, master_key=c.master_key, now=now)
        if body.api_base_url is not None or body.api_credentials is not None:
            base_url = body.api_base_url or row["api_base_url"] or ""
            row = stores.set_api_credentials(conn, who, store_id, base_url=base_url,
                                             credentials=body.api_credentials or {}, master_key=c.master_key)
        return _connection(c, row)


@router.post("/{store_id}/write-key", status_code=201, response_model=WriteKeyCreated,
             summary="Create the store's Segment-spec write key (replaces the previous one); shown once")
def create_write_key(store_id: str, who: PrincipalDep, c: ContainerDep, idem: IdempotencyDep) -> Response:
    with c.engine.begin() as conn:
        row, key = stores.create_write_key(conn, who, store_id)
        return idem.respond(conn, 201, WriteKeyCreated(store_id=row["id"], write_key=key,
                                                       write_key_prefix=row["write_key_prefix"]))


def _sender(row: dict[str, Any]) -> StoreSenderOut:
    return StoreSenderOut(store_id=row["id"], email_from=row["email_from"], email_from_name=row["email_from_name"],
                          postal_address=row["postal_address"])


@router.get("/{store_id}/sender", response_model=StoreSenderOut, summary="The store's email sender identity")
def get_sender(store_id: str, who: PrincipalDep, c: ContainerDep) -> StoreSenderOut:
    with c.engine.begin() as conn:
        return _sender(workspaces.get_store(conn, who, store_id))


@router.patch("/{store_id}/sender", response_model=StoreSenderOut,
              summary="Set the From address and name, and the postal address printed in marketing email")
def update_sender(store_id: str, body: StoreSenderUpdate, who: PrincipalDep, c: ContainerDep) -> StoreSenderOut:
    with c.engine.begin() as conn:
        return _sender(stores.set_sender(conn, who, store_id, **body.model_dump()))
