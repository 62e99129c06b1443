from __future__ import annotations

from fastapi import APIRouter, Response

from herald.api.deps import ContainerDep, CursorDep, IdempotencyDep, LimitDep, PrincipalDep
from herald.api.schemas import PROBLEMS, Page, StoreCreate, StoreOut, page_of
from herald.services import workspaces

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
