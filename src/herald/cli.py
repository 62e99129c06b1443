"""The `herald` command. Errors print one clear line (or one per setting) and exit non-zero."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from sqlalchemy import select

from herald import bootstrap, logs
from herald.bootstrap import Container
from herald.db import jobs as jobs_db
from herald.db.migrate import current_revision, head_revision, upgrade
from herald.db.tables import stores as stores_table
from herald.domain.auth import Principal
from herald.domain.errors import HeraldError, InvalidInput, NotFound
from herald.services import apikeys, demo, workspaces
from herald.services import stores as store_connections
from herald.settings import SettingsError, load_settings

app = typer.Typer(help="Herald: multi-channel outreach for cross-border e-commerce sellers.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
apikey_app = typer.Typer(help="Create and revoke API keys.", no_args_is_help=True)
workspace_app = typer.Typer(help="Workspaces (tenants) and their stores.", no_args_is_help=True)
jobs_app = typer.Typer(help="Inspect the work queue.", no_args_is_help=True)
app.add_typer(apikey_app, name="apikey")
app.add_typer(workspace_app, name="workspace")
app.add_typer(jobs_app, name="jobs")
stores_app = typer.Typer(help="Stores: add, connect to their platform, sync, inspect webhooks.", no_args_is_help=True)
app.add_typer(stores_app, name="stores")
err = Console(stderr=True)
out = Console()
F = TypeVar("F", bound=Callable[..., Any])


def clear_errors(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SettingsError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except HeraldError as exc:
            err.print(f"[red]error:[/red] {exc.detail}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
    return wrapper  # type: ignore[return-value]


def _container(*, check_schema: bool = True) -> Container:
    settings = load_settings()
    logs.configure(settings.log_level, settings.log_json)
    container = bootstrap.build(settings)
    if check_schema:
        bootstrap.require_current_schema(container)
    return container


@app.command()
@clear_errors
def migrate() -> None:
    """Create or upgrade the database schema to the latest version."""
    c = _container(check_schema=False)
    before = current_revision(c.engine)
    upgrade(c.engine)
    out.print(f"database at schema {head_revision()} (was {before or 'empty'})")


@app.command()
@clear_errors
def serve(
    host: Annotated[str | None, typer.Option(help="default HERALD_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="default HERALD_PORT")] = None,
    worker: Annotated[bool, typer.Option("--worker/--no-worker", help="run a worker in this process")] = True,
) -> None:
    """Run the API (and, unless --no-worker, one worker) in this process."""
    import uvicorn

    from herald.api.app import create_app
    from herald.worker.kinds import build_worker

    c = _container()

    async def run_worker(stop: asyncio.Event) -> None:
        w = build_worker(c)
        loop = asyncio.get_running_loop()
        c.notifier.subscribe(lambda: loop.call_soon_threadsafe(w.wake))
        try:
            await w.run(stop)
        finally:
            await c.aclose_providers()  # QUIT pooled SMTP connections, close HTTP clients

    application = create_app(c, background=run_worker if worker else None)
    uvicorn.run(application, host=host or c.settings.host, port=port or c.settings.port,
                log_level=c.settings.log_level, proxy_headers=True)


@app.command("worker")
@clear_errors
def worker_cmd(
    concurrency: Annotated[int | None, typer.Option(help="jobs in flight at once")] = None,
) -> None:
    """Run a worker: claim and run due jobs until SIGTERM/SIGINT, then drain and exit."""
    from herald.worker.kinds import build_worker

    c = _container()
    overrides = {"concurrency": concurrency} if concurrency else {}

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await build_worker(c, **overrides).run(stop)
        finally:
            await c.aclose_providers()

    asyncio.run(main())


@app.command("demo")
@clear_errors
def demo_cmd(
    contacts: Annotated[int, typer.Option(min=1, max=100_000, help="how many demo contacts")] = 300,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Load the demo workspace (once) and print a new API key for it."""
    c = _container()
    now = c.clock.now()
    with c.engine.begin() as conn:
        ws = demo.exists(conn)
        loaded = None if ws else demo.load(conn, now=now, contact_count=contacts)
        ws = ws or (loaded or {})["workspace_id"]
        row, key = apikeys.create_key(conn, workspace_id=ws, store_id=None, name="demo", now=now)
        shop = demo.first_store(conn, ws)
        _, write_key = store_connections.create_write_key(conn, Principal(row["id"], ws, None), shop)
    base = c.settings.public_base_url
    if as_json:
        out.print_json(json.dumps({"workspace_id": ws, "api_key": key, "api_key_id": row["id"],
                                   "store_id": shop, "write_key": write_key, "loaded": loaded}))
        return
    out.print(f"demo workspace {ws}: " + (f"loaded {loaded['contacts']} contacts, "
                                          f"{loaded['orders']} orders in 2 stores" if loaded else "already loaded"))
    out.print(f"demo API key (shown once): [bold]{key}[/bold]")
    out.print(f"try: curl -H 'Authorization: Bearer {key}' {base}/api/v1/contacts", soft_wrap=True)
    out.print(f"Segment-spec write key of store {shop} (shown once): [bold]{write_key}[/bold]")
    out.print(f"try: curl -u '{write_key}:' -H 'Content-Type: application/json' "
              f"-d '{{\"userId\": \"u-1\", \"event\": \"Viewed Product\"}}' {base}/v1/track", soft_wrap=True)


