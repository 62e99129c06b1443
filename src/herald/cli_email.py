"""`herald domains|providers|send-test|bounces|inbound-smtp`: the email commands (issue 4),
registered on the main `herald` app by cli.py."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from herald.cli import _container, _secret_arg, _workspace_principal, app, clear_errors, err, out, stores_app
from herald.domain.errors import InvalidInput
from herald.services import domains, email, providers, templates, workspaces
from herald.services import stores as store_settings

domains_app = typer.Typer(help="Sending domains: DKIM keys, DNS records to publish, SPF/DKIM/DMARC checks.",
                          no_args_is_help=True)
providers_app = typer.Typer(help="Channel providers: SMTP relays and ESP accounts.", no_args_is_help=True)
bounces_app = typer.Typer(help="Bounce (DSN) and complaint (ARF) reports.", no_args_is_help=True)
app.add_typer(domains_app, name="domains")
app.add_typer(providers_app, name="providers")
app.add_typer(bounces_app, name="bounces")

WorkspaceOpt = Annotated[str, typer.Option(help="workspace id or slug")]


# -- sending domains ---------------------------------------------------------------------------------

@domains_app.command("add")
@clear_errors
def domains_add(
    domain: Annotated[str, typer.Argument(help="the domain email is sent from, e.g. mail.example.com")],
    workspace: WorkspaceOpt,
    selector: Annotated[str | None, typer.Option(help="DKIM selector (default herald<yyyymm>)")] = None,
    algorithm: Annotated[str, typer.Option(help="rsa-2048 or ed25519")] = "rsa-2048",
    spf_include: Annotated[str | None, typer.Option(help="your relay's SPF include, e.g. amazonses.com")] = None,
    dmarc_rua: Annotated[str | None, typer.Option(help="where DMARC aggregate reports go (an address)")] = None,
) -> None:
    """Generate the domain's DKIM key and print the DNS records to publish."""
    c = _container()
    with c.engine.begin() as conn:
        ws = workspaces.find_workspace(conn, workspace)
        row = domains.add_domain(conn, c.adapters, c.master_key, ws["id"], domain, now=c.clock.now(),
                                 selector=selector, algorithm=algorithm, spf_include=spf_include, dmarc_rua=dmarc_rua)
    out.print(f"sending domain {row['domain']} added ({row['dkim_algorithm']} DKIM key, selector "
              f"{row['dkim_selector']}). Publish these DNS records, then run `herald domains verify {row['domain']} "
              f"--workspace {workspace}`:", soft_wrap=True)
    _print_records(domains.records(c.adapters, row))


def _print_records(records: list[Any]) -> None:
    for record in records:
        out.print(f"\n[bold]{record.purpose.upper()}[/bold]  {record.name}  {record.type}", highlight=False)
        out.print(" ".join(json.dumps(s) for s in record.strings), highlight=False, soft_wrap=True)


@domains_app.command("verify")
@clear_errors
def domains_verify(domain: Annotated[str, typer.Argument()], workspace: WorkspaceOpt) -> None:
    """Check SPF, DKIM and DMARC with live DNS and say exactly what is missing."""
    c = _container()
    with c.engine.begin() as conn:
        row = domains.get_domain(conn, workspaces.find_workspace(conn, workspace)["id"], domain)
    checks = asyncio.run(domains.check(c.adapters, row))
    with c.engine.begin() as conn:
        saved = domains.save_check(conn, row, checks, now=c.clock.now())
    for name, check in checks.items():
        mark = "[green]ok[/green]  " if check.ok else "[red]FAIL[/red]"
        out.print(f"{mark} {name.upper()}: {check.found or '(nothing found)'}", highlight=False, soft_wrap=True)
        if not check.ok:
            out.print(f"      {check.problem}\n      fix: {check.fix}", highlight=False, soft_wrap=True)
    if saved["status"] != "verified":
        err.print(f"{row['domain']} is not verified: marketing email from it is refused until it is")
        raise typer.Exit(1)
    out.print(f"{row['domain']} is verified")


