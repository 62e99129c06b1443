"""WhatsApp message templates at Meta: what Meta says about them recorded on Herald's templates,
and Herald template variants submitted for Meta's review.

A Herald WhatsApp template variant references a Meta template by (template_name,
template_language); services/templates.set_whatsapp_status records Meta's review on every
variant that references it. The review arrives three ways, all applied by `record_reviews`:
  * `sync`: the account's template list (GET message_templates through the workspace's
    WhatsApp providers);
  * `submit`: Meta's answer to a submission (usually pending);
  * the `message_template_status_update` webhook (api/routes/callbacks.py).

Meta's statuses and what Herald records (templates.APPROVAL_STATUSES; only "approved" sends):
  approved, pending, rejected, paused        as they are;
  in_appeal, pending_deletion                pending  (in review again / about to go: not sendable now);
  archived                                   paused   (the seller can unarchive it at Meta);
  disabled, deleted, limit_exceeded          rejected (Meta will not send it: submit a new or edited
                                                       template, or delete others first when over the limit);
  anything else (e.g. the "flagged" event)   nothing recorded (reported as ignored).
Meta's category (marketing | utility | authentication) is recorded with it; Meta re-categorising a
template as marketing makes it a marketing message (consent rules follow).

Template management talks to Meta even in sandbox mode: it sends no message to anyone."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Connection, Engine, select

from herald.db.tables import templates as templates_table
from herald.domain.delivery import (
    FailureReason,
    Provider,
    ProviderConfigError,
    ProviderRequestError,
    ProviderTemplate,
    UnsupportedFeature,
)
from herald.domain.errors import HeraldError, InvalidInput, NotFound, Unavailable
from herald.services import providers as provider_rows
from herald.services import templates
from herald.services.providers import ProviderCache

STATUS_OF: Final[Mapping[str, str]] = {
    "approved": "approved", "pending": "pending", "rejected": "rejected", "paused": "paused",
    "in_appeal": "pending", "pending_deletion": "pending",
    "archived": "paused",
    "disabled": "rejected", "deleted": "rejected", "limit_exceeded": "rejected",
}
MAX_BODY_CHARS: Final = 1024      # Meta: template body text
MAX_HEADER_CHARS: Final = 60      # Meta: text header and footer
MAX_FOOTER_CHARS: Final = 60
_PLACEHOLDER: Final = re.compile(r"\{\{(.*?)\}\}")
_TRANSIENT: Final = frozenset({FailureReason.PROVIDER_DOWN, FailureReason.THROTTLED, FailureReason.TRANSIENT})


def herald_status(meta_status: str | None) -> str | None:
    """The approval_status Herald records for Meta's status; None: record nothing."""
    return STATUS_OF.get((meta_status or "").strip().lower())


# -- recording Meta's reviews --------------------------------------------------------------------------

@dataclass
class ReviewReport:
    recorded: list[tuple[str, str, str]] = field(default_factory=list)  # (name, language, Herald status) used here
    unused: list[tuple[str, str]] = field(default_factory=list)         # Meta templates no Herald template uses
    ignored: list[tuple[str, str, str]] = field(default_factory=list)   # (name, language, Meta's status) not mapped
    changed: set[str] = field(default_factory=set)                      # Herald template ids changed


def record_reviews(conn: Connection, workspace_id: str, reviews: Iterable[ProviderTemplate]) -> ReviewReport:
    """Record each review on the workspace's templates that reference it, in the caller's transaction."""
    report = ReviewReport()
    for review in reviews:
        status = herald_status(review.status)
        if status is None:
            report.ignored.append((review.name, review.language, review.status or ""))
            continue
        category = review.category if review.category in templates.WHATSAPP_CATEGORIES else None
        changed = templates.set_whatsapp_status(conn, workspace_id, review.name, review.language, status, category)
        if changed:
            report.recorded.append((review.name, review.language, status))
            report.changed.update(changed)
        else:
            report.unused.append((review.name, review.language))
    return report


# -- sync ------------------------------------------------------------------------------------------------

@dataclass
class SyncReport:
    listed: int                          # language versions Meta listed
    reviews: ReviewReport
    missing: list[tuple[str, str]]       # (name, language) Herald templates reference but Meta does not have


async def sync(engine: Engine, providers: ProviderCache, workspace_id: str) -> SyncReport:
    """List the templates of every enabled WhatsApp provider of the workspace that has them and
    record their statuses (one transaction, after every list was read)."""
    rows = await asyncio.to_thread(_whatsapp_rows, engine, workspace_id)
    listed: list[ProviderTemplate] = []
    managed = 0
    for row in rows:
        try:
            listed += await providers.adapters.list_templates(_provider(providers, row))
        except UnsupportedFeature:
            continue
        except (ProviderConfigError, ProviderRequestError) as exc:
            raise _request_failed(row, exc) from None
        managed += 1
    if not managed:
        raise NotFound(_no_template_provider(rows))

    def record() -> SyncReport:
        with engine.begin() as conn:
            reviews = record_reviews(conn, workspace_id, listed)
            at_meta = {(t.name, t.language) for t in listed}
            missing = [ref for ref in _references(conn, workspace_id) if ref not in at_meta]
        return SyncReport(len(listed), reviews, missing)
    return await asyncio.to_thread(record)


