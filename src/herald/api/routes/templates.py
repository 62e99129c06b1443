"""Message templates: create/update (compiled at save: a broken template is refused with the
field, line and reason), list, get, and preview with sample data."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from herald.api.deps import ContainerDep, CursorDep, IdempotencyDep, LimitDep, PrincipalDep
from herald.api.schemas import (
    PROBLEMS,
    Page,
    SmsSegmentsOut,
    TemplateCreate,
    TemplateOut,
    TemplatePreviewIn,
    TemplatePreviewOut,
    TemplateUpdate,
    page_of,
)
from herald.services import templates

router = APIRouter(prefix="/templates", tags=["templates"], responses=PROBLEMS)


def _variants(given: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {lang: v.model_dump(exclude_none=True) for lang, v in given.items()}


@router.post("", status_code=201, response_model=TemplateOut, summary="Create a template (compiled before it is saved)")
def create_template(body: TemplateCreate, who: PrincipalDep, c: ContainerDep, idem: IdempotencyDep) -> Response:
    with c.engine.begin() as conn:
        row = templates.create_template(conn, who, name=body.name, channel=body.channel, purpose=body.purpose,
                                        default_language=body.default_language, variants=_variants(body.variants),
                                        store_id=body.store_id, now=c.clock.now(), category=body.category)
        return idem.respond(conn, 201, TemplateOut.model_validate(row), {"Location": f"/api/v1/templates/{row['id']}"})


@router.get("", response_model=Page[TemplateOut], summary="The workspace's templates")
def list_templates(who: PrincipalDep, c: ContainerDep, limit: LimitDep, cursor: CursorDep = None) -> Page[TemplateOut]:
    with c.engine.begin() as conn:
        return page_of(TemplateOut, templates.list_templates(conn, who, limit=limit, cursor=cursor))


@router.get("/{template_id}", response_model=TemplateOut, summary="Get a template")
def get_template(template_id: str, who: PrincipalDep, c: ContainerDep) -> TemplateOut:
    with c.engine.begin() as conn:
        return TemplateOut.model_validate(templates.get_template(conn, who, template_id))


@router.patch("/{template_id}", response_model=TemplateOut, summary="Change a template (a new version)")
def update_template(template_id: str, body: TemplateUpdate, who: PrincipalDep, c: ContainerDep) -> TemplateOut:
    with c.engine.begin() as conn:
        row = templates.update_template(conn, who, template_id, now=c.clock.now(), purpose=body.purpose,
                                        default_language=body.default_language,
                                        variants=_variants(body.variants) if body.variants is not None else None)
        return TemplateOut.model_validate(row)


@router.post("/{template_id}/preview", response_model=TemplatePreviewOut,
             summary="Render the template with sample data (or the variables given); SMS: segments")
async def preview_template(template_id: str, body: TemplatePreviewIn, who: PrincipalDep,
                           c: ContainerDep) -> TemplatePreviewOut:
    def work() -> TemplatePreviewOut:
        with c.engine.begin() as conn:
            row = templates.get_template(conn, who, template_id)
        if row["channel"] == "email":
            language, rendered = templates.preview(row, body.language, body.variables)
            return TemplatePreviewOut(language=language, channel="email", subject=rendered.subject,
                                      html=rendered.html, text=rendered.text)
        shown = templates.preview_text(row, body.language, body.variables)
        counted = SmsSegmentsOut(encoding=shown.sms.encoding, units=shown.sms.units, segments=shown.sms.segments,
                                 per_segment=shown.sms.per_segment) if shown.sms is not None else None
        return TemplatePreviewOut(language=shown.language, channel=row["channel"], fields=shown.fields, sms=counted)
    return await run_in_threadpool(work)