@domains_app.command("show")
@clear_errors
def domains_show(domain: Annotated[str, typer.Argument()], workspace: WorkspaceOpt) -> None:
    """The domain's status and the DNS records to publish."""
    c = _container()
    with c.engine.begin() as conn:
        row = domains.get_domain(conn, workspaces.find_workspace(conn, workspace)["id"], domain)
    out.print(f"{row['domain']}: {row['status']}" + (f" (checked {row['checked_at']:%Y-%m-%d %H:%M} UTC)"
                                                     if row["checked_at"] else ""))
    _print_records(domains.records(c.adapters, row))


@domains_app.command("list")
@clear_errors
def domains_list(workspace: WorkspaceOpt) -> None:
    c = _container()
    with c.engine.begin() as conn:
        rows = domains.list_domains(conn, workspaces.find_workspace(conn, workspace)["id"])
    table = Table("domain", "status", "selector", "algorithm", "checked")
    for r in rows:
        table.add_row(r["domain"], r["status"], r["dkim_selector"], r["dkim_algorithm"],
                      f"{r['checked_at']:%Y-%m-%d %H:%M}" if r["checked_at"] else "never")
    out.print(table)


# -- providers ---------------------------------------------------------------------------------------

def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput.on(what, f"{item!r}: write KEY=VALUE")
        found[key] = value
    return found


def _config_value(value: str) -> Any:
    try:
        return json.loads(value)  # numbers, booleans, lists
    except ValueError:
        return value


@providers_app.command("add")
@clear_errors
def providers_add(
    workspace: WorkspaceOpt,
    kind: Annotated[str, typer.Option(help="email: smtp, ses, sendgrid, mailgun; sms: twilio, http_gateway; "
                                           "whatsapp: whatsapp_cloud; push: webpush, fcm, apns")],
    name: Annotated[str, typer.Option(help="a name for it, e.g. 'postmark-relay'")],
    channel: Annotated[str, typer.Option(help="the channel it sends: email, sms, whatsapp, push")] = "email",
    config: Annotated[list[str] | None, typer.Option(
        "--config", help="KEY=VALUE (repeat), e.g. host=smtp.example.com")] = None,
    secret: Annotated[list[str] | None, typer.Option(
        "--secret", help="KEY=VALUE or KEY=- to read it from stdin")] = None,
    priority: Annotated[int, typer.Option(help="lower is tried first; the next one is the failover")] = 0,
) -> None:
    """Add a provider. Secrets are encrypted at rest and never shown again."""
    c = _container()
    secrets = {k: (_secret_arg(v, k) or "") for k, v in _pairs(secret, "secret").items()}
    settings = {k: _config_value(v) for k, v in _pairs(config, "config").items()}
    with c.engine.begin() as conn:
        ws = workspaces.find_workspace(conn, workspace)
        row = providers.add_provider(conn, c.adapters, c.master_key, ws["id"], channel=channel,  # type: ignore[arg-type]
                                     kind=kind, name=name, config=settings, secrets=secrets, priority=priority,
                                     now=c.clock.now())
    out.print(f"provider {row['id']} ({kind}) added; status callback URL: "
              f"{c.settings.public_base_url}/callbacks/{row['id']}", soft_wrap=True, highlight=False)


@providers_app.command("list")
@clear_errors
def providers_list(workspace: WorkspaceOpt, channel: Annotated[str, typer.Option()] = "email") -> None:
    c = _container()
    with c.engine.begin() as conn:
        rows = providers.for_channel(conn, workspaces.find_workspace(conn, workspace)["id"], channel)
    table = Table("id", "name", "kind", "priority", "config")
    for r in rows:
        table.add_row(r["id"], r["name"], r["kind"], str(r["priority"]), json.dumps(r["config"]))
    out.print(table)


# -- stores: sender identity -------------------------------------------------------------------------

@stores_app.command("sender")
@clear_errors
def stores_sender(
    store: Annotated[str, typer.Argument(help="store id (st_…)")],
    email_from: Annotated[str | None, typer.Option("--from", help="the From address, e.g. orders@shop.example")] = None,
    name: Annotated[str | None, typer.Option(help="the From name")] = None,
    address: Annotated[str | None, typer.Option(help="the postal address printed in marketing email")] = None,
) -> None:
    """Set the store's email sender identity (only the options given change)."""
    c = _container()
    with c.engine.begin() as conn:
        row = store_settings.set_sender(conn, _workspace_principal(conn, store), store, email_from=email_from,
                                        email_from_name=name, postal_address=address)
    out.print(f"{row['id']}: from {row['email_from_name'] or ''} <{row['email_from'] or 'not set'}>; postal address: "
              f"{row['postal_address'] or 'not set'}", highlight=False, soft_wrap=True)