def _whatsapp_rows(engine: Engine, workspace_id: str) -> list[dict[str, Any]]:
    with engine.begin() as conn:
        return provider_rows.for_channel(conn, workspace_id, "whatsapp")


def _provider(providers: ProviderCache, row: Mapping[str, Any]) -> Provider:
    try:
        return providers.provider(row)
    except (ProviderConfigError, ValueError, TypeError, KeyError) as exc:
        raise InvalidInput.on("provider", f"{row['name']} ({row['kind']}): {exc}") from None


def _references(conn: Connection, workspace_id: str) -> list[tuple[str, str]]:
    """Every (Meta template name, language) the workspace's WhatsApp templates reference, sorted."""
    t = templates_table.c
    found: set[tuple[str, str]] = set()
    for variants in conn.execute(select(t.variants).where(t.workspace_id == workspace_id, t.channel == "whatsapp")
                                 ).scalars():
        found.update((v["template_name"], v["template_language"]) for v in variants.values() if "template_name" in v)
    return sorted(found)


def _no_template_provider(rows: Sequence[Mapping[str, Any]]) -> str:
    have = ", ".join(f"{r['name']} ({r['kind']})" for r in rows) or "none"
    return ("no enabled WhatsApp provider of this workspace keeps message templates (enabled WhatsApp providers: "
            f"{have}): add a whatsapp_cloud provider with its waba_id (`herald providers add`)")


def _request_failed(row: Mapping[str, Any], exc: ProviderConfigError | ProviderRequestError) -> HeraldError:
    if isinstance(exc, ProviderConfigError):
        return InvalidInput.on("provider", f"{row['name']}: {exc}")
    if exc.reason in _TRANSIENT:
        return Unavailable(f"WhatsApp did not answer for provider {row['name']}: {exc.detail}; try again later",
                           retry_after=60)
    hint = (" (check the provider's access_token and its whatsapp_business_management permission)"
            if exc.reason is FailureReason.AUTH_FAILED else "")
    return HeraldError(f"WhatsApp refused the request of provider {row['name']}: {exc.detail}{hint}")


# -- submit ------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TemplateText:
    """What Meta reviews and Herald's variant does not hold: the text around the parameters."""

    body: str                          # with positional placeholders {{1}}, {{2}}, ... one per variant parameter
    header: str | None = None          # a static text header
    footer: str | None = None
    examples: Sequence[str] | None = None   # one per placeholder; default: the parameters rendered on sample data


@dataclass(frozen=True, slots=True)
class Submission:
    template_id: str                   # Herald's
    name: str                          # Meta's template name and language
    language: str
    category: str
    meta_status: str | None            # Meta's answer, e.g. "pending"
    status: str | None                 # what Herald recorded
    meta_id: str | None
    provider_id: str


async def submit(engine: Engine, providers: ProviderCache, workspace_id: str, template: str, text: TemplateText, *,
                 language: str | None = None, provider: str | None = None) -> Submission:
    """Submit one variant (`language`: Herald's variant key, default the template's default
    language) of a WhatsApp template-reference template to Meta, through `provider` (id or name)
    or the first enabled WhatsApp provider that keeps templates; record Meta's answer."""
    candidates, tpl, variant, components = await asyncio.to_thread(_prepare, engine, workspace_id, template, text,
                                                                   language, provider)
    row, answer = await _submit_first(providers, candidates, variant["template_name"], variant["template_language"],
                                      str(tpl["category"]), components)

    def record() -> str | None:
        with engine.begin() as conn:
            reviewed = ProviderTemplate(variant["template_name"], variant["template_language"],
                                        answer.category or str(tpl["category"]), answer.status or "pending")
            report = record_reviews(conn, workspace_id, [reviewed])
        return report.recorded[0][2] if report.recorded else None
    status = await asyncio.to_thread(record)
    return Submission(template_id=tpl["id"], name=variant["template_name"], language=variant["template_language"],
                      category=answer.category or str(tpl["category"]), meta_status=answer.status, status=status,
                      meta_id=answer.id, provider_id=row["id"])


def _prepare(engine: Engine, workspace_id: str, template: str, text: TemplateText, language: str | None,
             provider: str | None) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    with engine.begin() as conn:
        tpl = templates.find_template(conn, workspace_id, template)
        rows = provider_rows.for_channel(conn, workspace_id, "whatsapp")
    chosen, variant = _reference_variant(tpl, language)
    components = components_for(text, _examples(tpl, chosen, variant, text.examples))
    return _submitting_rows(rows, provider), tpl, variant, components


