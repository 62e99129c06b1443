from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from herald.api.deps import ContainerDep, PrincipalDep
from herald.api.schemas import PROBLEMS, Me

router = APIRouter(tags=["meta"])


@router.get("/api/v1/me", response_model=Me, responses=PROBLEMS, summary="Who this API key is")
def me(who: PrincipalDep) -> Me:
    return Me(workspace_id=who.workspace_id, store_id=who.store_id, api_key_id=who.api_key_id)


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the database answers")
def readyz(c: ContainerDep) -> dict[str, str]:
    with c.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return {"status": "ready"}
