"""Request and response bodies. Field-level normalisation (E.164, IANA zones, ...) happens in
services so the CLI and importers share it; these models check shape and size."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from herald.domain.money import from_minor
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
    external_ids: dict[str, str] = Field(
        description="ids in other systems by namespace; a store's own customer ids are under `store:<store id>`")
    store_ids: list[str]
    orders_count: int = Field(default=0, description="orders placed, cancelled ones excluded")
    total_spent: dict[str, str] = Field(
        default_factory=dict, examples=[{"USD": "1250.00", "JPY": "3000"}],
        description="net of refunds, per ISO 4217 currency (never converted), as a decimal string in "
                    "major units with the currency's own decimals; cancelled orders excluded")
    total_spent_minor: dict[str, int] = Field(
        default_factory=dict, examples=[{"USD": 125000, "JPY": 3000}],
        description="the same amounts as integers in minor units (cents), exact for arithmetic")
    first_order_at: datetime | None = None
    last_order_at: datetime | None = None
    last_checkout_at: datetime | None = Field(default=None, description="latest checkout started")
    created_at: datetime
    updated_at: datetime

    @model_validator(mode="before")
    @classmethod
    def _money(cls, data: Any) -> Any:
        """A contact row stores total_spent in minor units; show both forms."""
        if isinstance(data, dict) and "total_spent_minor" not in data:
            minor = {cur: int(v) for cur, v in (data.get("total_spent") or {}).items()}
            data = {**data, "total_spent_minor": minor,
                    "total_spent": {cur: format(from_minor(v, cur), "f") for cur, v in minor.items()}}
        return data


class ContactMerge(Body):
    merge_id: str = Field(min_length=1, max_length=64, description="the contact to merge in; it is deleted")
    reason: str = Field(min_length=1, max_length=200, examples=["same buyer: guest checkout and account"],
                        description="kept in the merge record")


class ContactMergeOut(BaseModel):
    id: int
    kept_contact_id: str
    merged_contact_id: str = Field(description="no longer exists; its id answers 404")
    reason: str
    actor: str = Field(description="the API key id that merged, or `cli`")
    created_at: datetime


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


# ---- store connections and inbound webhooks (issue 3) -------------------------------------
class StoreConnectionUpdate(Body):
    """Only the fields sent change. Secrets are write-only: they are never shown again."""

    webhook_secret: str | None = Field(
        default=None, min_length=8, max_length=4096,
        description="the secret (Shopify app secret, WooCommerce webhook secret, Standard Webhooks "
                    "`whsec_…`) or, for Magento, the PEM public key deliveries are signed with; the "
                    "previous secret keeps verifying for 3 days")
    api_base_url: str | None = Field(default=None, max_length=500, examples=["https://aurora.myshopify.com"])
    api_credentials: dict[str, str] | None = Field(
        default=None, description="shopify: {access_token}; woocommerce: {consumer_key, consumer_secret}")


class StoreConnectionOut(BaseModel):
    store_id: str
    platform: str
    webhook_url: str = Field(description="paste this into the platform's webhook settings")
    webhook_secret_set: bool
    previous_webhook_secret_until: datetime | None
    api_base_url: str | None
    api_credentials_set: bool
    write_key_prefix: str | None
    sync_state: dict[str, Any]


class WriteKeyCreated(BaseModel):
    store_id: str
    write_key: str = Field(description="Segment-spec write key; shown only in this response")
    write_key_prefix: str


class WebhookDeliveryOut(BaseModel):
    id: str
    store_id: str
    platform: str
    topic: str
    dedupe_key: str
    status: str = Field(description="received, processed, unknown_topic or failed")
    detail: str | None
    duplicates: int = Field(description="how many replays of this delivery arrived (and changed nothing)")
    received_at: datetime
    processed_at: datetime | None


# ---- CSV imports (issue 3) ------------------------------------------------------------------------
class ImportColumn(BaseModel):
    index: int = Field(description="0-based position in the header")
    column: str = Field(description="the header's name for it")
    field: str = Field(description="what it is imported as, e.g. email, phone, tags, attributes.tier")


class ImportOut(BaseModel):
    id: str
    store_id: str | None
    kind: str = Field(description="contacts or orders")
    state: str = Field(description="pending, running, completed, failed (resumable) or cancelled")
    source_name: str = Field(description="the uploaded file's name")
    size_bytes: int
    bytes_done: int = Field(description="byte offset of the last committed batch (the resume checkpoint)")
    line: int = Field(description="physical line number of the last committed batch")
    encoding: str | None = Field(description="detected or given, e.g. utf-8, utf-8-sig, utf-16, cp1252")
    delimiter: str | None = None
    default_country: str | None = None
    mapping: list[ImportColumn] = Field(description="the columns imported (detected, then overridden)")
    rows_ok: int = Field(description="rows (orders, for an order import) that created or changed something")
    rows_unchanged: int = Field(description="rows already imported exactly so (a re-run changes nothing)")
    rows_failed: int = Field(description="rows not imported; see the error report")
    errors: int | None = Field(default=None, description="entries in the error report (also values dropped "
                                                         "from rows that were imported); not given in lists")
    error: str | None = Field(description="why the import stopped, if it did")
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @model_validator(mode="before")
    @classmethod
    def _from_row(cls, data: Any) -> Any:
        """An `imports` row keeps the checkpoint and options in its own shape."""
        if isinstance(data, dict) and "offset" in data:
            options = data.get("options") or {}
            data = {**data, "bytes_done": data["offset"], "mapping": (data.get("mapping") or {}).get("columns", []),
                    "delimiter": options.get("delimiter"), "default_country": options.get("default_country")}
        return data


# ---- email: templates and store senders (issue 4) -----------------------------------------
class TemplateVariantIn(Body):
    """One language variant. Which fields it has depends on the template's channel; a field the
    channel does not use is refused by name:
    email: subject, body (+ body_format, text, preheader) · sms: body · push: title, body (+ url, icon) ·
    inbox: title, body (+ url) · whatsapp: a Meta template (template_name, template_language, parameters)
    or a session message (body), the same kind in every variant.
    Text fields are Liquid, except body_format, icon, template_name and template_language."""

    subject: str | None = Field(default=None, max_length=998, description="email (required): the subject line",
                                examples=["Your order {{ order.name }}"])
    body: str | None = Field(default=None, max_length=1_000_000,
                             description="email (required): MJML (default) or HTML; sms, push, inbox (required) and "
                                         "WhatsApp session messages: the message text")
    body_format: Literal["mjml", "html"] | None = Field(default=None, description="email: mjml (default) or html")
    text: str | None = Field(default=None, max_length=1_000_000,
                             description="email: plain-text part; generated from the HTML when omitted")
    preheader: str | None = Field(default=None, max_length=500, description="email: the inbox preview line")
    title: str | None = Field(default=None, max_length=1000, description="push, inbox (required)")
    url: str | None = Field(default=None, max_length=2048, description="push, inbox: where a click leads")
    icon: str | None = Field(default=None, max_length=2048,
                             description="push: absolute http(s) URL of the icon (not Liquid)")
    template_name: str | None = Field(default=None, max_length=512, examples=["order_update"],
                                      description="whatsapp: the Meta template's name (not Liquid)")
    template_language: str | None = Field(default=None, max_length=16, examples=["pt_BR"],
                                          description="whatsapp: Meta's language code of that template (not Liquid)")
    parameters: list[str] | None = Field(default=None, max_length=100,
                                         description="whatsapp: one text per body placeholder {{1}}, {{2}}, ... "
                                                     "in order",
                                         examples=[["{{ contact.first_name }}", "{{ order.name }}"]])


class TemplateCreate(Body):
    name: str = Field(min_length=1, max_length=200)
    channel: Literal["email", "sms", "whatsapp", "push", "inbox"] = "email"
    purpose: Literal["marketing", "transactional"]
    category: Literal["marketing", "utility", "authentication"] | None = Field(
        default=None, description="whatsapp (required, refused elsewhere): Meta's template category; "
                                  "marketing requires purpose marketing")
    default_language: str = Field(default="en", max_length=16)
    variants: dict[str, TemplateVariantIn] = Field(description="language tag -> variant, e.g. {\"en\": ..., "
                                                               "\"pt-BR\": ...}", min_length=1)
    store_id: str | None = None


class TemplateUpdate(Body):
    purpose: Literal["marketing", "transactional"] | None = None
    default_language: str | None = Field(default=None, max_length=16)
    variants: dict[str, TemplateVariantIn] | None = Field(default=None, min_length=1)


class TemplateOut(BaseModel):
    id: str
    workspace_id: str
    store_id: str | None
    name: str
    channel: str
    purpose: str
    category: str | None = Field(default=None, description="whatsapp: Meta's category")
    approval_status: str | None = Field(
        default=None, description="whatsapp template references: approved (every variant), pending, rejected or "
                                  "paused, as Meta reviewed them; each variant shows its own; null otherwise")
    default_language: str
    variants: dict[str, dict[str, Any]]
    version: int
    created_at: datetime
    updated_at: datetime


class TemplatePreviewIn(Body):
    language: str | None = Field(default=None, max_length=35, description="the contact language to render for")
    variables: dict[str, Any] | None = Field(
        default=None, description="variables to use instead of the sample data (merged over it, top level)")


class SmsSegmentsOut(BaseModel):
    encoding: Literal["GSM-7", "UCS-2"] = Field(description="UCS-2 as soon as one character is not GSM-7")
    units: int = Field(description="length in septets (GSM-7) or UTF-16 code units (UCS-2)")
    segments: int = Field(description="messages the text is sent and billed as")
    per_segment: int = Field(description="units per segment: 160/70 in one message, 153/67 when split")


class TemplatePreviewOut(BaseModel):
    language: str = Field(description="the variant used (after fallback)")
    channel: str
    subject: str | None = Field(default=None, description="email")
    html: str | None = Field(default=None, description="email")
    text: str | None = Field(default=None, description="email: the plain-text part")
    fields: dict[str, str | list[str]] | None = Field(
        default=None, description="sms, whatsapp, push, inbox: the rendered message (sms and WhatsApp session: body; "
                                  "push/inbox: title, body, url?, icon?; WhatsApp template: template_name, "
                                  "template_language, parameters in order)")
    sms: SmsSegmentsOut | None = Field(default=None, description="sms: encoding and segment count of the body")


class StoreSenderUpdate(Body):
    email_from: str | None = Field(default=None, max_length=320, examples=["orders@aurora.example"])
    email_from_name: str | None = Field(default=None, max_length=200)
    postal_address: str | None = Field(default=None, max_length=1000,
                                       description="printed in every marketing email (CAN-SPAM, GDPR)")


class StoreSenderOut(BaseModel):
    store_id: str
    email_from: str | None
    email_from_name: str | None
    postal_address: str | None
