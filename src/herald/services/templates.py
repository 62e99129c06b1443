"""Message templates: stored per workspace (optionally per store) with one variant per
language; every variant is compiled (pipeline/render.py) before it is saved, so a broken
template is refused at save with the field, line and reason, and a stored one always renders.
Compiled templates are cached per (template, version, language) for the send path.

Channels and the fields of their variants (any other field is refused by name):
    email     subject, body (MJML or HTML), body_format?, text?, preheader?
    sms       body
    push      title, body, url?, icon? (a static http(s) URL)
    inbox     title, body, url?
    whatsapp  a Meta template reference: template_name, template_language (Meta's code, "pt_BR"),
              parameters? (one Liquid string per body placeholder {{1}}, {{2}}, ... in order);
              or a session message: body (sendable only inside the 24-hour window: the policy's rule).
              All variants of one WhatsApp template are of the same kind.
Every other text field is Liquid (plain text, not HTML-escaped). Email is compiled and rendered by
`compiled`/`preview`; the other channels by `compiled_text`/`render_text_variant`/`preview_text`.

WhatsApp templates have Meta's `category` (marketing | utility | authentication; required, and
refused on other channels; marketing implies purpose marketing) and Meta's review: each template
reference variant keeps its own `approval_status` (approved | pending | rejected | paused; "pending"
until `set_whatsapp_status` records Meta's answer), and the row's `approval_status` sums them up
("approved" only when every variant is). Session-message templates need no approval (NULL)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Final
from urllib.parse import urlsplit

from sqlalchemy import Connection, select, update

from herald.db.tables import templates
from herald.domain.auth import Principal
from herald.domain.errors import Conflict, FieldProblem, Forbidden, InvalidInput, NotFound
from herald.domain.ids import new_id
from herald.domain.policy import WhatsAppTemplate
from herald.domain.sms import SmsSegments, segments
from herald.pipeline import render
from herald.services.pagination import Page, keyset_page, one_visible

CHANNELS = ("email", "sms", "whatsapp", "push", "inbox")
PURPOSES = ("marketing", "transactional")
SOURCE_FIELDS = ("subject", "body", "body_format", "text", "preheader")
WHATSAPP_CATEGORIES = ("marketing", "utility", "authentication")
APPROVAL_STATUSES = ("approved", "pending", "rejected", "paused")
MAX_WHATSAPP_PARAMETERS: Final = 100

RenderedText = dict[str, str | list[str]]


@dataclass(frozen=True, slots=True)
class _Shape:
    """The fields of one kind of variant: which must be there, which may, and which are Liquid."""

    describe: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    liquid: tuple[str, ...] = ()

    @property
    def fields(self) -> tuple[str, ...]:
        return self.required + self.optional


_SHAPES: Final[Mapping[str, _Shape]] = {
    "email": _Shape("email", ("subject", "body"), ("body_format", "text", "preheader")),
    "sms": _Shape("SMS", ("body",), liquid=("body",)),
    "push": _Shape("push", ("title", "body"), ("url", "icon"), liquid=("title", "body", "url")),
    "inbox": _Shape("inbox", ("title", "body"), ("url",), liquid=("title", "body", "url")),
    "whatsapp_template": _Shape("WhatsApp template-reference", ("template_name", "template_language"),
                                ("parameters",)),
    "whatsapp_session": _Shape("WhatsApp session-message", ("body",), liquid=("body",)),
}
_WHATSAPP_TEMPLATE_FIELDS: Final = frozenset(_SHAPES["whatsapp_template"].fields)
_SERVER_FIELDS: Final = ("approval_status",)   # kept in stored variants, never given by the seller
_META_TEMPLATE_NAME: Final = re.compile(r"[a-z0-9_]{1,512}")
_META_LANGUAGE: Final = re.compile(r"[a-z]{2,3}(?:_[A-Z]{2})?")


def create_template(conn: Connection, who: Principal, *, name: str, channel: str, purpose: str,
                    default_language: str, variants: Mapping[str, Mapping[str, Any]], store_id: str | None,
                    now: datetime, category: str | None = None) -> dict[str, Any]:
    _check_scope(who, store_id)
    _check_kind(channel, purpose)
    _check_category(channel, category, purpose)
    clean = _with_statuses(validate_variants(default_language, variants, channel=channel), previous={})
    if conn.execute(select(templates.c.id).where(templates.c.workspace_id == who.workspace_id,
                                                 templates.c.name == name)).first():
        raise Conflict(f"a template named {name!r} already exists in this workspace")
    row = {"id": new_id("tpl"), "workspace_id": who.workspace_id, "store_id": store_id, "name": name,
           "channel": channel, "purpose": purpose, "default_language": default_language, "variants": clean,
           "version": 1, "category": category, "approval_status": overall_approval(clean),
           "created_at": now, "updated_at": now}
    conn.execute(templates.insert().values(row))
    return row


def update_template(conn: Connection, who: Principal, template_id: str, *, now: datetime,
                    default_language: str | None = None, variants: Mapping[str, Mapping[str, Any]] | None = None,
                    purpose: str | None = None) -> dict[str, Any]:
    current = get_template(conn, who, template_id)
    channel = current["channel"]
    language = default_language or current["default_language"]
    new_purpose = purpose or current["purpose"]
    _check_kind(channel, new_purpose)
    _check_category(channel, current["category"], new_purpose)
    given = variants if variants is not None else _seller_variants(current["variants"])
    clean = _with_statuses(validate_variants(language, given, channel=channel), previous=current["variants"])
    changes = {"default_language": language, "variants": clean, "purpose": new_purpose,
               "approval_status": overall_approval(clean), "version": current["version"] + 1, "updated_at": now}
    conn.execute(update(templates).where(templates.c.id == template_id).values(**changes))
    return {**current, **changes}


def get_template(conn: Connection, who: Principal, template_id: str) -> dict[str, Any]:
    return one_visible(conn, _visible(who), template_id, "template")


def find_template(conn: Connection, workspace_id: str, id_or_name: str) -> dict[str, Any]:
    t = templates.c
    row = conn.execute(select(templates).where(t.workspace_id == workspace_id,
                                               (t.id == id_or_name) | (t.name == id_or_name))).mappings().first()
    if row is None:
        raise NotFound(f"no template with id or name {id_or_name!r} in this workspace")
    return dict(row)


def list_templates(conn: Connection, who: Principal, *, limit: int, cursor: str | None) -> Page[dict[str, Any]]:
    return keyset_page(conn, _visible(who), limit=limit, cursor=cursor)


def _visible(who: Principal) -> Any:
    query = select(templates).where(templates.c.workspace_id == who.workspace_id)
    if who.store_id is not None:
        query = query.where((templates.c.store_id == who.store_id) | templates.c.store_id.is_(None))
    return query


def _check_scope(who: Principal, store_id: str | None) -> None:
    if who.store_id is not None and store_id != who.store_id:
        raise Forbidden("a store-scoped API key can only create templates for its own store (set store_id)")


def _check_kind(channel: str, purpose: str) -> None:
    if channel not in CHANNELS:
        raise InvalidInput.on("channel", f"must be one of {', '.join(CHANNELS)}")
    if purpose not in PURPOSES:
        raise InvalidInput.on("purpose", f"must be one of {', '.join(PURPOSES)}")


def _check_category(channel: str, category: str | None, purpose: str) -> None:
    """Meta's category: required on WhatsApp templates, refused elsewhere; a marketing-category
    template is a marketing message, so it cannot be sent as transactional (which skips consent)."""
    if channel != "whatsapp":
        if category is not None:
            raise InvalidInput.on("category", "only WhatsApp templates have a category; leave it out")
        return
    if category not in WHATSAPP_CATEGORIES:
        why = "is required for WhatsApp templates" if category is None else f"{category!r} is not a category"
        raise InvalidInput.on("category", f"{why}: use Meta's category, one of {', '.join(WHATSAPP_CATEGORIES)}")
    if category == "marketing" and purpose != "marketing":
        raise InvalidInput.on("purpose", "a WhatsApp template in Meta's marketing category is a marketing message: "
                                         "set purpose to marketing (or use a utility template)")


# -- validation ---------------------------------------------------------------------------------

def validate_variants(default_language: str, variants: Mapping[str, Mapping[str, Any]], *,
                      channel: str = "email") -> dict[str, dict[str, Any]]:
    """Check every variant's fields for the channel and compile it; raise InvalidInput naming
    each broken field (variants.<language>.<field>), its line and the reason. Returns the
    variants as stored (fields given as None dropped; email's body_format filled in)."""
    if default_language not in variants:
        raise InvalidInput.on("default_language", f"{default_language!r} has no variant; variants: "
                              f"{', '.join(sorted(variants)) or 'none'}")
    problems: list[FieldProblem] = []
    clean: dict[str, dict[str, Any]] = {}
    for language, given in variants.items():
        variant = {key: value for key, value in given.items() if value is not None}
        found = _variant_problems(channel, f"variants.{language}", variant)
        if found:
            problems.extend(found)
            continue
        clean[language] = {"body_format": "mjml", **variant} if channel == "email" else variant
    if not problems and channel == "whatsapp":
        problems.extend(_mixed_whatsapp_kinds(clean))
    if problems:
        raise InvalidInput("the template does not compile: " + "; ".join(f"{p.field}: {p.reason}" for p in problems),
                           fields=problems)
    return clean


def variant_kind(channel: str, variant: Mapping[str, Any]) -> str:
    """The variant's shape: the channel, or for WhatsApp "whatsapp_template" (a reference to a
    Meta template) or "whatsapp_session" (a free-form session message)."""
    if channel != "whatsapp":
        return channel
    return "whatsapp_template" if _WHATSAPP_TEMPLATE_FIELDS & set(variant) else "whatsapp_session"


def _variant_problems(channel: str, prefix: str, variant: Mapping[str, Any]) -> list[FieldProblem]:
    kind = variant_kind(channel, variant)
    shape = _SHAPES[kind]
    problems = [FieldProblem(f"{prefix}.{name}", _unknown_reason(kind, shape)) for name in sorted(variant)
                if name not in shape.fields]
    problems += [FieldProblem(f"{prefix}.{name}", f"is required in {shape.describe} variants")
                 for name in shape.required if name not in variant]
    if problems:
        return problems
    if kind == "email":
        return _email_problems(prefix, variant)
    problems = _value_problems(kind, prefix, variant)
    if problems:
        return problems
    try:
        render.compile_text(_liquid_sources(kind, variant))
    except render.TemplateError as exc:
        return [FieldProblem(f"{prefix}.{exc.field}", str(exc))]
    return []


def _unknown_reason(kind: str, shape: _Shape) -> str:
    if kind == "whatsapp_template":
        return ("is not a field of a WhatsApp template reference: a variant is either a Meta template "
                "(template_name, template_language, parameters) or a session message (body), not both")
    return f"is not a field of {shape.describe} variants; they have: {', '.join(shape.fields)}"


def _email_problems(prefix: str, variant: Mapping[str, Any]) -> list[FieldProblem]:
    try:
        render.compile_email(_source(variant))
    except render.TemplateError as exc:
        return [FieldProblem(f"{prefix}.{exc.field}", str(exc))]
    return []


def _value_problems(kind: str, prefix: str, variant: Mapping[str, Any]) -> list[FieldProblem]:
    """Types and formats the Liquid compiler does not check."""
    problems: list[FieldProblem] = []
    for name, value in variant.items():
        if name == "parameters":
            problems += _parameter_problems(f"{prefix}.parameters", value)
        elif not isinstance(value, str):
            problems.append(FieldProblem(f"{prefix}.{name}", "must be text"))
        elif name in _SHAPES[kind].required and not value.strip():
            problems.append(FieldProblem(f"{prefix}.{name}", "is empty"))
        elif reason := _format_problem(name, value):
            problems.append(FieldProblem(f"{prefix}.{name}", reason))
    return problems


def _format_problem(name: str, value: str) -> str | None:
    if name == "template_name" and not _META_TEMPLATE_NAME.fullmatch(value):
        return "must be the Meta template's name: lowercase letters, digits and underscores (e.g. order_update)"
    if name == "template_language" and not _META_LANGUAGE.fullmatch(value):
        return "must be Meta's language code of the template, e.g. en, en_US or pt_BR"
    if name == "icon":
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            return "must be an absolute http(s) URL of the icon image"
    return None


def _parameter_problems(field: str, value: Any) -> list[FieldProblem]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return [FieldProblem(field, "must be a list of texts, one per body placeholder {{1}}, {{2}}, ...")]
    if len(value) > MAX_WHATSAPP_PARAMETERS:
        return [FieldProblem(field, f"has {len(value)} items; at most {MAX_WHATSAPP_PARAMETERS}")]
    return [FieldProblem(f"{field}.{index}", "is empty (Meta refuses empty parameters)")
            for index, item in enumerate(value) if not item.strip()]


def _mixed_whatsapp_kinds(variants: Mapping[str, Mapping[str, Any]]) -> list[FieldProblem]:
    kinds = {language: variant_kind("whatsapp", variant) for language, variant in variants.items()}
    if len(set(kinds.values())) < 2:
        return []
    first = next(iter(kinds))
    return [FieldProblem(f"variants.{language}", f"is a {_SHAPES[kind].describe} variant but variants.{first} is a "
                                                 f"{_SHAPES[kinds[first]].describe} one: all variants of a WhatsApp "
                                                 "template must be of the same kind")
            for language, kind in kinds.items() if kind != kinds[first]]


def _liquid_sources(kind: str, variant: Mapping[str, Any]) -> dict[str, str]:
    """The variant's Liquid fields by name; WhatsApp parameters as "parameters.0", "parameters.1", ..."""
    if kind == "whatsapp_template":
        return {f"parameters.{index}": source for index, source in enumerate(variant.get("parameters") or ())}
    return {name: variant[name] for name in _SHAPES[kind].liquid if name in variant}


def _source(given: Mapping[str, Any]) -> render.EmailTemplateSource:
    return render.EmailTemplateSource(subject=str(given.get("subject") or ""), body=str(given.get("body") or ""),
                                      body_format=given.get("body_format", "mjml"), text=given.get("text"),
                                      preheader=given.get("preheader"))


# -- WhatsApp approval ----------------------------------------------------------------------------

def set_whatsapp_status(conn: Connection, workspace_id: str, name: str, language: str, status: str,
                        category: str | None) -> list[str]:
    """Record Meta's review of its message template (`name`, `language`: Meta's template name and
    language code, as variants reference them) on every WhatsApp template of the workspace that
    uses it: that variant's approval_status, the row's summary, and Meta's category when given
    (a template Meta moves to marketing becomes purpose marketing, so consent rules follow).
    The content and version are unchanged. Returns the ids of the templates changed."""
    status = _one_of("status", status.lower(), APPROVAL_STATUSES)
    category = _one_of("category", category.lower(), WHATSAPP_CATEGORIES) if category is not None else None
    query = select(templates).where(templates.c.workspace_id == workspace_id, templates.c.channel == "whatsapp")
    if conn.dialect.name == "postgresql":   # concurrent reviews of other languages must not lose each other
        query = query.with_for_update()
    changed: list[str] = []
    for row in conn.execute(query).mappings().all():
        variants = _marked(row["variants"], name, language, status)
        if variants is None:
            continue
        values: dict[str, Any] = {"variants": variants, "approval_status": overall_approval(variants)}
        if category is not None:
            values["category"] = category
            if category == "marketing":
                values["purpose"] = "marketing"
        conn.execute(update(templates).where(templates.c.id == row["id"]).values(**values))
        changed.append(row["id"])
    return changed


def overall_approval(variants: Mapping[str, Mapping[str, Any]]) -> str | None:
    """A template's approval: "approved" when every template-reference variant is, else the worst
    of rejected, paused, pending; None when it has none (session messages need no approval)."""
    statuses = {variant["approval_status"] for variant in variants.values() if "approval_status" in variant}
    if not statuses:
        return None
    return next((status for status in ("rejected", "paused", "pending") if status in statuses), "approved")


def whatsapp_policy_template(template: Mapping[str, Any], language: str) -> WhatsAppTemplate | None:
    """What the policy needs about the chosen variant (`language` as compiled_text chose it):
    None for a session message, else Meta's category and whether this variant is approved."""
    variant = template["variants"][language]
    if variant_kind("whatsapp", variant) != "whatsapp_template":
        return None
    return WhatsAppTemplate(category=str(template["category"]), approved=variant.get("approval_status") == "approved")


def _one_of(field: str, value: str, allowed: Iterable[str]) -> str:
    if value not in allowed:
        raise InvalidInput.on(field, f"{value!r} is not one of {', '.join(allowed)}")
    return value


def _marked(variants: Mapping[str, Mapping[str, Any]], name: str, language: str,
            status: str) -> dict[str, dict[str, Any]] | None:
    """The variants with the reference (name, language) set to `status`; None if none uses it."""
    marked = {lang: dict(variant) for lang, variant in variants.items()}
    hits = [variant for variant in marked.values()
            if variant.get("template_name") == name and variant.get("template_language") == language]
    for variant in hits:
        variant["approval_status"] = status
    return marked if hits else None


def _with_statuses(clean: dict[str, dict[str, Any]],
                   previous: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Template-reference variants keep the status Meta gave the same (name, language) before,
    else start "pending"."""
    known = {(v.get("template_name"), v.get("template_language")): v["approval_status"]
             for v in previous.values() if "approval_status" in v}
    for variant in clean.values():
        if "template_name" in variant:
            variant["approval_status"] = known.get((variant["template_name"], variant["template_language"]),
                                                   "pending")
    return clean


def _seller_variants(variants: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    return {lang: {k: v for k, v in variant.items() if k not in _SERVER_FIELDS} for lang, variant in variants.items()}


# -- the send path: email -------------------------------------------------------------------------

def compiled(template: Mapping[str, Any], language: str | None) -> tuple[str, render.CompiledEmail]:
    """The compiled variant for a contact's language (with fallback), from the cache."""
    _require_channel(template, email=True)
    variants = render.TemplateVariants(template["default_language"],
                                       {lang: _source(v) for lang, v in template["variants"].items()})
    chosen, _chosen_source = render.choose_variant(variants, language)
    return chosen, _compile_cached(template["id"], template["version"], chosen, _freeze(template["variants"][chosen]))


def _freeze(variant: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(variant.items()))


@lru_cache(maxsize=256)
def _compile_cached(_template_id: str, _version: int, _language: str,
                    variant: tuple[tuple[str, Any], ...]) -> render.CompiledEmail:
    return render.compile_email(_source(dict(variant)))


def preview(template: Mapping[str, Any], language: str | None,
            variables: Mapping[str, Any] | None) -> tuple[str, render.RenderedEmail]:
    """Render with the sample data (SAMPLE_VARIABLES), the given variables merged over it."""
    chosen, compiled_email = compiled(template, language)
    merged = {**render.SAMPLE_VARIABLES, **(variables or {})}
    try:
        return chosen, render.render_email(compiled_email, merged)
    except render.RenderError as exc:
        raise InvalidInput.on("variables", f"the template does not render with these variables: {exc}") from None


# -- the send path: SMS, WhatsApp, push, inbox -----------------------------------------------------

def compiled_text(template: Mapping[str, Any], language: str | None) -> tuple[str, render.CompiledText]:
    """The compiled Liquid fields of a text-channel template's variant for a contact's language
    (the same fallback as email), cached per (template, version, language)."""
    _require_channel(template, email=False)
    chosen = chosen_language(template, language)
    variant = template["variants"][chosen]
    sources = _liquid_sources(variant_kind(template["channel"], variant), variant)
    return chosen, _compile_text_cached(template["id"], template["version"], chosen, tuple(sources.items()))


@lru_cache(maxsize=256)
def _compile_text_cached(_template_id: str, _version: int, _language: str,
                         sources: tuple[tuple[str, str], ...]) -> render.CompiledText:
    return render.compile_text(dict(sources))


def render_text_variant(template: Mapping[str, Any], language: str | None,
                        variables: Mapping[str, object]) -> tuple[str, RenderedText]:
    """One recipient's message: (the variant's language, its fields). sms and WhatsApp session
    messages: {"body"}; push: {"title", "body", "url"?, "icon"?}; inbox: {"title", "body", "url"?}
    (an optional field that renders empty is left out); a WhatsApp template reference:
    {"template_name", "template_language", "parameters": [...]} with the parameters in placeholder
    order, each on one line (Meta refuses new lines, tabs and runs of spaces in parameters).
    Raises render.RenderError (the message fails permanently)."""
    chosen, compiled_fields = compiled_text(template, language)
    rendered = render.render_text(compiled_fields, variables)
    variant = template["variants"][chosen]
    if variant_kind(template["channel"], variant) == "whatsapp_template":
        parameters = [" ".join(rendered[f"parameters.{index}"].split()) for index in range(len(rendered))]
        return chosen, {"template_name": variant["template_name"], "template_language": variant["template_language"],
                        "parameters": parameters}
    fields: RenderedText = {name: text for name, text in rendered.items() if text or name in ("title", "body")}
    if variant.get("icon"):
        fields["icon"] = variant["icon"]
    return chosen, fields


@dataclass(frozen=True, slots=True)
class TextPreview:
    language: str                      # the variant used (after fallback)
    fields: RenderedText               # as render_text_variant gives them
    sms: SmsSegments | None            # SMS only: encoding and segment count of the rendered body


def preview_text(template: Mapping[str, Any], language: str | None,
                 variables: Mapping[str, Any] | None) -> TextPreview:
    """Render a text-channel template with the sample data, the given variables merged over it."""
    merged = {**render.SAMPLE_VARIABLES, **(variables or {})}
    try:
        chosen, fields = render_text_variant(template, language, merged)
    except render.RenderError as exc:
        raise InvalidInput.on("variables", f"the template does not render with these variables: {exc}") from None
    counted = segments(str(fields["body"])) if template["channel"] == "sms" else None
    return TextPreview(chosen, fields, counted)


_ANY_SOURCE: Final = render.EmailTemplateSource(subject="", body="", body_format="html")


def chosen_language(template: Mapping[str, Any], language: str | None) -> str:
    """The email fallback rule (render.choose_variant looks only at the language tags)."""
    variants = render.TemplateVariants(template["default_language"],
                                       dict.fromkeys(template["variants"], _ANY_SOURCE))
    return render.choose_variant(variants, language)[0]


def _require_channel(template: Mapping[str, Any], *, email: bool) -> None:
    if (template["channel"] == "email") != email:
        use = "compiled/preview" if template["channel"] == "email" else "compiled_text/render_text_variant"
        raise InvalidInput.on("channel", f"template {template['name']!r} is a {template['channel']} template: "
                                         f"use {use}")