@apikey_app.command("create")
@clear_errors
def apikey_create(
    workspace: Annotated[str, typer.Option(help="workspace id or slug")],
    store: Annotated[str | None, typer.Option(help="scope the key to this store id")] = None,
    name: Annotated[str, typer.Option(help="a label to recognise the key by")] = "cli",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Create an API key. The key is printed once and cannot be shown again."""
    c = _container()
    with c.engine.begin() as conn:
        ws = workspaces.find_workspace(conn, workspace)
        if store:
            workspaces.get_store(conn, Principal("cli", ws["id"], None), store)
        row, key = apikeys.create_key(conn, workspace_id=ws["id"], store_id=store, name=name,
                                      now=c.clock.now())
    if as_json:
        print(json.dumps({"id": row["id"], "key": key, "workspace_id": row["workspace_id"],
                          "store_id": row["store_id"], "name": row["name"]}))
    else:
        out.print(f"API key {row['id']} (shown once): [bold]{key}[/bold]")


@apikey_app.command("revoke")
@clear_errors
def apikey_revoke(key_id: Annotated[str, typer.Argument(help="the key's id (key_…)")]) -> None:
    """Revoke an API key; requests with it fail from now on."""
    c = _container()
    with c.engine.begin() as conn:
        row = apikeys.revoke_key(conn, None, key_id, c.clock.now())
    out.print(f"revoked {row['id']} ({row['display_prefix']}…) at {row['revoked_at']:%Y-%m-%d %H:%M:%S} UTC")


@workspace_app.command("create")
@clear_errors
def workspace_create(
    name: Annotated[str, typer.Option(help="display name")],
    slug: Annotated[str, typer.Option(help="short unique name, a-z 0-9 -")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create a workspace (a tenant). Then: herald apikey create --workspace SLUG."""
    c = _container()
    with c.engine.begin() as conn:
        row = workspaces.create_workspace(conn, name=name, slug=slug, now=c.clock.now())
    if as_json:
        print(json.dumps({"id": row["id"], "slug": row["slug"], "name": row["name"]}))
    else:
        out.print(f"workspace {row['id']} ({row['slug']}) created")


@jobs_app.command("stats")
@clear_errors
def jobs_stats() -> None:
    """Jobs by state."""
    c = _container()
    with c.engine.begin() as conn:
        counts = jobs_db.counts_by_state(conn)
    for state in ("available", "running", "completed", "dead", "cancelled"):
        out.print(f"{state:>10}  {counts.get(state, 0)}")


# ---- stores (issue 3) ---------------------------------------------------------------------------
def _workspace_principal(conn: Any, store_id: str) -> Principal:
    """The CLI acts for the workspace that owns the store."""
    row = conn.execute(select(stores_table.c.workspace_id).where(stores_table.c.id == store_id)).first()
    if row is None:
        raise NotFound(f"no store {store_id!r}; list them with `herald stores list`")
    return Principal("cli", row.workspace_id, None)


def _secret_arg(value: str | None, what: str) -> str | None:
    """A secret given as '-' is read from standard input, so it stays out of shell history."""
    if value != "-":
        return value
    text = sys.stdin.readline().strip() if not sys.stdin.isatty() else typer.prompt(what, hide_input=True)
    return text or None


@stores_app.command("add")
@clear_errors
def stores_add(
    workspace: Annotated[str, typer.Option(help="workspace id or slug")],
    name: Annotated[str, typer.Option(help="display name")],
    platform: Annotated[str, typer.Option(help="shopify, woocommerce, magento or custom")],
    currency: Annotated[str, typer.Option(help="ISO 4217, e.g. USD")],
    timezone: Annotated[str, typer.Option(help="IANA zone of the store")] = "UTC",
    domain: Annotated[str | None, typer.Option(help="the store's domain, for links")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Add a store to a workspace. Then: herald stores connect STORE --webhook-secret -."""
    c = _container()
    with c.engine.begin() as conn:
        ws = workspaces.find_workspace(conn, workspace)
        row = workspaces.create_store(conn, Principal("cli", ws["id"], None), name=name, platform=platform,
                                      currency=currency, timezone=timezone, domain=domain, now=c.clock.now())
    hook = f"{c.settings.public_base_url}/hooks/{row['platform']}/{row['id']}"
    if as_json:
        print(json.dumps({"id": row["id"], "platform": row["platform"], "webhook_url": hook}))
    else:
        out.print(f"store {row['id']} ({row['platform']}) added; webhook URL: {hook}", soft_wrap=True)


@stores_app.command("list")
@clear_errors
def stores_list(workspace: Annotated[str, typer.Option(help="workspace id or slug")]) -> None:
    """The workspace's stores and how they are connected."""
    c = _container()
    with c.engine.begin() as conn:
        ws = workspaces.find_workspace(conn, workspace)
        rows = conn.execute(select(stores_table).where(stores_table.c.workspace_id == ws["id"])
                            .order_by(stores_table.c.id)).mappings().all()
    for row in rows:
        summary = store_connections.connection_summary(dict(row))
        out.print(f"{row['id']}  {row['platform']:<11} {row['name']}  webhook secret: "
                  f"{'set' if summary['webhook_secret_set'] else 'missing'}  API: "
                  f"{summary['api_base_url'] or '-'}  write key: {summary['write_key_prefix'] or '-'}")


@stores_app.command("connect")
@clear_errors
def stores_connect(
    store: Annotated[str, typer.Argument(help="store id (st_…)")],
    webhook_secret: Annotated[str | None, typer.Option(help="the secret webhooks are signed with ('-': read stdin); "
                                                       "for Magento the PEM public key")] = None,
    api_url: Annotated[str | None, typer.Option(help="the store's address, e.g. https://x.myshopify.com")] = None,
    access_token: Annotated[str | None, typer.Option(help="Shopify Admin API access token ('-': read stdin)")] = None,
    consumer_key: Annotated[str | None, typer.Option(help="WooCommerce REST consumer key")] = None,
    consumer_secret: Annotated[str | None, typer.Option(help="WooCommerce REST consumer secret ('-': stdin)")] = None,
) -> None:
    """Set a store's webhook secret (the previous one keeps working 3 days) and API credentials."""
    c = _container()
    now = c.clock.now()
    secret = _secret_arg(webhook_secret, "webhook secret")
    creds = {k: v for k, v in {"access_token": _secret_arg(access_token, "access token"),
                               "consumer_key": consumer_key,
                               "consumer_secret": _secret_arg(consumer_secret, "consumer secret")}.items() if v}
    with c.engine.begin() as conn:
        who = _workspace_principal(conn, store)
        if secret:
            store_connections.set_webhook_secret(conn, who, store, secret, master_key=c.master_key, now=now)
        if api_url or creds:
            store_connections.set_api_credentials(conn, who, store, base_url=api_url or "", credentials=creds,
                                                  master_key=c.master_key)
        row = workspaces.get_store(conn, who, store)
    summary = store_connections.connection_summary(row)
    out.print(f"store {store}: webhook secret {'set' if summary['webhook_secret_set'] else 'missing'}, "
              f"API {summary['api_base_url'] or 'not configured'}; webhook URL: "
              f"{c.settings.public_base_url}/hooks/{row['platform']}/{store}", soft_wrap=True)


@stores_app.command("write-key")
@clear_errors
def stores_write_key(store: Annotated[str, typer.Argument(help="store id (st_…)")],
                     as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Create the store's Segment-spec write key (the previous one stops working). Shown once."""
    c = _container()
    with c.engine.begin() as conn:
        _row, key = store_connections.create_write_key(conn, _workspace_principal(conn, store), store)
    if as_json:
        print(json.dumps({"store_id": store, "write_key": key}))
        return
    out.print(f"write key for {store} (shown once): [bold]{key}[/bold]")
    out.print(f"point analytics clients at {c.settings.public_base_url} (e.g. analytics.host = ...)", soft_wrap=True)


@stores_app.command("sync")
@clear_errors
def stores_sync(
    store: Annotated[str, typer.Argument(help="store id (st_…)")],
    resource: Annotated[list[str] | None, typer.Option(help="customers and/or orders (default both)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Pull customers and orders from the store's API (resumable; changes nothing already right)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from herald.domain.connectors import StoreApiError
    from herald.services import sync

    c = _container()
    wanted = tuple(resource or sync.RESOURCES)
    if any(r not in sync.RESOURCES for r in wanted):
        raise InvalidInput.on("resource", "must be customers or orders")
    with c.engine.begin() as conn:
        info, base_url, creds = store_connections.api_credentials(conn, _workspace_principal(conn, store), store,
                                                                  master_key=c.master_key)

    async def run(progress: Progress) -> sync.SyncReport:
        tasks = {r: progress.add_task(f"{r}", total=None) for r in wanted}

        def advance(res: str, pages: int, objects: int) -> None:
            progress.update(tasks[res], description=f"{res}: {objects} in {pages} pages")

        api = c.store_api(info.platform, base_url, creds)
        try:
            return await sync.sync_store(c.engine, c.clock, info, api, resources=wanted,  # type: ignore[arg-type]
                                         progress=advance)
        finally:
            await api.aclose()

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                  disable=as_json) as progress:
        try:
            report = asyncio.run(run(progress))
        except StoreApiError as exc:
            raise HeraldError(f"sync stopped: {exc}; run it again to continue where it stopped") from None
    summary = {"objects": report.objects, "pages": report.pages, "written": report.written,
               "unchanged": report.unchanged, "rate_limit_waits": report.waits, "problems": report.problems[:50]}
    if as_json:
        print(json.dumps(summary))
    else:
        out.print(f"synced {store}: " + ", ".join(f"{n} {r}" for r, n in report.objects.items()) +
                  f" ({report.written} written, {report.unchanged} unchanged; "
                  f"{report.waits} rate-limit waits, {len(report.problems)} problems)")


@stores_app.command("deliveries")
@clear_errors
def stores_deliveries(
    workspace: Annotated[str, typer.Option(help="workspace id or slug")],
    status: Annotated[str | None, typer.Option(help="received, processed, unknown_topic or failed")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
) -> None:
    """Inbound store webhooks: counts by status, then the latest (filter by status)."""
    from herald.services import intake

    c = _container()
    with c.engine.begin() as conn:
        ws = workspaces.find_workspace(conn, workspace)
        who = Principal("cli", ws["id"], None)
        counts = intake.counts_by_status(conn, ws["id"])
        page = intake.list_deliveries(conn, who, limit=limit, cursor=None, status=status)
    out.print("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "no deliveries yet")
    for d in page.items:
        out.print(f"{d['received_at']:%Y-%m-%d %H:%M:%S}  {d['id']}  {d['platform']}/{d['topic']}  {d['status']}"
                  + (f"  ({d['detail']})" if d["detail"] else ""), soft_wrap=True, highlight=False)


# ---- contacts ------------------------------------------------------------------------------------
contacts_app = typer.Typer(help="Look up contacts and merge duplicates.", no_args_is_help=True)
app.add_typer(contacts_app, name="contacts")


def _contact_principal(conn: Any, contact_id: str) -> Principal:
    """The CLI acts for the workspace that owns the contact (or owned it, if it was merged)."""
    from herald.db.tables import contact_merges, contacts

    ws = conn.execute(select(contacts.c.workspace_id).where(contacts.c.id == contact_id)).scalar()
    if ws is None:
        ws = conn.execute(select(contact_merges.c.workspace_id)
                          .where(contact_merges.c.merged_contact_id == contact_id).limit(1)).scalar()
    if ws is None:
        raise NotFound(f"no contact {contact_id!r}")
    return Principal("cli", ws, None)


def _print_contact(row: dict[str, Any], merges: list[dict[str, Any]], as_json: bool) -> None:
    from herald.api.schemas import ContactOut

    view = ContactOut.model_validate(row).model_dump(mode="json")
    if as_json:
        print(json.dumps(view))
        return
    name = " ".join(p for p in (view["first_name"], view["last_name"]) if p) or "(no name)"
    lines = [f"{view['id']}  {name}  email: {view['email'] or '-'}  phone: {view['phone'] or '-'}",
             f"stores: {', '.join(view['store_ids']) or '-'}   external ids: "
             + (", ".join(f"{ns}={v}" for ns, v in view["external_ids"].items()) or "-"),
             f"orders: {view['orders_count']}   spent: "
             + (", ".join(f"{cur} {amount}" for cur, amount in view["total_spent"].items()) or "-")
             + f"   first order: {_when(row['first_order_at'])}   last order: {_when(row['last_order_at'])}"
             + f"   last checkout: {_when(row['last_checkout_at'])}",
             f"tags: {', '.join(view['tags']) or '-'}"]
    lines += [f"merged in: {m['merged_contact_id']} at {_when(m['created_at'])} by {m['actor']}: {m['reason']}"
              for m in merges]
    for line in lines:
        out.print(line, soft_wrap=True, highlight=False, markup=False)


def _when(value: Any) -> str:
    return f"{value:%Y-%m-%d %H:%M} UTC" if value else "-"


@contacts_app.command("show")
@clear_errors
def contacts_show(contact_id: Annotated[str, typer.Argument(help="contact id (ct_…)")],
                  as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON")] = False) -> None:
    """A contact: identities, stores, order totals and the merges it kept."""
    from herald.services import contacts as contact_service

    c = _container()
    with c.engine.begin() as conn:
        who = _contact_principal(conn, contact_id)
        row = contact_service.get_contact(conn, who, contact_id)
        merges = contact_service.list_merges(conn, who, contact_id, limit=200, cursor=None).items
    _print_contact(row, merges, as_json)


@contacts_app.command("merge")
@clear_errors
def contacts_merge(
    keep: Annotated[str, typer.Argument(help="the contact to keep (ct_…)")],
    merged: Annotated[str, typer.Argument(help="the contact to merge into it; it is deleted")],
    reason: Annotated[str, typer.Option(help="why (kept in the merge record)")],
    as_json: Annotated[bool, typer.Option("--json", help="print the kept contact as the API's JSON")] = False,
) -> None:
    """Merge a duplicate contact into another (recorded; cannot be undone)."""
    from herald.services import contacts as contact_service

    c = _container()
    with c.engine.begin() as conn:
        who = _contact_principal(conn, keep)
        row = contact_service.merge_contacts(conn, who, keep, merged, reason=reason, now=c.clock.now())
    if as_json:
        _print_contact(row, [], True)
    else:
        out.print(f"merged {merged} into {keep}", highlight=False)
        _print_contact(row, [], False)


# ---- CSV imports (issue 3) ----------------------------------------------------------------------
import_app = typer.Typer(help="Import contacts and orders from CSV files (resumable; re-running changes nothing).",
                         no_args_is_help=True)
app.add_typer(import_app, name="import")
MapOption = Annotated[list[str] | None, typer.Option(
    "--map", help="COLUMN=FIELD, repeatable: override the detected mapping (FIELD 'ignore' drops a column, "
                  "'attributes' or 'attributes.KEY' keeps it as an attribute, '*=attributes' keeps every "
                  "unmapped column)")]
CountryOption = Annotated[str | None, typer.Option(help="country of phone numbers written without +code, e.g. US")]
EncodingOption = Annotated[str, typer.Option(help="auto (BOM, else UTF-8, else cp1252), or a codec: utf-8, "
                                                  "utf-16, cp1252, latin-1, ...")]
ResumeOption = Annotated[str | None, typer.Option(help="continue an interrupted import (imp_…) of this same file")]


def _import_principal(conn: Any, import_id: str) -> Principal:
    from herald.db.tables import imports as imports_table

    ws = conn.execute(select(imports_table.c.workspace_id).where(imports_table.c.id == import_id)).scalar()
    if ws is None:
        raise NotFound(f"no import {import_id!r}")
    return Principal("cli", ws, None)


def _parse_map(pairs: list[str] | None) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for pair in pairs or []:
        column, sep, field = pair.rpartition("=")
        if not sep or not column.strip():
            raise InvalidInput.on("--map", f"{pair!r} is not COLUMN=FIELD (e.g. --map 'E-mail=email')")
        mapping[column.strip()] = field.strip()
    return mapping


def _run_import(kind: str, file: Any, store: str | None, mapping: list[str] | None, default_country: str | None,
                encoding: str, resume: str | None, as_json: bool, batch_rows: int | None) -> None:
    from pathlib import Path

    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from herald.services import imports

    c = _container()
    path = Path(file).resolve()
    now = c.clock.now()
    if resume:
        with c.engine.begin() as conn:
            who = _import_principal(conn, resume)
        row = imports.prepare_resume(c.engine, who, resume, path, kind=kind, now=now)
    else:
        if not store:
            raise InvalidInput.on("--store", "name the store the rows belong to (st_…; see `herald stores list`)")
        facts = imports.inspect_file(path, encoding)
        with c.engine.begin() as conn:
            who = _workspace_principal(conn, store)
            row = imports.create(conn, who, kind=kind, store_id=store, path=path, source_name=path.name, facts=facts,
                                 mapping=_parse_map(mapping), default_country=default_country, now=now)
        if not as_json:
            shown = ", ".join(f"{col['column']}→{col['field']}" for col in row["mapping"]["columns"])
            err.print(f"import {row['id']}: {facts.encoding}, delimiter {facts.delimiter!r}; columns: {shown}",
                      highlight=False, markup=False, soft_wrap=True)
    started = row["offset"]
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), DownloadColumn(),
               TransferSpeedColumn(), TextColumn("{task.fields[rows]:,} rows {task.fields[rate]:,.0f}/s"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, disable=as_json or not err.is_terminal) as progress:
        task = progress.add_task(kind, total=row["size_bytes"], completed=started, rows=0, rate=0.0)
        clock_start = progress.get_time()
        rows_before = row["rows_ok"] + row["rows_unchanged"] + row["rows_failed"]  # a resumed import's earlier rows

        def advance(offset: int, rows: int) -> None:
            elapsed = max(progress.get_time() - clock_start, 1e-6)
            progress.update(task, completed=offset, rows=rows, rate=(rows - rows_before) / elapsed)

        try:
            done = imports.run(c.engine, row["id"], c.clock, progress=advance, batch_rows=batch_rows)
        except KeyboardInterrupt:
            err.print(f"interrupted; continue with: herald import {kind} {file} --resume {row['id']}",
                      highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except HeraldError:
            raise
        except Exception as exc:
            raise HeraldError(f"import {row['id']} stopped: {type(exc).__name__}: {exc}; continue with: "
                              f"herald import {kind} {file} --resume {row['id']}") from None
    _print_import(done, as_json)


def _print_import(row: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps({k: row.get(k) for k in ("id", "kind", "store_id", "state", "rows_ok", "rows_unchanged",
                                                   "rows_failed", "encoding", "line", "offset", "size_bytes",
                                                   "error")}))
        return
    unit = "contacts" if row["kind"] == "contacts" else "orders"
    out.print(f"import {row['id']} {row['state']}: {row['rows_ok']} {unit} imported or updated, "
              f"{row['rows_unchanged']} unchanged, {row['rows_failed']} failed", highlight=False, soft_wrap=True)
    if row["rows_failed"] or row.get("error"):
        out.print(f"error report: herald import errors {row['id']} --out errors.csv", highlight=False)


@import_app.command("contacts")
@clear_errors
def import_contacts(
    file: Annotated[str, typer.Argument(help="the CSV file")],
    store: Annotated[str | None, typer.Option(help="the store the contacts belong to (st_…)")] = None,
    mapping: MapOption = None,
    default_country: CountryOption = None,
    encoding: EncodingOption = "auto",
    resume: ResumeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    batch_rows: Annotated[int | None, typer.Option(hidden=True, min=1, max=100_000)] = None,
) -> None:
    """Import contacts (email, phone, names, country, tags, consent columns, ...) from a CSV file."""
    _run_import("contacts", file, store, mapping, default_country, encoding, resume, as_json, batch_rows)


@import_app.command("orders")
@clear_errors
def import_orders(
    file: Annotated[str, typer.Argument(help="the CSV file (one row per order, or per line item)")],
    store: Annotated[str | None, typer.Option(help="the store the orders belong to (st_…)")] = None,
    mapping: MapOption = None,
    default_country: CountryOption = None,
    encoding: EncodingOption = "auto",
    resume: ResumeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    batch_rows: Annotated[int | None, typer.Option(hidden=True, min=1, max=100_000)] = None,
) -> None:
    """Import orders (id, customer email/id, currency, total, date, status, line items) from a CSV file."""
    _run_import("orders", file, store, mapping, default_country, encoding, resume, as_json, batch_rows)


@import_app.command("status")
@clear_errors
def import_status(import_id: Annotated[str, typer.Argument(help="import id (imp_…)")],
                  as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """An import's state and counters."""
    from herald.services import imports

    c = _container()
    with c.engine.begin() as conn:
        row = imports.get_import(conn, _import_principal(conn, import_id), import_id)
    _print_import(row, as_json)


@import_app.command("errors")
@clear_errors
def import_errors_cmd(
    import_id: Annotated[str, typer.Argument(help="import id (imp_…)")],
    out_file: Annotated[str | None, typer.Option("--out", help="write the CSV here (default: standard output)")] = None,
) -> None:
    """The per-row error report of an import, as CSV: line, column, value, reason."""
    from herald.services import imports

    c = _container()
    with c.engine.begin() as conn:
        imports.get_import(conn, _import_principal(conn, import_id), import_id)
    if out_file is None:
        for chunk in imports.error_csv(c.engine, import_id):
            sys.stdout.write(chunk)
        return
    with open(out_file, "w", encoding="utf-8", newline="") as fh:
        for chunk in imports.error_csv(c.engine, import_id):
            fh.write(chunk)
    err.print(f"wrote {out_file}", highlight=False)


# Command groups in their own modules (email; policy; suppressions and privacy): importing
# them registers their commands on `app`.
from herald import cli_email, cli_policy, cli_privacy, cli_whatsapp  # noqa: E402, F401


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    # `python -m herald.cli`: run the importable module's app, the one cli_email registered its
    # commands on (this __main__ copy is a different module object).
    from herald.cli import main as _main

    _main()
