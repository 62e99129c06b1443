"""A small WhatsApp Cloud API (Graph API) on 127.0.0.1 for the adapter's tests: a real socket, a
real HTTP/1.1 exchange, answers in Meta's documented formats. It checks the Bearer token (190
when wrong), the send body (100 when a required field is missing), answers a send with
{messaging_product, contacts, messages [{id, message_status}]} or the Graph error set for that
recipient, stores submitted templates and lists them with cursor paging ({data, paging {cursors,
next}}), `page_size` at most per page. Bounded: it serves on a daemon thread and is shut down
when the block ends."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tests.channels.httpserver import Seen, serve
from tests.stores.localserver import Reply

VERSION = "v21.0"
PHONE_NUMBER_ID = "106540352242922"
WABA_ID = "102290129340398"
TOKEN = "EAAJB-test-token-not-real"
MEDIA_TYPES = ("image", "video", "document", "audio")


# Graph's answer: the shared test server's Reply (tests/channels/httpserver.py records the requests).
Answer = Reply


def graph_error(status: int, code: int, message: str, details: str = "", *, headers: dict[str, str] | None = None,
                subcode: int | None = None) -> Answer:
    """Graph's error object, as the "Error codes" page shows it."""
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code,
                             "fbtrace_id": "AazRQ5QRM0HvT0tDpmhXQ6N"}
    if details:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    if subcode is not None:
        error["error_subcode"] = subcode
    return Answer(status, json.dumps({"error": error}).encode(), headers or {})


def ok(body: Any) -> Answer:
    return Answer(200, json.dumps(body).encode())


class FakeGraph:
    """State and answers; `errors` maps a recipient (digits) to the error its send gets, and
    `override`, when set, answers every request (None closes the connection unanswered)."""

    def __init__(self, page_size: int = 2) -> None:
        self.page_size = page_size
        self.errors: dict[str, Answer] = {}
        self.override: Callable[[Seen], Answer | None] | None = None
        self.templates: list[dict[str, Any]] = []
        self.seen: list[Seen] = []
        self._ids = itertools.count(1)

    def answer(self, request: Seen) -> Answer | None:
        self.seen.append(request)
        if self.override is not None:
            return self.override(request)
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return graph_error(401, 190, "Invalid OAuth access token - Cannot parse access token")
        routes = {("POST", f"/{VERSION}/{PHONE_NUMBER_ID}/messages"): self._send,
                  ("POST", f"/{VERSION}/{WABA_ID}/message_templates"): self._create_template,
                  ("GET", f"/{VERSION}/{WABA_ID}/message_templates"): self._list_templates}
        route = routes.get((request.method, request.path))
        if route is None:
            return graph_error(400, 100, "Unsupported post request. Object with ID does not exist", subcode=33)
        return route(request)

    def _send(self, request: Seen) -> Answer:
        body = request.json()
        kind = body.get("type")
        if body.get("messaging_product") != "whatsapp" or not str(body.get("to", "")).isdigit():
            return graph_error(400, 100, "(#100) Invalid parameter", "messaging_product and to are required")
        if kind not in ("template", "text", *MEDIA_TYPES) or not isinstance(body.get(kind), dict):
            return graph_error(400, 131008, "(#131008) Required parameter is missing", f"{kind} object missing")
        if body["to"] in self.errors:
            return self.errors[body["to"]]
        wamid = f"wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI{next(self._ids):04d}"
        return ok({"messaging_product": "whatsapp", "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                   "messages": [{"id": wamid, "message_status": "accepted"}]})

    def _create_template(self, request: Seen) -> Answer:
        body = request.json()
        if not all(body.get(name) for name in ("name", "language", "category", "components")):
            return graph_error(400, 100, "(#100) Invalid parameter", "name, language, category, components required")
        if any(t["name"] == body["name"] and t["language"] == body["language"] for t in self.templates):
            return graph_error(400, 100, "(#100) Invalid parameter",
                               "Content in this language already exists", subcode=2388024)
        template = {"id": str(1627019861106475 + next(self._ids)), "name": body["name"], "language": body["language"],
                    "category": body["category"], "status": "PENDING", "components": body["components"]}
        self.templates.append(template)
        return ok({"id": template["id"], "status": "PENDING", "category": body["category"]})

    def _list_templates(self, request: Seen) -> Answer:
        limit = min(int(request.query.get("limit", ["25"])[0]), self.page_size)
        after = request.query.get("after", [None])[0]
        start = int(base64.b64decode(after)) if after else 0
        fields = request.query.get("fields", ["name,status,language,category,id"])[0].split(",")
        page = [{k: v for k, v in t.items() if k in fields} for t in self.templates[start:start + limit]]
        cursors = {"before": base64.b64encode(str(start).encode()).decode(),
                   "after": base64.b64encode(str(start + len(page)).encode()).decode()}
        paging: dict[str, Any] = {"cursors": cursors}
        if start + len(page) < len(self.templates):
            paging["next"] = (f"https://graph.facebook.com/{VERSION}/{WABA_ID}/message_templates?limit={limit}"
                              f"&after={cursors['after']}")
        return ok({"data": page, "paging": paging})


@contextmanager
def serve_graph(graph: FakeGraph) -> Iterator[str]:
    """Serves `graph` on 127.0.0.1 (the shared provider test server); yields the base URL."""
    with serve(graph.answer) as (url, _seen):
        yield url
