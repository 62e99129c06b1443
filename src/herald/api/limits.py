"""Request size limit: 413 before a large body is read into memory."""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from herald.api.problems import problem, respond


class BodySizeLimit:
    """`paths` gives some exact paths their own limit (file uploads)."""

    def __init__(self, app: ASGIApp, max_bytes: int, paths: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.paths = paths or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.paths.get(scope.get("path", ""), self.max_bytes)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await respond(self._problem(scope, limit))(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # An HTTPException passes through FastAPI's body parsing unchanged.
                    raise HTTPException(413, self._problem(scope, limit)["detail"])
            return message

        await self.app(scope, counted, send)

    def _problem(self, scope: Scope, limit: int) -> dict[str, Any]:
        return problem(413, f"the request body is larger than {limit} bytes; "
                            "send smaller batches", slug="too-large", instance=scope.get("path"))


class NoNulInUrl:
    """400 for a NUL character in the path or query: no database column can store one, and
    without this check PostgreSQL would turn it into a 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ("\x00" in scope.get("path", "") or
                                        b"%00" in scope.get("query_string", b"") or
                                        b"\x00" in scope.get("query_string", b"")):
            body = problem(400, "the URL contains a NUL (%00) character; remove it", slug="malformed-url",
                           instance=scope.get("path", "").replace("\x00", "%00"))
            await respond(body)(scope, receive, send)
            return
        await self.app(scope, receive, send)
