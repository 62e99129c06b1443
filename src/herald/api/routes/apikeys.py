from __future__ import annotations

from fastapi import APIRouter, Response

from herald.api.deps import ContainerDep, CursorDep, IdempotencyDep, LimitDep, PrincipalDep
from herald.api.schemas import PROBLEMS, ApiKeyCreate, ApiKeyCreated, ApiKeyOut, Page, page_of
from herald.services import apikeys

router = APIRouter(prefix="/api-keys", tags=["api keys"], responses=PROBLEMS)


@router.get("", response_model=Page[ApiKeyOut], summary="List API keys (never their secrets)")
def list_keys(who: PrincipalDep, c: ContainerDep, limit: LimitDep, cursor: CursorDep = None) -> Page[ApiKeyOut]:
    with c.engine.begin() as conn:
        page = apikeys.list_keys(conn, who, limit=limit, cursor=cursor)
    return page_of(ApiKeyOut, page)


@router.post("", status_code=201, response_model=ApiKeyCreated,
             summary="Create an API key; the secret is in this response only",
             description="A store-scoped key can only create keys for its own store.")
def create_key(body: ApiKeyCreate, who: PrincipalDep, c: ContainerDep, idem: IdempotencyDep) -> Response:
    with c.engine.begin() as conn:
        row, secret = apikeys.create_key_as(conn, who, name=body.name, store_id=body.store_id,
                                            now=c.clock.now())
        return idem.respond(conn, 201, ApiKeyCreated(**row, key=secret),
                            {"Location": f"/api/v1/api-keys/{row['id']}"})


@router.get("/{key_id}", response_model=ApiKeyOut, summary="Get an API key")
def get_key(key_id: str, who: PrincipalDep, c: ContainerDep) -> ApiKeyOut:
    with c.engine.begin() as conn:
        return ApiKeyOut.model_validate(apikeys.get_key(conn, who, key_id))


@router.delete("/{key_id}", response_model=ApiKeyOut, summary="Revoke an API key (effective at once)")
def revoke_key(key_id: str, who: PrincipalDep, c: ContainerDep) -> ApiKeyOut:
    with c.engine.begin() as conn:
        return ApiKeyOut.model_validate(apikeys.revoke_key(conn, who, key_id, c.clock.now()))
