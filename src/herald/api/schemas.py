"""Request and response bodies. Field-level normalisation (E.164, IANA zones, ...) happens in
services so the CLI and importers share it; these models check shape and size."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from herald.services.pagination import Page as RowsPage

T = TypeVar("T")


class Problem(BaseModel):
    """RFC 7807 problem details (media type application/problem+json)."""

    type: str = Field(examples=["urn:herald:problem:invalid-input"])
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, str]] | None = Field(
        default=None, description="one entry per offending field: {field, reason, in?}")


PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": text, "content": {"application/problem+json": {}}}
    for code, text in {400: "Malformed request", 401: "Missing, unknown or revoked API key",
                       404: "Not found (or not visible to this key)", 409: "Conflict",
                       413: "Request body too large", 422: "Invalid input"}.items()
}


class Page(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null at the end")


M = TypeVar("M", bound=BaseModel)


def page_of(model: type[M], page: RowsPage[dict[str, Any]]) -> Page[M]:
    return Page[model](data=[model.model_validate(r) for r in page.items],  # type: ignore[valid-type]
                       next_cursor=page.next_cursor)


def _nul_path(value: Any, path: str) -> str | None:
    """Where a NUL character hides in a JSON value (PostgreSQL text and JSONB cannot hold one)."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and "\x00" in key:
            return f"{path}.{key!r}".lstrip(".")
        found = _nul_path(item, f"{path}.{key}".lstrip("."))
        if found:
            return found
    return None


class Body(BaseModel):
    """A request body: unknown fields are refused by name, and so is text with NUL characters."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        where = _nul_path(data, "")
        if where:
            raise ValueError(f"{where}: text may not contain NUL (\\u0000) characters")
        return data


class ContactFields(Body):
    email: str | None = Field(default=None, max_length=320, examples=["ana.souza@example.com"])
    phone: str | None = Field(default=None, max_length=40, description="E.164, or national with `country`",
                              examples=["+5511987654321"])
    first_name: str | None = Field(default=None, max_length=200)
    last_name: str | None = Field(default=None, max_length=200)
    country: str | None = Field(default=None, max_length=8, description="ISO 3166-1 alpha-2", examples=["BR"])
    language: str | None = Field(default=None, max_length=35, description="BCP 47", examples=["pt-BR"])
    timezone: str | None = Field(default=None, max_length=64, description="IANA zone", examples=["America/Sao_Paulo"])
    attributes: dict[str, Any] | None = Field(default=None, description="free-form JSON, at most 16 KiB")
    tags: list[str] | None = Field(default=None, max_length=100)
    external_ids: dict[str, str] | None = Field(
        default=None, description="ids in other systems by namespace", examples=[{"shopify": "7012345678"}])
    store_ids: list[str] | None = Field(
        default=None, description="stores to link the contact to (a store key always links its own)")


class ContactCreate(ContactFields):
    """At least one of email, phone or external_ids."""


class ContactUpdate(ContactFields):
    """Only the fields sent change; null clears a field."""


class ContactOut(BaseModel):
    id: str
    email: str | None
    phone: str | None
    first_name: str | None
    last_name: str | None
    country: str | None
    language: str | None
    timezone: str | None
    attributes: dict[str, Any]
    tags: list[str]
    external_ids: dict[str, str]
    store_ids: list[str]
    created_at: datetime
    updated_at: datetime


class StoreCreate(Body):
    name: str = Field(min_length=1, max_length=200)
    platform: str = Field(description="shopify, woocommerce, magento or custom")
    currency: str = Field(min_length=3, max_length=3, description="ISO 4217", examples=["USD"])
    timezone: str = Field(default="UTC", max_length=64)
    domain: str | None = Field(default=None, max_length=255)


class StoreOut(BaseModel):
    id: str
    workspace_id: str
    name: str
    platform: str
    domain: str | None
    currency: str
    timezone: str
    created_at: datetime


class ApiKeyCreate(Body):
    name: str = Field(min_length=1, max_length=200)
    store_id: str | None = Field(default=None, description="scope the key to one store")


class ApiKeyOut(BaseModel):
    id: str
    workspace_id: str
    store_id: str | None
    name: str
    display_prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="the secret itself; shown only in this response")


class Me(BaseModel):
    workspace_id: str
    store_id: str | None
    api_key_id: str
