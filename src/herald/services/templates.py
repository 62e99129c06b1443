"""Message templates: stored per workspace (optionally per store) with one variant per
language; every variant is compiled (pipeline/render.py) before it is saved, so a broken
template is refused at save with the field, line and reason, and a stored one always renders.
Compiled templates are cached per (template, version, language) for the send path."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, select, update

from herald.db.tables import templates
from herald.domain.auth import Principal
from herald.domain.errors import Conflict, FieldProblem, Forbidden, InvalidInput, NotFound
from herald.domain.ids import new_id
from herald.pipeline import render
from herald.services.pagination import Page, keyset_page, one_visible

CHANNELS = ("email",)
PURPOSES = ("marketing", "transactional")
SOURCE_FIELDS = ("subject", "body", "body_format", "text", "preheader")


def create_template(conn: Connection, who: Principal, *, name: str, channel: str, purpose: str,
                    default_language: str, variants: Mapping[str, Mapping[str, Any]], store_id: str | None,
                    now: datetime) -> dict[str, Any]:
    _check_scope(who, store_id)
    _check_kind(channel, purpose)
    clean = validate_variants(default_language, variants)
    if conn.execute(select(templates.c.id).where(templates.c.workspace_id == who.workspace_id,
                                                 templates.c.name == name)).first():
        raise Conflict(f"a template named {name!r} already exists in this workspace")
    row = {"id": new_id("tpl"), "workspace_id": who.workspace_id, "store_id": store_id, "name": name,
           "channel": channel, "purpose": purpose, "default_language": default_language, "variants": clean,
           "version": 1, "created_at": now, "updated_at": now}
    conn.execute(templates.insert().values(row))
    return row


def update_template(conn: Connection, who: Principal, template_id: str, *, now: datetime,
                    default_language: str | None = None, variants: Mapping[str, Mapping[str, Any]] | None = None,
                    purpose: str | None = None) -> dict[str, Any]:
    current = get_template(conn, who, template_id)
    language = default_language or current["default_language"]
    clean = validate_variants(language, variants if variants is not None else current["variants"])
    new_purpose = purpose or current["purpose"]
    _check_kind(current["channel"], new_purpose)
    changes = {"default_language": language, "variants": clean, "purpose": new_purpose,
               "version": current["version"] + 1, "updated_at": now}
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
        raise InvalidInput.on("channel", f"must be one of {', '.join(CHANNELS)} (other channels come with issue 6)")
    if purpose not in PURPOSES:
        raise InvalidInput.on("purpose", f"must be one of {', '.join(PURPOSES)}")


def validate_variants(default_language: str, variants: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Compile every variant; raise InvalidInput naming each broken field, line and reason."""
    if default_language not in variants:
        raise InvalidInput.on("default_language", f"{default_language!r} has no variant; variants: "
                              f"{', '.join(sorted(variants)) or 'none'}")
    problems: list[FieldProblem] = []
    clean: dict[str, dict[str, Any]] = {}
    for language, given in variants.items():
        unknown = set(given) - set(SOURCE_FIELDS)
        if unknown:
            problems.append(FieldProblem(f"variants.{language}", f"unknown fields: {', '.join(sorted(unknown))}"))
            continue
        source = _source(given)
        try:
            render.compile_email(source)
        except render.TemplateError as exc:
            problems.append(FieldProblem(f"variants.{language}.{exc.field}", str(exc)))
            continue
        clean[language] = {k: v for k, v in given.items() if v is not None}
    if problems:
        raise InvalidInput("the template does not compile: " + "; ".join(f"{p.field}: {p.reason}" for p in problems),
                           fields=problems)
    return clean


def _source(given: Mapping[str, Any]) -> render.EmailTemplateSource:
    return render.EmailTemplateSource(subject=str(given.get("subject") or ""), body=str(given.get("body") or ""),
                                      body_format=given.get("body_format", "mjml"), text=given.get("text"),
                                      preheader=given.get("preheader"))


def compiled(template: Mapping[str, Any], language: str | None) -> tuple[str, render.CompiledEmail]:
    """The compiled variant for a contact's language (with fallback), from the cache."""
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
