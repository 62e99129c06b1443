"""A small HTTP server on 127.0.0.1 for the provider tests (ESPs, SMS gateways, the Graph API,
push services): a real socket, a real HTTP/1.1 exchange, every request recorded and answered by a
per-test function that speaks the provider's documented wire format. tests/stores/localserver.py's
`Reply` is the answer type. Bounded: it serves on a daemon thread and is shut down when the block
ends."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.stores.localserver import Reply


@dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    method: str
    target: str                 # path?query, as sent
    headers: dict[str, str]     # lower-cased names
    body: bytes
    url: str                    # http://<Host header><target>: what a framework reports as request.url

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode(), keep_blank_values=True, strict_parsing=bool(self.body))

    def json(self) -> Any:
        return json.loads(self.body)


Answer = Callable[[Seen], Reply | None]


@contextmanager
def serve(answer: Answer) -> Iterator[tuple[str, list[Seen]]]:
    """Requests of any method answered by `answer` (default Content-Type application/json); None
    closes the connection without an answer after the whole request was read. Yields the base URL
    and the requests seen so far."""
    seen: list[Seen] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            request = Seen(self.command, self.path, headers, body, f"http://{headers.get('host', '')}{self.path}")
            seen.append(request)
            reply = answer(request)
            if reply is None:
                self.close_connection = True
                return
            try:
                self.send_response(reply.status)
                for name, value in {"Content-Type": "application/json", **reply.headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
            except (BrokenPipeError, ConnectionResetError):   # the client gave up waiting (timeout tests)
                self.close_connection = True

        do_GET = do_POST = do_PUT = do_DELETE = _any

        def log_message(self, format: str, *args: object) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def json_reply(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, b"" if body is None else json.dumps(body).encode(), headers or {})


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released): a connection is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
