"""RFC 7807 (RFC 9457) problem details for every error the API returns."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from herald.domain.errors import HeraldError

log = structlog.get_logger("herald.api")
MEDIA_TYPE = "application/problem+json"


def problem(status: int, detail: str, *, slug: str | None = None, title: str | None = None,
            errors: list[dict[str, str]] | None = None, instance: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"urn:herald:problem:{slug}" if slug else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    return body


def herald_problem(exc: HeraldError, instance: str | None = None) -> dict[str, Any]:
    return problem(exc.status, exc.detail, slug=exc.slug, title=exc.title, instance=instance,
                   errors=[{"field": f.field, "reason": f.reason} for f in exc.fields] or None)


def respond(body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=body["status"], media_type=MEDIA_TYPE, headers=headers)


def _field(loc: tuple[Any, ...]) -> tuple[str, str]:
    where = str(loc[0]) if loc else "body"
    return ".".join(str(p) for p in loc[1:]) or where, where


async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            why = err.get("ctx", {}).get("error", err["msg"])
            return respond(problem(400, f"the request body is not valid JSON: {why}",
                                   slug="malformed-json", instance=request.url.path))
        field, where = _field(tuple(err.get("loc", ())))
        reason = "required" if err.get("type") == "missing" else err["msg"]
        if err.get("type") == "extra_forbidden":
            reason = "unknown field; check its spelling against the API reference"
        errors.append({"field": field, "in": where, "reason": reason})
    detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
    return respond(problem(422, detail, slug="invalid-input", title="Invalid input", errors=errors,
                           instance=request.url.path))


async def _on_herald_error(request: Request, exc: HeraldError) -> JSONResponse:
    return respond(herald_problem(exc, request.url.path), headers=exc.headers or None)


async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).description
    return respond(problem(exc.status_code, detail, instance=request.url.path),
                   headers=getattr(exc, "headers", None))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", path=request.url.path, method=request.method)
    return respond(problem(500, "an unexpected error occurred; it has been logged",
                           instance=request.url.path))


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation)  # type: ignore[arg-type]
    app.add_exception_handler(HeraldError, _on_herald_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _on_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _on_unexpected)
