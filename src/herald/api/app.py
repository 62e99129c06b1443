"""The FastAPI application. `herald serve` passes a `background` coroutine (the in-process
worker) that runs on the same event loop and is stopped, and drained, on shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response

from herald import __version__
from herald.api import problems
from herald.api.deps import Replay
from herald.api.limits import BodySizeLimit, NoNulInUrl
from herald.api.routes import apikeys, callbacks, contacts, deliveries, hooks, meta, stores, templates, tracking
from herald.api.routes import consent as consent_routes
from herald.api.routes import imports as imports_routes
from herald.api.routes import inbox as inbox_routes
from herald.api.routes import messages as message_routes
from herald.api.routes import policy as policy_routes
from herald.api.routes import preferences as preference_pages
from herald.api.routes import privacy as privacy_routes
from herald.api.routes import push as push_routes
from herald.api.routes import segment as segment_routes
from herald.api.routes import suppressions as suppression_routes
from herald.bootstrap import Container

Background = Callable[[asyncio.Event], Coroutine[Any, Any, None]]

DESCRIPTION = """Herald's REST API. Authenticate with `Authorization: Bearer <API key>`.
Errors are RFC 7807 problem details. Lists are cursor-paginated (`next_cursor`).
Every create accepts an `Idempotency-Key` header."""


def create_app(container: Container, *, background: Background | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if background is None:
            yield
            return
        stop = asyncio.Event()
        task = asyncio.create_task(background(stop), name="herald-background")
        try:
            yield
        finally:
            stop.set()  # uvicorn got SIGTERM/SIGINT: drain in-flight jobs before exiting
            await task

    app = FastAPI(title="Herald", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  openapi_url="/openapi.json", docs_url="/docs", redoc_url=None)
    app.state.container = container
    problems.install(app)
    app.add_exception_handler(Replay, _replay)  # type: ignore[arg-type]
    app.add_middleware(BodySizeLimit, max_bytes=container.settings.max_request_bytes,
                       paths={"/api/v1/imports": container.settings.max_upload_bytes,
                              "/api/v1/suppressions/import": container.settings.max_upload_bytes})
    app.add_middleware(NoNulInUrl)
    for router in (contacts.router, stores.router, apikeys.router, deliveries.router, templates.router):
        app.include_router(router, prefix="/api/v1")
    app.include_router(imports_routes.router, prefix="/api/v1")  # CSV imports (upload, status, error report)
    app.include_router(policy_routes.router, prefix="/api/v1")  # policy settings, refusal counts
    app.include_router(message_routes.router, prefix="/api/v1")  # send to a contact (channel or best), send log
    app.include_router(push_routes.router, prefix="/api/v1")  # a contact's push subscriptions
    app.include_router(suppression_routes.router, prefix="/api/v1")  # suppression list: list/CSV, add, import
    app.include_router(privacy_routes.router, prefix="/api/v1")  # GDPR export/erase, retention settings
    app.include_router(meta.router)
    app.include_router(hooks.router)  # POST /hooks/{platform}/{store_id}: signed store webhooks
    app.include_router(callbacks.router)  # POST /callbacks/{provider_id}: signed provider status callbacks
    app.include_router(tracking.router)  # /t/*: click redirects, open pixel, unsubscribe (no auth)
    app.include_router(consent_routes.router, prefix="/api/v1")  # a contact's consent: state, history, changes
    app.include_router(preference_pages.router)  # /c/* double opt-in confirmation, /p/* preference centre (no auth)
    segment_routes.install(app, container)  # /v1/* Segment-spec ingestion + its group-commit writer
    app.include_router(inbox_routes.router, prefix="/api/v1")  # a contact's in-site inbox: list, read, stream, token
    app.include_router(inbox_routes.public)  # /inbox/*: the store site's widget, its JSON and stream (token)
    return app


async def _replay(_request: Request, exc: Replay) -> Response:
    headers = {**exc.headers, "Idempotent-Replayed": "true"}
    media = headers.pop("content-type", "application/json")
    return Response(exc.body, status_code=exc.status, media_type=media, headers=headers)
