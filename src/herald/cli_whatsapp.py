"""`herald whatsapp templates sync|submit`: WhatsApp message templates at Meta (issue 6),
registered on the main `herald` app by cli.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from dataclasses import asdict
from typing import Annotated, Any, TypeVar

import typer

from herald.bootstrap import Container
from herald.cli import _container, app, clear_errors, out
from herald.services import whatsapp_templates, workspaces

whatsapp_app = typer.Typer(help="WhatsApp Business: message templates and their review at Meta.", no_args_is_help=True)
templates_app = typer.Typer(help="Sync Meta's review of the message templates; submit templates for review.",
                            no_args_is_help=True)
app.add_typer(whatsapp_app, name="whatsapp")
whatsapp_app.add_typer(templates_app, name="templates")

WorkspaceOpt = Annotated[str, typer.Option(help="workspace id or slug")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
T = TypeVar("T")


def _run(c: Container, work: Coroutine[Any, Any, T]) -> T:
    async def closing() -> T:
        try:
            return await work
        finally:
            await c.aclose_providers()
    return asyncio.run(closing())


def _workspace_id(c: Container, workspace: str) -> str:
    with c.engine.begin() as conn:
        return str(workspaces.find_workspace(conn, workspace)["id"])


@templates_app.command("sync")
@clear_errors
def templates_sync(workspace: WorkspaceOpt, as_json: JsonOpt = False) -> None:
    """Read every template of the workspace's WhatsApp Business Account from Meta and record its
    status and category on the Herald templates that reference it."""
    c = _container()
    report = _run(c, whatsapp_templates.sync(c.engine, c.messaging.providers, _workspace_id(c, workspace)))
    if as_json:
        reviews = report.reviews
        out.print_json(json.dumps({"listed": report.listed, "recorded": reviews.recorded, "unused": reviews.unused,
                                   "ignored": reviews.ignored, "missing": report.missing,
                                   "templates_changed": sorted(reviews.changed)}))
        return
    out.print(f"Meta lists {report.listed} template version(s); {len(report.reviews.recorded)} used by Herald "
              f"templates ({len(report.reviews.changed)} changed)", highlight=False)
    for name, language, status in report.reviews.recorded:
        out.print(f"  {name} ({language}): {status}", highlight=False)
    for name, language, meta_status in report.reviews.ignored:
        out.print(f"  {name} ({language}): Meta's status {meta_status or '(none)'!r} is not one Herald records; "
                  "left as it was", highlight=False)
    if report.reviews.unused:
        out.print(f"not referenced by any Herald template: {len(report.reviews.unused)}", highlight=False)
    for name, language in report.missing:
        out.print(f"[yellow]not at Meta[/yellow]: {name} ({language}) - submit it with `herald whatsapp templates "
                  f"submit TEMPLATE --workspace {workspace} --body ...`", highlight=False, soft_wrap=True)


@templates_app.command("submit")
@clear_errors
def templates_submit(
    name: Annotated[str, typer.Argument(help="the Herald template (id or name) whose variant is submitted")],
    workspace: WorkspaceOpt,
    body: Annotated[str, typer.Option(help="the template's text, {{1}}, {{2}}, ... where the variant's parameters go")],
    language: Annotated[str | None, typer.Option(help="the Herald variant (default: the template's default "
                                                      "language)")] = None,
    header: Annotated[str | None, typer.Option(help="a static text header (at most 60 characters)")] = None,
    footer: Annotated[str | None, typer.Option(help="a static footer (at most 60 characters)")] = None,
    example: Annotated[list[str] | None, typer.Option(help="an example value per placeholder, in order (default: "
                                                           "the parameters rendered on sample data)")] = None,
    provider: Annotated[str | None, typer.Option(help="the WhatsApp provider (id or name) to submit through")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a WhatsApp template variant for Meta's review and record Meta's answer (usually pending)."""
    c = _container()
    text = whatsapp_templates.TemplateText(body=body, header=header, footer=footer, examples=example or None)
    done = _run(c, whatsapp_templates.submit(c.engine, c.messaging.providers, _workspace_id(c, workspace), name, text,
                                             language=language, provider=provider))
    if as_json:
        out.print_json(json.dumps(asdict(done)))
        return
    out.print(f"submitted {done.name} ({done.language}, {done.category}) for review: Meta says "
              f"{done.meta_status or '(no status)'}; recorded {done.status or 'nothing'} on template "
              f"{done.template_id}. "
              f"Run `herald whatsapp templates sync --workspace {workspace}` later, or let the "
              "message_template_status_update webhook report the review.", highlight=False, soft_wrap=True)
