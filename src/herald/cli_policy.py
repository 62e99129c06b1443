"""`herald policy show|set|refusals`: the send-time policy settings and what they refused
(issue 5), registered on the main `herald` app by cli.py."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from herald.cli import _container, app, clear_errors, out
from herald.domain.errors import InvalidInput
from herald.domain.policy import settings_json
from herald.services import policy, workspaces

policy_app = typer.Typer(help="Send-time policy: frequency caps, quiet hours, channel order, refusals.",
                         no_args_is_help=True)
app.add_typer(policy_app, name="policy")

WorkspaceOpt = Annotated[str, typer.Option(help="workspace id or slug")]


@policy_app.command("show")
@clear_errors
def policy_show(workspace: WorkspaceOpt) -> None:
    """Print the workspace's policy settings as JSON (defaults filled in)."""
    c = _container()
    with c.engine.begin() as conn:
        ws = workspaces.find_workspace(conn, workspace)
        settings = policy.get_settings(conn, ws["id"])
    out.print_json(json.dumps(settings_json(settings)))


@policy_app.command("set")
@clear_errors
def policy_set(
    file: Annotated[Path, typer.Argument(help="a JSON file: {frequency_caps, quiet_hours, channel_order}")],
    workspace: WorkspaceOpt,
) -> None:
    """Replace the workspace's policy settings from a JSON file (absent keys take the defaults)."""
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInput.on("file", f"cannot read JSON from {file}: {exc}") from None
    c = _container()
    with c.engine.begin() as conn:
        ws = workspaces.find_workspace(conn, workspace)
        settings = policy.put_settings(conn, ws["id"], raw)
    out.print_json(json.dumps(settings_json(settings)))


@policy_app.command("refusals")
@clear_errors
def policy_refusals(
    workspace: WorkspaceOpt,
    days: Annotated[int, typer.Option(min=1, help="messages created in the last N days")] = 7,
) -> None:
    """Count the messages the policy refused or deferred, per reason and channel."""
    c = _container()
    with c.engine.begin() as conn:
        ws = workspaces.find_workspace(conn, workspace)
        rows = policy.refusal_counts(conn, ws["id"], since=c.clock.now() - timedelta(days=days))
    table = Table("reason", "channel", "kind", "count", "meaning")
    for row in rows:
        table.add_row(row["reason"], row["channel"], row["kind"], str(row["count"]), row["meaning"])
    out.print(table)
    if not rows:
        out.print(f"nothing refused or deferred in the last {days} days")