# -- send-test ---------------------------------------------------------------------------------------

@app.command("send-test")
@clear_errors
def send_test(
    to: Annotated[str, typer.Option(help="the address to send the test to")],
    template: Annotated[str, typer.Option(help="template id or name")],
    store: Annotated[str, typer.Option(help="the store it is sent for (its sender and address)")],
    order: Annotated[str | None, typer.Option(
        help="an order id (ord_…) to fill the order variables; default: sample data")] = None,
) -> None:
    """Send one message rendered from a template now, through the workspace's email provider."""
    from herald.pipeline.render import SAMPLE_VARIABLES

    c = _container()
    now = c.clock.now()
    with c.engine.begin() as conn:
        who = _workspace_principal(conn, store)
        row = templates.find_template(conn, who.workspace_id, template)
        context: dict[str, Any] = {"order_id": order} if order else {"variables": {
            k: v for k, v in SAMPLE_VARIABLES.items() if k in ("order", "checkout")}}
        message_id = email.queue_email(conn, workspace_id=who.workspace_id, template=row, to=to, now=now,
                                       store_id=store, context=context, purpose="transactional")

    async def run() -> Any:
        try:
            return await email.deliver(c.email, message_id, attempt=1, max_attempts=email.MAX_ATTEMPTS)
        finally:
            await c.aclose_providers()
    outcome = asyncio.run(run())
    with c.engine.begin() as conn:
        status, reason = email.status_of(conn, message_id)
    if status == "sent":
        out.print(f"sent {message_id} to {to}", highlight=False)
        return
    err.print(f"{message_id}: {status}" + (f" ({reason})" if reason else "")
              + ("; the worker retries it" if outcome is not None else ""), highlight=False, soft_wrap=True)
    raise typer.Exit(1)


# -- bounces and the inbound listener ----------------------------------------------------------------

@bounces_app.command("parse")
@clear_errors
def bounces_parse(
    file: Annotated[Path, typer.Argument(help="a bounce or complaint message (.eml), '-' for standard input")],
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list, one object per failed recipient")] = False,
) -> None:
    """Classify one bounce (DSN) or complaint (ARF) message: recipient, status, reply code, reason, permanent."""
    c = _container(check_schema=False)
    raw = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    rows = [{"recipient": e.recipient, "status": e.status, "reply_code": e.reply_code,
             "reason": e.reason.value if e.reason else None, "permanent": e.permanent}
            for e in c.adapters.parse_report(raw)]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        out.print("not a bounce or complaint report (no failed recipients found)")
    for r in rows:
        out.print(f"{r['recipient']}: {r['status'] or '-'} {r['reply_code'] or ''} {r['reason']} "
                  f"({'permanent' if r['permanent'] else 'temporary'})", highlight=False)


@app.command("inbound-smtp")
@clear_errors
def inbound_smtp(
    host: Annotated[str, typer.Option(help="address to listen on")] = "0.0.0.0",  # noqa: S104 - it is a mail server
    port: Annotated[int | None, typer.Option(help="default HERALD_INBOUND_SMTP_PORT (2525)")] = None,
) -> None:
    """Receive bounces, complaint reports and mailto unsubscribes by SMTP (point the MX of
    HERALD_INBOUND_DOMAIN here)."""
    from herald.channels.email.inbound import InboundHandler, serve
    from herald.services import inbound

    c = _container()
    listen_port = port or c.settings.inbound_smtp_port

    async def deliver(recipients: Any, raw: bytes) -> None:
        await asyncio.to_thread(inbound.handle, c.engine, c.adapters, c.email.links, recipients, raw, c.clock.now())

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        domains_ = [c.settings.inbound_domain] if c.settings.inbound_domain else None
        server = await serve(InboundHandler(deliver, domains=domains_), host, listen_port)
        err.print(f"inbound SMTP listening on {host}:{listen_port}", highlight=False)
        await stop.wait()
        server.close()
        await server.wait_closed()

    asyncio.run(main())
