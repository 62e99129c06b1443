"""FastAPI dependencies, as Annotated aliases: the container, the caller, idempotency."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool

from herald.api.problems import herald_problem
from herald.bootstrap import Container
from herald.domain.auth import Principal
from herald.domain.errors import Conflict, HeraldError, InvalidInput
from herald.services import apikeys, idempotency
from herald.services.idempotency import Verdict


def get_container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


ContainerDep = Annotated[Container, Depends(get_container)]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer hsk_…`")


class Unauthorized(HeraldError):
    status = 401
    title = "Unauthorized"
    slug = "unauthorized"
    headers = {"WWW-Authenticate": 'Bearer realm="herald"'}


def authenticate(container: ContainerDep,
                 creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    if creds is None:
        raise Unauthorized("send an API key as `Authorization: Bearer hsk_…`")
    try:
        with container.engine.begin() as conn:
            return apikeys.authenticate(conn, creds.credentials, container.clock.now())
    except apikeys.AuthFailure as exc:
        raise Unauthorized(str(exc)) from None


PrincipalDep = Annotated[Principal, Depends(authenticate)]


def page_limit(limit: Annotated[int, Query(ge=1, le=200, description="items per page")] = 50) -> int:
    return limit


LimitDep = Annotated[int, Depends(page_limit)]
CursorDep = Annotated[str | None, Query(description="`next_cursor` of the previous page")]


# ---- idempotency ----------------------------------------------------------------------------
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


class Replay(Exception):
    """Raised to answer with a stored response (handled in app.py)."""

    def __init__(self, status: int, body: str, headers: dict[str, str]) -> None:
        self.status, self.body, self.headers = status, body, headers


class Idempotency:
    """Handed to create routes. `respond()` writes the response in the route's own transaction."""

    def __init__(self, row_id: int | None) -> None:
        self.row_id = row_id
        self.answered = False

    def respond(self, conn: Connection, status: int, model: BaseModel,
                headers: dict[str, str] | None = None) -> Response:
        body = model.model_dump_json()
        if self.row_id is not None:
            idempotency.complete(conn, self.row_id, status=status, body=body, headers=headers or {})
        self.answered = True
        return Response(body, status_code=status, media_type="application/json", headers=headers)


async def idempotent(request: Request, container: ContainerDep, who: PrincipalDep) -> AsyncIterator[Idempotency]:
    key = request.headers.get("idempotency-key")
    if key is None:
        yield Idempotency(None)
        return
    if not _KEY.match(key):
        raise InvalidInput.on("Idempotency-Key", "must be 1-255 printable ASCII characters (a UUID is ideal)")
    fingerprint = idempotency.request_fingerprint(request.method, request.url.path, await request.body())
    settings = container.settings

    def reserve() -> idempotency.Reservation:
        with container.engine.begin() as conn:
            return idempotency.reserve(
                conn, api_key_id=who.api_key_id, key=key, fingerprint=fingerprint,
                now=container.clock.now(), lock=timedelta(seconds=settings.idempotency_lock_seconds),
                ttl=timedelta(hours=settings.idempotency_ttl_hours))

    found = await run_in_threadpool(reserve)
    if found.verdict is Verdict.REPLAY:
        raise Replay(found.status or 200, found.body or "", found.headers or {})
    if found.verdict is Verdict.MISMATCH:
        raise InvalidInput.on("Idempotency-Key", "was already used with a different request body; "
                              "use a new key for a new request")
    if found.verdict is Verdict.IN_FLIGHT:
        raise Conflict("a request with this Idempotency-Key is still being processed; retry shortly")
    state = Idempotency(found.row_id)
    try:
        yield state
    except HeraldError as exc:  # a refusal is the answer: store it, replay it
        if not state.answered:
            await run_in_threadpool(_store_problem, container, found.row_id, exc, request.url.path)
        raise
    except BaseException:
        await run_in_threadpool(_abandon, container, found.row_id)
        raise
    if not state.answered:
        await run_in_threadpool(_abandon, container, found.row_id)


def _store_problem(container: Container, row_id: int, exc: HeraldError, path: str) -> None:
    body = herald_problem(exc, path)
    with container.engine.begin() as conn:
        idempotency.complete(conn, row_id, status=exc.status, body=json.dumps(body),
                             headers={"content-type": "application/problem+json"})


def _abandon(container: Container, row_id: int) -> None:
    with container.engine.begin() as conn:
        idempotency.abandon(conn, row_id)


IdempotencyDep = Annotated[Idempotency, Depends(idempotent)]

IDEMPOTENCY_HEADER_DOC: dict[str, Any] = {
    "description": "Optional. The same key with the same body returns the stored response; "
                   "with a different body, 422; while the first is still running, 409. Kept 24 h.",
}