async def _submit_first(providers: ProviderCache, rows: Sequence[dict[str, Any]], name: str, language: str,
                        category: str, components: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any],
                                                                                          ProviderTemplate]:
    """Submit through the first of `rows` whose provider keeps templates."""
    for row in rows:
        try:
            return row, await providers.adapters.submit_template(_provider(providers, row), name, language, category,
                                                                 components)
        except UnsupportedFeature:
            continue
        except (ProviderConfigError, ProviderRequestError) as exc:
            raise _request_failed(row, exc) from None
    raise InvalidInput.on("provider", _no_template_provider(rows))


def _reference_variant(tpl: Mapping[str, Any], language: str | None) -> tuple[str, dict[str, Any]]:
    if tpl["channel"] != "whatsapp":
        raise InvalidInput.on("template", f"{tpl['name']!r} is a {tpl['channel']} template; only WhatsApp templates "
                                          "are submitted to Meta")
    chosen = language or str(tpl["default_language"])
    if chosen not in tpl["variants"]:
        raise InvalidInput.on("language", f"template {tpl['name']!r} has no variant {chosen!r}; its variants: "
                                          f"{', '.join(sorted(tpl['variants']))}")
    variant = dict(tpl["variants"][chosen])
    if templates.variant_kind("whatsapp", variant) != "whatsapp_template":
        raise InvalidInput.on("template", f"variant {chosen!r} of {tpl['name']!r} is a session message (body): it "
                                          "needs no approval and has nothing to submit")
    return chosen, variant


def _examples(tpl: Mapping[str, Any], language: str, variant: Mapping[str, Any],
              given: Sequence[str] | None) -> list[str]:
    """One example per parameter: the given ones, else the variant's parameters rendered on the
    sample data (Meta reviews a template by its examples)."""
    count = len(variant.get("parameters") or ())
    if given is not None:
        if len(given) != count:
            raise InvalidInput.on("examples", f"give {count} example values, one per parameter of variant {language!r} "
                                              f"(got {len(given)})")
        examples = [" ".join(str(value).split()) for value in given]
    else:
        rendered = templates.preview_text(tpl, language, None).fields.get("parameters") or []
        examples = [str(value) for value in rendered]
    for index, value in enumerate(examples):
        if not value:
            raise InvalidInput.on(f"examples.{index}", f"parameter {{{{{index + 1}}}}} renders empty on the sample "
                                                       "data; give example values (Meta needs one per placeholder)")
    return examples


def components_for(text: TemplateText, examples: Sequence[str]) -> list[dict[str, Any]]:
    """Meta's components (HEADER text, BODY with its examples, FOOTER) after the checks Meta
    would refuse the submission for. The body must use exactly the placeholders {{1}}..{{n}} of
    the variant's n parameters (Herald sends them in that order); header and footer are static."""
    body = text.body.strip()
    if not body:
        raise InvalidInput.on("body", "is empty: give the template's text with {{1}}, {{2}}, ... for its parameters")
    if len(body) > MAX_BODY_CHARS:
        raise InvalidInput.on("body", f"has {len(body)} characters; Meta allows {MAX_BODY_CHARS}")
    _check_placeholders(body, len(examples))
    components: list[dict[str, Any]] = []
    if text.header is not None and text.header.strip():
        components.append({"type": "HEADER", "format": "TEXT", "text": _static("header", text.header,
                                                                                 MAX_HEADER_CHARS)})
    body_component: dict[str, Any] = {"type": "BODY", "text": body}
    if examples:
        body_component["example"] = {"body_text": [list(examples)]}
    components.append(body_component)
    if text.footer is not None and text.footer.strip():
        components.append({"type": "FOOTER", "text": _static("footer", text.footer, MAX_FOOTER_CHARS)})
    return components


def _check_placeholders(body: str, count: int) -> None:
    found = [token.strip() for token in _PLACEHOLDER.findall(body)]
    named = [token for token in found if not token.isdigit()]
    if named:
        raise InvalidInput.on("body", f"{{{{{named[0]}}}}} is not a positional placeholder: Herald fills "
                                      "{{1}}, {{2}}, ... in the order of the variant's parameters")
    numbers = {int(token) for token in found}
    expected = set(range(1, count + 1))
    if numbers != expected:
        want = ", ".join(f"{{{{{n}}}}}" for n in sorted(expected)) or "no placeholder"
        have = ", ".join(f"{{{{{n}}}}}" for n in sorted(numbers)) or "none"
        raise InvalidInput.on("body", f"uses {have}, but the variant has {count} parameter(s): use {want}")


def _static(name: str, value: str, limit: int) -> str:
    value = value.strip()
    if _PLACEHOLDER.search(value):
        raise InvalidInput.on(name, "cannot hold a placeholder: Herald fills only the body's parameters")
    if len(value) > limit:
        raise InvalidInput.on(name, f"has {len(value)} characters; Meta allows {limit}")
    return value


def _submitting_rows(rows: Sequence[dict[str, Any]], provider: str | None) -> list[dict[str, Any]]:
    if provider is None:
        if not rows:
            raise NotFound(_no_template_provider(rows))
        return list(rows)
    chosen = [r for r in rows if provider in (r["id"], r["name"])]
    if not chosen:
        raise NotFound(f"no enabled WhatsApp provider {provider!r} in this workspace")
    return chosen
