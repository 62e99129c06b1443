"""The workspace's send-time policy settings (frequency caps, quiet hours, per-country channel
order), sandbox mode, and the count of refusals per reason code."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Body, Query

from herald.api.deps import ContainerDep, PrincipalDep
from herald.api.schemas import PROBLEMS
from herald.domain.auth import Principal
from herald.domain.errors import Forbidden
from herald.domain.policy import DEFAULT_SETTINGS_JSON, settings_json
from herald.services import policy, sandbox

router = APIRouter(tags=["policy"], responses=PROBLEMS)

_EXAMPLE = dict(DEFAULT_SETTINGS_JSON)


def _workspace_key(who: Principal) -> None:
    if who.store_id is not None:
        raise Forbidden("policy settings belong to the workspace: use a workspace API key")


@router.get("/settings/policy", summary="The workspace's send-time policy settings (defaults filled in)")
def get_policy(who: PrincipalDep, c: ContainerDep) -> dict[str, Any]:
    with c.engine.begin() as conn:
        return settings_json(policy.get_settings(conn, who.workspace_id))


@router.put("/settings/policy", summary="Replace the policy settings (absent keys take the defaults)")
def put_policy(who: PrincipalDep, c: ContainerDep,
               body: dict[str, Any] = Body(..., examples=[_EXAMPLE])) -> dict[str, Any]:
    _workspace_key(who)
    with c.engine.begin() as conn:
        return settings_json(policy.put_settings(conn, who.workspace_id, body))


@router.get("/reports/refusals", summary="Messages the policy refused or deferred, per reason and channel")
def refusals(who: PrincipalDep, c: ContainerDep,
             since: datetime | None = Query(None, description="created at or after (ISO 8601)"),
             until: datetime | None = Query(None, description="created before (ISO 8601)")) -> dict[str, Any]:
    with c.engine.begin() as conn:
        rows = policy.refusal_counts(conn, who.workspace_id, since=since, until=until, store_id=who.store_id)
    return {"data": rows, "total": sum(r["count"] for r in rows)}


@router.get("/settings/sandbox", summary="Whether the workspace is in sandbox mode (nothing leaves Herald)")
def get_sandbox(who: PrincipalDep, c: ContainerDep) -> dict[str, bool]:
    with c.engine.begin() as conn:
        return {"enabled": sandbox.enabled(conn, who.workspace_id)}


@router.put("/settings/sandbox", summary="Turn sandbox mode on or off (outcomes simulated per address pattern)")
def put_sandbox(who: PrincipalDep, c: ContainerDep,
                body: dict[str, Any] = Body(..., examples=[{"enabled": True}])) -> dict[str, bool]:
    _workspace_key(who)
    with c.engine.begin() as conn:
        return {"enabled": sandbox.set_enabled(conn, who.workspace_id, body.get("enabled"))}
