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

from herald import bootstrap, logs
from herald.bootstrap import Container
from herald.db import jobs as jobs_db
from herald.db.migrate import current_revision, head_revision, upgrade
from herald.domain.auth import Principal
from herald.domain.errors import HeraldError
from herald.services import apikeys, demo, workspaces
from herald.settings import SettingsError, load_settings

app = typer.Typer(help="Herald: multi-channel outreach for cross-border e-commerce sellers.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
apikey_app = typer.Typer(help="Create and revoke API keys.", no_args_is_help=True)
workspace_app = typer.Typer(help="Workspaces (tenants) and their stores.", no_args_is_help=True)
jobs_app = typer.Typer(help="Inspect the work queue.", no_args_is_help=True)
app.add_typer(apikey_app, name="apikey")
app.add_typer(workspace_app, name="workspace")
app.add_typer(jobs_app, name="jobs")
err = Console(stderr=True)
out = Console()
F = TypeVar("F", bound=Callable[..., Any])


def clear_errors(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SettingsError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None
        except HeraldError as exc:
            err.print(f"[red]error:[/red] {exc.detail}", highlight=False)
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
        await w.run(stop)

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
        await build_worker(c, **overrides).run(stop)

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
    base = c.settings.public_base_url
    if as_json:
        out.print_json(json.dumps({"workspace_id": ws, "api_key": key, "api_key_id": row["id"],
                                   "loaded": loaded}))
        return
    out.print(f"demo workspace {ws}: " + (f"loaded {loaded['contacts']} contacts, "
                                          f"{loaded['orders']} orders in 2 stores" if loaded else "already loaded"))
    out.print(f"demo API key (shown once): [bold]{key}[/bold]")
    out.print(f"try: curl -H 'Authorization: Bearer {key}' {base}/api/v1/contacts", soft_wrap=True)


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


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
