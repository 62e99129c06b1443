"""Errors a caller can act on. Entry points translate them (RFC 7807 in the API, one line in
the CLI); services raise them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldProblem:
    field: str  # dotted path in the request, e.g. "email" or "store_ids.0"
    reason: str


class HeraldError(Exception):
    status = 400
    title = "Bad request"
    slug = "bad-request"
    headers: dict[str, str] = {}

    def __init__(self, detail: str, *, fields: list[FieldProblem] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fields = fields or []


class NotFound(HeraldError):
    status = 404
    title = "Not found"
    slug = "not-found"


class Conflict(HeraldError):
    status = 409
    title = "Conflict"
    slug = "conflict"


class InvalidInput(HeraldError):
    status = 422
    title = "Invalid input"
    slug = "invalid-input"

    @classmethod
    def on(cls, field: str, reason: str) -> InvalidInput:
        return cls(f"{field}: {reason}", fields=[FieldProblem(field, reason)])


class Forbidden(HeraldError):
    status = 403
    title = "Forbidden"
    slug = "forbidden"


class BadSignature(HeraldError):
    """An inbound webhook or callback whose signature does not verify (nothing is stored)."""

    status = 401
    title = "Unauthorized"
    slug = "bad-signature"


class Unavailable(HeraldError):
    """Nothing was stored or done; the caller should retry after `Retry-After` seconds."""

    status = 503
    title = "Service unavailable"
    slug = "unavailable"
    headers = {"Retry-After": "1"}

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}
