"""`herald suppressions import|export` and `herald contacts export|erase`: the suppression list
and GDPR/CCPA requests (issue 5), registered on the main `herald` app by cli.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from herald.cli import _container, app, clear_errors, contacts_app, err, out
from herald.domain.errors import InvalidInput
from herald.services import privacy, suppressions, workspaces

suppressions_app = typer.Typer(help="The suppression list: import and export CSV.", no_args_is_help=True)
app.add_typer(suppressions_app, name="suppressions")

WorkspaceOpt = Annotated[str, typer.Option(help="workspace id or slug")]
SHOWN_ERRORS = 50


@suppressions_app.command("import")
@clear_errors
def suppressions_import(
    file: Annotated[Path, typer.Argument(help="a UTF-8 CSV with a header: address[,channel][,reason][,detail]; "
                                              "'-' for standard input")],
    workspace: WorkspaceOpt,
    reason: Annotated[str, typer.Option(help="the reason of rows without one")] = "manual",
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Add the addresses of a CSV to the suppression list. Bad rows are reported by line and skipped;
    importing the same file again changes nothing. Exits 1 if any row failed."""
    c = _container()
    try:
        fh = sys.stdin if str(file) == "-" else file.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise InvalidInput.on("FILE", f"cannot read {file}: {exc.strerror}") from None
    with fh, c.engine.begin() as conn:
        ws = workspaces.find_workspace(conn, workspace)
        report = suppressions.import_csv(conn, ws["id"], fh, default_reason=reason, source="cli", now=c.clock.now(),
                                         tombstone_key=c.tombstone_key)
    if as_json:
        print(json.dumps({"added": report.added, "unchanged": report.unchanged, "failed": report.failed,
                          "errors": [{"line": e.line, "reason": e.reason} for e in report.errors]}))
    else:
        for e in report.errors[:SHOWN_ERRORS]:
            err.print(f"line {e.line}: {e.reason}", highlight=False, markup=False, soft_wrap=True)
        if report.failed > SHOWN_ERRORS:
            err.print(f"... and {report.failed - SHOWN_ERRORS} more failed rows (--json lists up to "
                      f"{suppressions.MAX_ERRORS})", highlight=False)
        out.print(f"{report.added} added, {report.unchanged} already listed, {report.failed} failed", highlight=False)
    if report.failed:
        raise typer.Exit(1)


@suppressions_app.command("export")
@clear_errors
def suppressions_export(
    workspace: WorkspaceOpt,
    out_file: Annotated[Path | None, typer.Option("--out", help="write here instead of standard output")] = None,
    channel: Annotated[str | None, typer.Option(help="only this channel (email, sms, whatsapp)")] = None,
) -> None:
    """Write the suppression list as CSV (channel,address,reason,source,created_at,detail)."""
    c = _container()
    with c.engine.begin() as conn:
        ws = workspaces.find_workspace(conn, workspace)
    lines = suppressions.csv_lines(suppressions.export_rows(c.engine, ws["id"], channel))  # short reads per page
    if out_file is None:
        for chunk in lines:
            sys.stdout.write(chunk)
        return
    with out_file.open("w", encoding="utf-8", newline="") as fh:
        for chunk in lines:
            fh.write(chunk)
    err.print(f"wrote {out_file}", highlight=False)


@contacts_app.command("export")
@clear_errors
def contacts_export(
    contact_id: Annotated[str, typer.Argument(help="contact id (ct_…)")],
    workspace: WorkspaceOpt,
    out_file: Annotated[Path | None, typer.Option("--out", help="write here instead of standard output")] = None,
) -> None:
    """Everything held about a contact, as one JSON document (GDPR/CCPA access request)."""
    c = _container()
    with c.engine.begin() as conn:
        ws = workspaces.find_workspace(conn, workspace)
    chunks = privacy.export_contact(c.engine, ws["id"], contact_id, now=c.clock.now(), tombstone_key=c.tombstone_key)
    if out_file is None:
        for chunk in chunks:
            sys.stdout.write(chunk)
        sys.stdout.write("\n")
        return
    with out_file.open("w", encoding="utf-8") as fh:
        for chunk in chunks:
            fh.write(chunk)
    err.print(f"wrote {out_file}", highlight=False)


@contacts_app.command("erase")
@clear_errors
def contacts_erase(
    contact_id: Annotated[str, typer.Argument(help="contact id (ct_…)")],
    workspace: WorkspaceOpt,
    yes: Annotated[bool, typer.Option("--yes", help="confirm: erasure cannot be undone")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the counts as JSON")] = False,
) -> None:
    """Erase a contact (GDPR/CCPA): its addresses stay suppressed only as hashed tombstones; its
    personal data is deleted or blanked; orders and message counts stay for reports."""
    if not yes:
        raise InvalidInput.on("--yes", "erasure cannot be undone: add --yes to confirm")
    c = _container()
    with c.engine.begin() as conn:
        ws = workspaces.find_workspace(conn, workspace)
        done = privacy.erase(conn, ws["id"], contact_id, tombstone_key=c.tombstone_key, actor="cli",
                             now=c.clock.now())
    if as_json:
        print(json.dumps({"erasure_id": done.erasure_id, "contact_id": done.contact_id, "removed": done.removed,
                          "tombstones": done.tombstones}))
        return
    counts = ", ".join(f"{kind} {n}" for kind, n in done.removed.items() if n)
    out.print(f"erased {contact_id} (erasure {done.erasure_id}): {counts or 'nothing else held'}; "
              f"{done.tombstones} tombstones suppress its addresses", highlight=False, soft_wrap=True)
