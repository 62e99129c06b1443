"""Channel send speed: messages per second through each SMS, WhatsApp and push provider's adapter to a
local peer on 127.0.0.1, beside the same peer driven with no adapter; and in-site inbox rows per second.

For every provider, `provider.send(OutboundMessage)` with --concurrency sends in flight (50), a
provider object kept for all runs as the ProviderCache keeps it in production, each timed run right
after --warmup untimed sends (connections open, the FCM access token fetched, VAPID and APNs tokens
signed; the reference warmed the same way):
  * twilio          form-encoded Create Message, Basic auth; peer answers 201 + the Message resource
  * http_gateway    a JSON gateway with Bearer auth and `message_id_path` (/messages/0/id)
  * smpp            submit_sm on one transceiver bind (window = concurrency) to smpp34's SMSC
                    (a Rust SMPP server whose Python side accepts each submit_sm)
  * whatsapp_cloud  a template message (3 body parameters) to the Graph API's /messages
  * webpush         RFC 8291 aes128gcm encryption per message (fresh ECDH key and salt) + VAPID
  * fcm             HTTP v1 messages:send; the OAuth2 access token cached after the warm-up
  * apns            HTTP/2 over TLS (ALPN h2), ES256 provider token cached
  * inbox           services/inbox.deliver, one transaction per item, into a migrated SQLite file
                    (synchronous=FULL, Herald's default), rows/s

Reference, same run, same peer, same concurrency:
  * HTTP providers: a bare httpx client (the adapters' pool settings) replaying the exact request
    the adapter builds (captured once through httpx.MockTransport): the same bytes on the wire with
    no adapter work (no per-message body, encryption or answer parsing). ratio = adapter / bare
    (msg/s); "adapter µs/msg" = the adapter's CPU per message minus the reference's: its own work.
  * smpp: smpp34's own client (Rust core), window = concurrency, the same submit_sm.
  * inbox: a bare INSERT of the same row, one transaction per row, same database file.
Before timing, one captured request per provider is checked: Basic/Bearer credentials, the VAPID
and APNs ES256 JWTs, and the Web Push body decrypted with the subscription's key (RFC 8291).

Peers run in their own processes (uvloop when installed) so the CPU figure is the bench process's
alone: the HTTP/1.1 peer is a minimal asyncio server with canned answers in each provider's
documented format (plain http: no TLS in those figures), the APNs peer an h2 server over TLS, the
SMSC smpp34's server. Each peer's CPU share (of one core) during the run is printed: near 100% means
the peer, not the adapter, set the pace (Python peers; expected for the SMSC and the h2 server).
The machines are shared and noisy: each figure is the median of --runs runs (min and max shown).

    .venv/bin/python bench/channels.py                     # 5,000 messages per provider per run, 3 runs
    .venv/bin/python bench/channels.py --quick             # 500 messages, 1 run
    .venv/bin/python bench/channels.py --only twilio,apns  # some providers
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib.util
import json
import multiprocessing
import os
import socket
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs

REPO = Path(__file__).resolve().parents[1]
_PATH = list(sys.path)
sys.path[:0] = [str(REPO / "src"), str(REPO)]   # herald, and the tests package (its peers' helpers)

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import h2.exceptions  # noqa: E402
import http_ece  # type: ignore[import-untyped]  # noqa: E402
import httpx  # noqa: E402
import orjson  # noqa: E402
import smpp34  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402
from sqlalchemy import Engine, delete, insert  # noqa: E402
from tests.channels.push.peers import b64url, unb64url, verify_es256, verify_rs256, write_certificate  # noqa: E402

from herald.channels.http import default_client  # noqa: E402
from herald.channels.push.apns import ApnsProvider  # noqa: E402
from herald.channels.push.fcm import FcmProvider, load_service_account  # noqa: E402
from herald.channels.push.webpush import WebPushProvider, new_vapid_key  # noqa: E402
from herald.channels.sms import http_gateway  # noqa: E402
from herald.channels.sms.smpp import SmppProvider, SmppSettings  # noqa: E402
from herald.channels.sms.twilio import TwilioProvider  # noqa: E402
from herald.channels.whatsapp.cloud import WhatsAppCloudProvider  # noqa: E402
from herald.db.bulk import insert_many  # noqa: E402
from herald.db.engine import make_engine  # noqa: E402
from herald.db.migrate import upgrade  # noqa: E402
from herald.db.tables import contacts, inbox_items, messages  # noqa: E402
from herald.domain.auth import Principal  # noqa: E402
from herald.domain.delivery import (  # noqa: E402
    OutboundMessage,
    PushContent,
    SendResult,
    SmsContent,
    WhatsAppContent,
)
from herald.domain.ids import ulid  # noqa: E402
from herald.services import inbox  # noqa: E402
from herald.services import workspaces as workspace_service  # noqa: E402

# Back to the interpreter's own path once imported: every failed import scans each entry (httpcore
# tries `import sniffio` on every request when it is not installed), so extra entries would cost.
sys.path[:] = _PATH

PROVIDERS = ("twilio", "http_gateway", "smpp", "whatsapp_cloud", "webpush", "fcm", "apns", "inbox")
PEER_BOUND = 0.85            # a peer busier than this share of one core is (nearly) the bottleneck

TWILIO_ACCOUNT = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "f0e1d2c3b4a5968778695a4b3c2d1e0f"
TWILIO_PATH = f"/2010-04-01/Accounts/{TWILIO_ACCOUNT}/Messages.json"
TWILIO_AUTH = "Basic " + base64.b64encode(f"{TWILIO_ACCOUNT}:{TWILIO_TOKEN}".encode()).decode()
GATEWAY_PATH = "/api/v2/sms"
GATEWAY_TOKEN = "gw-bench-token-0123456789"
WA_PHONE_ID, WA_TOKEN, WA_VERSION = "106540352242922", "EAAJB-bench-token-not-real", "v21.0"
WA_PATH = f"/{WA_VERSION}/{WA_PHONE_ID}/messages"
FCM_PROJECT, FCM_ACCESS_TOKEN = "herald-bench", "ya29.bench-access-token"
FCM_PATH, FCM_TOKEN_PATH = f"/v1/projects/{FCM_PROJECT}/messages:send", "/token"
WEBPUSH_PREFIX = "/wpush/"
APNS_TEAM, APNS_KEY_ID, APNS_TOPIC = "ABCDE12345", "KEYID67890", "com.shop.example.app"
SMSC_SYSTEM_ID, SMSC_PASSWORD = "herald", "secret"


# ---- peers (each in its own process) -----------------------------------------------------------------

@dataclass(frozen=True)
class Route:
    """How the HTTP/1.1 peer answers one path: the credentials it requires (exact, or a prefix),
    then a status, an optional Location and a JSON body; `{n}` is the request's number."""

    auth: str
    status: int
    body: str = ""
    location: bool = False
    auth_is_prefix: bool = False


def http_routes() -> dict[str, Route]:
    twilio = ('{"sid": "SM{n:032x}", "account_sid": "' + TWILIO_ACCOUNT + '", "to": "+4915112345678", '
              '"from": "+15005550006", "body": "", "status": "queued", "num_segments": "1", '
              '"direction": "outbound-api", "api_version": "2010-04-01", "error_code": null, '
              '"error_message": null, "uri": "' + TWILIO_PATH[:-5] + '/SM{n:032x}.json"}')
    whatsapp = ('{"messaging_product": "whatsapp", "contacts": [{"input": "4915112345678", '
                '"wa_id": "4915112345678"}], "messages": [{"id": "wamid.HBgLNDkxNTExMjM0NTY3OBUCABEYEj{n:010d}", '
                '"message_status": "accepted"}]}')
    return {
        TWILIO_PATH: Route(TWILIO_AUTH, 201, twilio),
        GATEWAY_PATH: Route(f"Bearer {GATEWAY_TOKEN}", 200, '{"messages": [{"id": "gw-{n}", "status": "ACCEPTD"}]}'),
        WA_PATH: Route(f"Bearer {WA_TOKEN}", 200, whatsapp),
        FCM_TOKEN_PATH: Route("", 200, '{"access_token": "' + FCM_ACCESS_TOKEN + '", "expires_in": 3599, '
                                       '"token_type": "Bearer"}', auth_is_prefix=True),
        FCM_PATH: Route(f"Bearer {FCM_ACCESS_TOKEN}", 200, '{"name": "projects/' + FCM_PROJECT + '/messages/0:{n}"}'),
        WEBPUSH_PREFIX: Route("vapid t=", 201, location=True, auth_is_prefix=True),
    }


_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            411: "Length Required"}


class HttpPeer(asyncio.Protocol):
    """HTTP/1.1 with keep-alive (and pipelining): reads the request line, headers and a
    Content-Length body, checks the path and credentials, answers from `routes`."""

    def __init__(self, routes: dict[str, Route], counter: list[int]) -> None:
        self.routes, self.counter = routes, counter
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "transfer-encoding" in headers:
                self._write(411, "", "", close=True)
                return
            length = int(headers.get("content-length", "0"))
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            method, target, _version = lines[0].split(" ", 2)
            self._answer(method, target.partition("?")[0], headers)

    def _answer(self, method: str, path: str, headers: dict[str, str]) -> None:
        route = self.routes.get(path) or (self.routes[WEBPUSH_PREFIX] if path.startswith(WEBPUSH_PREFIX) else None)
        if method != "POST" or route is None:
            self._write(404, '{"error": "no such resource"}', "")
            return
        given = headers.get("authorization", "")
        if not (given.startswith(route.auth) if route.auth_is_prefix else given == route.auth):
            self._write(401, '{"error": "bad credentials"}', "")
            return
        self.counter[0] += 1
        n = self.counter[0]
        self._write(route.status, route.body.replace("{n:032x}", f"{n:032x}").replace("{n:010d}", f"{n:010d}")
                    .replace("{n}", str(n)), f"Location: /m/{n}\r\n" if route.location else "")

    def _write(self, status: int, body: str, extra: str, close: bool = False) -> None:
        assert self.transport is not None
        data = body.encode()
        self.transport.write(f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: application/json\r\n{extra}"
                             f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        if close:
            self.transport.close()


class H2Peer(asyncio.Protocol):
    """APNs over HTTP/2: POST /3/device/<token> with a bearer token and apns-topic answers 200 with
    the request's apns-id; anything else 403/404 with APNs' {"reason"} body."""

    def __init__(self) -> None:
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, dict[str, str]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]   # uvloop's transports only quack like one
        self.h2.initiate_connection()
        self.transport.write(self.h2.data_to_send())  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.transport.write(self.h2.data_to_send())
            self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.requests[event.stream_id] = dict(event.headers)  # type: ignore[arg-type]
            elif isinstance(event, h2.events.DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self._respond(event.stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.transport.close()
        self.transport.write(self.h2.data_to_send())

    def _respond(self, stream_id: int) -> None:
        headers = self.requests.pop(stream_id)
        if headers.get(":method") != "POST" or not headers.get(":path", "").startswith("/3/device/"):
            status, reason = "404", "BadPath"
        elif not headers.get("authorization", "").startswith("bearer ") or headers.get("apns-topic") != APNS_TOPIC:
            status, reason = "403", "InvalidProviderToken"
        else:
            self.h2.send_headers(stream_id, [(":status", "200"), ("apns-id", headers.get("apns-id", ""))],
                                 end_stream=True)
            return
        self.h2.send_headers(stream_id, [(":status", status), ("content-type", "application/json")])
        self.h2.send_data(stream_id, orjson.dumps({"reason": reason}), end_stream=True)


async def _serve_smsc(ready: Connection) -> None:
    """smpp34's SMSC: every bind accepted, every submit_sm accepted with a new message id."""
    port = _free_port()
    server = smpp34.Server("127.0.0.1", port, system_id="BENCHSMSC")
    await server.start()
    ready.send(port)
    accepted = 0
    while True:
        event = await server.next()
        if isinstance(event, smpp34.SubmitSmEvent):
            accepted += 1
            event.accept(f"{accepted:x}")


async def _serve_protocol(kind: str, options: dict[str, str], ready: Connection) -> None:
    loop = asyncio.get_running_loop()
    tls: ssl.SSLContext | None = None
    if kind == "h2":
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(options["certfile"], options["keyfile"])
        tls.set_alpn_protocols(["h2"])
        factory: Callable[[], asyncio.Protocol] = H2Peer
    else:
        routes, counter = http_routes(), [0]
        factory = lambda: HttpPeer(routes, counter)  # noqa: E731
    server = await loop.create_server(factory, "127.0.0.1", 0, ssl=tls, backlog=1024)
    ready.send(server.sockets[0].getsockname()[1])
    await server.serve_forever()


def peer_main(kind: str, options: dict[str, str], ready: Connection) -> None:
    """A peer process: serves until terminated; sends its port through `ready` once listening."""
    main = _serve_smsc(ready) if kind == "smsc" else _serve_protocol(kind, options, ready)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


@dataclass
class Peer:
    kind: str
    port: int
    process: multiprocessing.process.BaseProcess

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the peer process so far (Linux /proc); None elsewhere."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def peer(kind: str, options: dict[str, str] | None = None) -> Iterator[Peer]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=peer_main, args=(kind, options or {}, child), daemon=True,
                          name=f"bench-peer-{kind}")
    process.start()
    try:
        if not parent.poll(60):
            raise RuntimeError(f"the {kind} peer did not start within 60 s")
        yield Peer(kind, int(parent.recv()), process)
    finally:
        process.terminate()
        process.join(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the providers under test ----------------------------------------------------------------------------

class Sender(Protocol):
    async def send(self, message: OutboundMessage) -> SendResult: ...
    async def aclose(self) -> None: ...


@dataclass
class Keys:
    """Everything secret the providers and checks need, made once per bench run."""

    vapid_private: str
    vapid_public: ec.EllipticCurvePublicKey
    subscriptions: list[tuple[ec.EllipticCurvePrivateKey, dict[str, str]]]   # (browser key, {p256dh, auth})
    apns_key: ec.EllipticCurvePrivateKey
    service_account: str
    fcm_public: rsa.RSAPublicKey
    tls_client: ssl.SSLContext | None = None

    @classmethod
    def make(cls, subscriptions: int = 64) -> Keys:
        vapid_private, _ = new_vapid_key()
        vapid_key = ec.derive_private_key(int.from_bytes(unb64url(vapid_private), "big"), ec.SECP256R1())
        subs = []
        for _ in range(subscriptions):
            browser = ec.generate_private_key(ec.SECP256R1())
            point = browser.public_key().public_bytes(serialization.Encoding.X962,
                                                      serialization.PublicFormat.UncompressedPoint)
            subs.append((browser, {"p256dh": b64url(point), "auth": b64url(os.urandom(16))}))
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        account = json.dumps({"type": "service_account", "project_id": FCM_PROJECT, "private_key_id": "3f1e0c9a7b",
                              "client_email": f"herald@{FCM_PROJECT}.iam.gserviceaccount.com",
                              "private_key": rsa_key.private_bytes(serialization.Encoding.PEM,
                                                                   serialization.PrivateFormat.PKCS8,
                                                                   serialization.NoEncryption()).decode()})
        return cls(vapid_private, vapid_key.public_key(), subs, ec.generate_private_key(ec.SECP256R1()), account,
                   rsa_key.public_key())

    def apns_pem(self) -> str:
        return self.apns_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()).decode()


@dataclass
class Peers:
    http: str          # http://127.0.0.1:<port>
    h2: str            # https://127.0.0.1:<port>
    smsc_port: int


def sms(i: int) -> OutboundMessage:
    return OutboundMessage(id=f"msg_{ulid()}", workspace_id="ws_bench", channel="sms", purpose="transactional",
                           to=f"+49151{i % 10_000_000:08d}",
                           sms=SmsContent(f"Aurora Outfitters: your order #{1000 + i} has shipped. "
                                          f"Track it: https://shop.example/t/{i}"))


def whatsapp(i: int) -> OutboundMessage:
    return OutboundMessage(id=f"msg_{ulid()}", workspace_id="ws_bench", channel="whatsapp", purpose="transactional",
                           to=f"+55119{i % 100_000_000:08d}",
                           whatsapp=WhatsAppContent(template_name="order_shipped", template_language="pt-BR",
                                                    template_parameters=(f"Ana{i}", f"#{1000 + i}",
                                                                         f"https://shop.example/t/{i}")))


def push(i: int, to: str, keys: dict[str, str] | None = None) -> OutboundMessage:
    content = PushContent(title="Your order has shipped", body=f"Order #{1000 + i} is on its way to you",
                          url=f"https://shop.example/orders/{i}", icon="https://shop.example/icon.png",
                          data={"order": str(1000 + i)}, keys=keys or {}, ttl_seconds=86400)
    return OutboundMessage(id=f"msg_{ulid()}", workspace_id="ws_bench", channel="push", purpose="transactional",
                           to=to, push=content)


@dataclass
class HttpCase:
    """An HTTP provider: how to build it (with its own production client when `client` is None)
    and one message; `check` inspects one captured request before anything is timed."""

    name: str
    build: Callable[[Peers, Keys, httpx.AsyncClient | None], Sender]
    message: Callable[[int, Peers, Keys], OutboundMessage]
    check: Callable[[httpx.Request, Keys], None]
    http2: bool = False


def _check_auth(expected: str) -> Callable[[httpx.Request, Keys], None]:
    def check(request: httpx.Request, _keys: Keys) -> None:
        assert request.headers.get("authorization") == expected, "credentials not sent as configured"
    return check


def _check_webpush(request: httpx.Request, keys: Keys) -> None:
    """The body decrypts with the subscription's private key (RFC 8291); the VAPID JWT verifies."""
    scheme, _, params = request.headers["authorization"].partition(" ")
    values = dict(part.strip().partition("=")[::2] for part in params.split(","))
    assert scheme == "vapid" and request.headers["content-encoding"] == "aes128gcm"
    _, claims = verify_es256(values["t"], keys.vapid_public)
    assert claims["aud"] == f"{request.url.scheme}://{request.url.netloc.decode()}", claims
    browser, sub = keys.subscriptions[0]
    plain = http_ece.decrypt(request.content, private_key=browser, auth_secret=unb64url(sub["auth"]),
                             version="aes128gcm")
    assert json.loads(plain)["message_id"].startswith("msg_"), plain


def _check_apns(request: httpx.Request, keys: Keys) -> None:
    header, claims = verify_es256(request.headers["authorization"].removeprefix("bearer "), keys.apns_key.public_key())
    assert header["kid"] == APNS_KEY_ID and claims["iss"] == APNS_TEAM
    assert request.headers["apns-topic"] == APNS_TOPIC


def _check_fcm(request: httpx.Request, _keys: Keys) -> None:
    assert request.headers.get("authorization") == f"Bearer {FCM_ACCESS_TOKEN}"
    assert json.loads(request.content)["message"]["token"]


def _apns_client(keys: Keys) -> httpx.AsyncClient:
    """What apns.http2_client() builds, trusting the peer's throwaway certificate."""
    return httpx.AsyncClient(http2=True, verify=keys.tls_client or True,
                             timeout=httpx.Timeout(30.0, connect=10.0, pool=10.0),
                             limits=httpx.Limits(max_connections=8, max_keepalive_connections=8))


HTTP_CASES = {
    "twilio": HttpCase(
        "twilio",
        lambda p, k, c: TwilioProvider(TWILIO_ACCOUNT, auth_token=TWILIO_TOKEN, sender="+15005550006",
                                       status_callback_url="https://herald.example/hooks/twilio/prv_1",
                                       base_url=p.http, client=c),
        lambda i, p, k: sms(i), _check_auth(TWILIO_AUTH)),
    "http_gateway": HttpCase(
        "http_gateway",
        lambda p, k, c: http_gateway.HttpGatewayProvider(http_gateway.request_settings(
            {"url": p.http + GATEWAY_PATH, "auth": "bearer", "from": "AuroraShop", "static_fields": {"type": "sms"},
             "message_id_path": "/messages/0/id"}, {"token": GATEWAY_TOKEN}), client=c),
        lambda i, p, k: sms(i), _check_auth(f"Bearer {GATEWAY_TOKEN}")),
    "whatsapp_cloud": HttpCase(
        "whatsapp_cloud",
        lambda p, k, c: WhatsAppCloudProvider(WA_PHONE_ID, WA_TOKEN, api_version=WA_VERSION, base_url=p.http,
                                              client=c),
        lambda i, p, k: whatsapp(i), _check_auth(f"Bearer {WA_TOKEN}")),
    "webpush": HttpCase(
        "webpush",
        lambda p, k, c: WebPushProvider("mailto:ops@shop.example", k.vapid_private, client=c, allow_http=True),
        lambda i, p, k: push(i, f"{p.http}{WEBPUSH_PREFIX}{uuid.UUID(int=i)}",
                             k.subscriptions[i % len(k.subscriptions)][1]),
        _check_webpush),
    "fcm": HttpCase(
        "fcm",
        lambda p, k, c: FcmProvider(load_service_account(k.service_account), base_url=p.http,
                                    token_uri=p.http + FCM_TOKEN_PATH, client=c),
        lambda i, p, k: push(i, f"fcm{i:08d}:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx8C8v2Vq"), _check_fcm),
    "apns": HttpCase(
        "apns",
        lambda p, k, c: ApnsProvider(APNS_TEAM, APNS_KEY_ID, APNS_TOPIC, k.apns_pem(), base_url=p.h2, client=c),
        lambda i, p, k: push(i, f"{i:064x}"), _check_apns, http2=True),
}


def _mock_answer(request: httpx.Request, keys: Keys) -> httpx.Response:
    """What the peer would answer, for the capture (the FCM token endpoint checks the assertion)."""
    path = request.url.path
    if path == FCM_TOKEN_PATH:
        form = parse_qs(request.content.decode())
        verify_rs256(form["assertion"][0], keys.fcm_public)
        return httpx.Response(200, json={"access_token": FCM_ACCESS_TOKEN, "expires_in": 3599})
    if path.startswith("/3/device/"):
        return httpx.Response(200, headers={"apns-id": request.headers["apns-id"]})
    route = http_routes().get(path) or http_routes()[WEBPUSH_PREFIX]
    return httpx.Response(route.status, content=route.body.replace("{n:032x}", "0" * 32)
                          .replace("{n:010d}", "0" * 10).replace("{n}", "0").encode(),
                          headers={"Location": "/m/0"} if route.location else {})


async def capture(case: HttpCase, peers: Peers, keys: Keys) -> httpx.Request:
    """The request the adapter sends for one message, checked, without any network."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return _mock_answer(request, keys)

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    provider = case.build(peers, keys, client)
    try:
        result = await provider.send(case.message(0, peers, keys))
    finally:
        await provider.aclose()
        await client.aclose()
    assert result.status == "accepted", f"{case.name}: the captured send was not accepted: {result}"
    request = seen[-1]
    case.check(request, keys)
    return request


class BareHttp:
    """The reference: the captured request replayed by a plain httpx client."""

    def __init__(self, request: httpx.Request, client: httpx.AsyncClient) -> None:
        self.client, self.url, self.content = client, str(request.url), request.content
        self.headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}

    async def send(self, _i: int) -> bool:
        response = await self.client.post(self.url, content=self.content, headers=self.headers)
        return 200 <= response.status_code < 300

    async def aclose(self) -> None:
        await self.client.aclose()


class BareSmpp:
    """The reference: smpp34's own client (Rust core) submitting the same submit_sm."""

    def __init__(self, port: int, window: int) -> None:
        self.client = smpp34.Client("127.0.0.1", port, SMSC_SYSTEM_ID, SMSC_PASSWORD, window_size=window)
        self.session: Any = None

    async def open(self) -> BareSmpp:
        self.session = await self.client.connect()
        return self

    async def send(self, i: int) -> bool:
        message = sms(i)
        assert message.sms is not None
        response = await self.session.submit_sm(message.to.removeprefix("+"), message.sms.text.encode("ascii"),
                                                source_addr="AuroraShop", source_addr_ton=5, source_addr_npi=0,
                                                dest_addr_ton=1, dest_addr_npi=1)
        return bool(response.is_success)

    async def aclose(self) -> None:
        await self.client.stop()   # smpp34's SMSC does not answer unbind: stop without it


# ---- driving -----------------------------------------------------------------------------------------------

@dataclass
class Run:
    per_s: float
    cpu_us: float
    peer_share: float | None
    failures: int
    first_failure: str = ""


async def drive(send: Callable[[int], Awaitable[object]], count: int, concurrency: int, peer: Peer | None,
                ok: Callable[[object], bool]) -> Run:
    """`count` sends, `concurrency` in flight; rate, CPU of this process per send, peer CPU share."""
    numbers = iter(range(count))
    failures: list[str] = []

    async def worker() -> None:
        for i in numbers:
            outcome = await send(i)
            if not ok(outcome):
                failures.append(str(outcome)[:300])

    peer_before = peer.cpu_seconds() if peer else None
    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    peer_after = peer.cpu_seconds() if peer else None
    share = (peer_after - peer_before) / wall if peer_before is not None and peer_after is not None else None
    return Run(count / wall, cpu / count * 1e6, share, len(failures), failures[0] if failures else "")


def sending(provider: Sender, batch: list[OutboundMessage]) -> Callable[[int], Awaitable[SendResult]]:
    return lambda i: provider.send(batch[i])


def accepted(outcome: object) -> bool:
    return isinstance(outcome, SendResult) and outcome.status == "accepted"


def truthy(outcome: object) -> bool:
    return outcome is True


@dataclass
class Figure:
    provider: str
    unit: str
    reference_name: str
    runs: list[Run] = field(default_factory=list)
    reference: list[Run] = field(default_factory=list)
    note: str = ""

    def summary(self) -> dict[str, Any]:
        rate = statistics.median(r.per_s for r in self.runs)
        ref = statistics.median(r.per_s for r in self.reference)
        shares = [r.peer_share for r in self.runs if r.peer_share is not None]
        ref_shares = [r.peer_share for r in self.reference if r.peer_share is not None]
        failures = [r.first_failure for r in self.runs + self.reference if r.first_failure]
        return {"provider": self.provider, "unit": self.unit, "per_s": round(rate),
                "min": round(min(r.per_s for r in self.runs)), "max": round(max(r.per_s for r in self.runs)),
                "cpu_us_per_msg": round(statistics.median(r.cpu_us for r in self.runs), 1),
                "reference": self.reference_name, "reference_per_s": round(ref),
                "reference_cpu_us_per_msg": round(statistics.median(r.cpu_us for r in self.reference), 1),
                "ratio": round(rate / ref, 3),
                "adapter_cpu_us_per_msg": round(statistics.median(r.cpu_us for r in self.runs)
                                                - statistics.median(r.cpu_us for r in self.reference), 1),
                "peer_cpu_share": round(statistics.median(shares), 2) if shares else None,
                "reference_peer_cpu_share": round(statistics.median(ref_shares), 2) if ref_shares else None,
                "failures": sum(r.failures for r in self.runs + self.reference),
                "first_failure": failures[0] if failures else None, "note": self.note}


async def measure_http(case: HttpCase, peers: Peers, peer: Peer, keys: Keys, args: argparse.Namespace) -> Figure:
    request = await capture(case, peers, keys)
    apns_client = _apns_client(keys) if case.http2 else None   # the others build their own production client
    provider = case.build(peers, keys, apns_client)
    bare = BareHttp(request, _apns_client(keys) if case.http2 else default_client())
    figure = Figure(case.name, "msg/s", "bare httpx" + (" (HTTP/2, TLS)" if case.http2 else ""),
                    note=f"request body {len(request.content)} bytes" + (", HTTP/2 over TLS" if case.http2 else ""))
    try:
        await alternate(figure, provider, bare.send, lambda i: case.message(i, peers, keys), peer, args)
    finally:
        await provider.aclose()
        await bare.aclose()
        if apns_client is not None:
            await apns_client.aclose()
    return figure


async def measure_smpp(peers: Peers, peer: Peer, args: argparse.Namespace) -> Figure:
    provider = SmppProvider(SmppSettings(host="127.0.0.1", port=peers.smsc_port, system_id=SMSC_SYSTEM_ID,
                                         password=SMSC_PASSWORD, source_addr="AuroraShop", window=args.concurrency))
    bare = await BareSmpp(peers.smsc_port, args.concurrency).open()
    figure = Figure("smpp", "msg/s", "smpp34 client (Rust core)",
                    note=f"one transceiver bind, window {args.concurrency}; GSM-7, one part")
    try:
        await alternate(figure, provider, bare.send, sms, peer, args)
    finally:
        await provider.aclose()
        await bare.aclose()
    return figure


async def alternate(figure: Figure, provider: Sender, bare: Callable[[int], Awaitable[bool]],
                    message: Callable[[int], OutboundMessage], peer: Peer, args: argparse.Namespace) -> None:
    """Each run: the reference, then the adapter, each timed right after its own --warmup untimed
    sends, so both start from the same state (httpx's pool holds more or fewer connections
    depending on its recent past, and its cost per request grows with them)."""
    for run in range(args.runs):
        warm = [message(args.messages + i) for i in range(args.warmup)]
        batch = [message(i) for i in range(args.messages)]
        await drive(bare, args.warmup, args.concurrency, None, truthy)
        figure.reference.append(await drive(bare, args.messages, args.concurrency, peer, truthy))
        await drive(sending(provider, warm), args.warmup, args.concurrency, None, accepted)
        figure.runs.append(await drive(sending(provider, batch), args.messages, args.concurrency, peer, accepted))
        _progress(figure, run)


def _progress(figure: Figure, run: int) -> None:
    mine, ref = figure.runs[-1], figure.reference[-1]
    share = f", peer {mine.peer_share:.0%} of a core" if mine.peer_share is not None else ""
    print(f"[{figure.provider}] run {run + 1}: {mine.per_s:,.0f} {figure.unit} ({mine.cpu_us:,.0f} µs CPU each{share});"
          f" {figure.reference_name} {ref.per_s:,.0f} ({ref.cpu_us:,.0f} µs)"
          + (f"; {mine.failures + ref.failures} FAILED: {mine.first_failure or ref.first_failure}"
             if mine.failures + ref.failures else ""), file=sys.stderr)


# ---- the in-site inbox -------------------------------------------------------------------------------------

NOW = datetime(2026, 11, 23, 17, 30, tzinfo=UTC)


def populate_inbox(engine: Engine, count: int) -> tuple[str, str, list[tuple[str, str]]]:
    """A workspace, a store, 500 contacts and `count` queued inbox messages: (workspace, store,
    [(message id, contact id)])."""
    with engine.begin() as conn:
        ws = workspace_service.create_workspace(conn, name="Bench", slug=f"bench-{uuid.uuid4().hex[:8]}", now=NOW)
        store = workspace_service.create_store(conn, Principal("bench", ws["id"], None), name="Shop",
                                               platform="shopify", currency="USD", timezone="America/New_York",
                                               domain="shop.example", now=NOW)
        people = [f"ct_{ulid()}" for _ in range(500)]
        insert_many(conn, contacts, [{"id": cid, "workspace_id": ws["id"], "email": f"buyer{i}@example.com",
                                      "attributes": {}, "tags": [], "created_at": NOW, "updated_at": NOW}
                                     for i, cid in enumerate(people)])
        pairs = [(f"msg_{ulid()}", people[i % len(people)]) for i in range(count)]
        for start in range(0, count, 5000):
            insert_many(conn, messages, [{"id": mid, "workspace_id": ws["id"], "store_id": store["id"],
                                          "contact_id": cid, "channel": "inbox", "purpose": "transactional",
                                          "to_address": cid, "status": "queued", "context": {}, "attempts": 0,
                                          "created_at": NOW, "updated_at": NOW}
                                         for mid, cid in pairs[start:start + 5000]])
    return ws["id"], store["id"], pairs


def inbox_content(i: int) -> tuple[str, str, str]:
    return (f"Order #{1000 + i} has shipped", "Your parcel is on its way. Track it any time from your account.",
            f"https://shop.example/orders/{i}")


def timed_rows(write: Callable[[int], None], count: int) -> Run:
    cpu, started = time.process_time(), time.perf_counter()
    for i in range(count):
        write(i)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return Run(count / wall, cpu / count * 1e6, None, 0)


def measure_inbox(args: argparse.Namespace) -> Figure:
    figure = Figure("inbox", "rows/s", "bare INSERT",
                    note=f"SQLite synchronous={args.sqlite_synchronous}, one transaction per item")
    with tempfile.TemporaryDirectory(prefix="herald-channels-bench-") as tmp:
        engine = make_engine(f"sqlite:///{tmp}/bench.db", sqlite_synchronous=args.sqlite_synchronous)
        upgrade(engine)
        ws_id, store_id, pairs = populate_inbox(engine, args.messages)

        def deliver(i: int) -> None:
            title, body, url = inbox_content(i)
            with engine.begin() as conn:
                inbox.deliver(conn, ws_id, pairs[i][1], pairs[i][0], store_id, title, body, url, NOW)

        def bare_insert(i: int) -> None:
            title, body, url = inbox_content(i)
            with engine.begin() as conn:
                conn.execute(insert(inbox_items).values(
                    id=inbox.new_item_id(), workspace_id=ws_id, store_id=store_id, contact_id=pairs[i][1],
                    message_id=pairs[i][0], title=title, body=body, url=url, created_at=NOW))

        def clear() -> None:
            with engine.begin() as conn:
                removed = conn.execute(delete(inbox_items)).rowcount
            assert removed == args.messages, f"{removed} inbox items written, {args.messages} expected"

        try:
            for run in range(args.runs):
                figure.reference.append(timed_rows(bare_insert, args.messages))
                clear()
                figure.runs.append(timed_rows(deliver, args.messages))
                clear()
                _progress(figure, run)
        finally:
            engine.dispose()
    return figure


# ---- main ----------------------------------------------------------------------------------------------------

async def channel_figures(chosen: list[str], keys: Keys, ports: dict[str, Peer],
                          args: argparse.Namespace) -> list[Figure]:
    peers = Peers(f"http://127.0.0.1:{ports['http'].port}" if "http" in ports else "",
                  f"https://127.0.0.1:{ports['h2'].port}" if "h2" in ports else "",
                  ports["smsc"].port if "smsc" in ports else 0)
    figures = []
    for name in chosen:
        if name == "smpp":
            figures.append(await measure_smpp(peers, ports["smsc"], args))
        elif name in HTTP_CASES:
            case = HTTP_CASES[name]
            figures.append(await measure_http(case, peers, ports["h2" if case.http2 else "http"], keys, args))
    return figures


def run_loop(main: Callable[[], Coroutine[Any, Any, list[Figure]]], use_uvloop: bool) -> list[Figure]:
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            print("uvloop is not installed: running on asyncio's default loop", file=sys.stderr)
        else:
            return uvloop.run(main())
    return asyncio.run(main())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5_000, help="messages per provider per run (default 5,000)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=50, help="sends in flight (default 50)")
    parser.add_argument("--warmup", type=int, default=1_000,
                        help="untimed sends right before each timed one (default 1,000)")
    parser.add_argument("--quick", action="store_true", help="500 messages, 1 run, 200 warm-up sends")
    parser.add_argument("--only", default=",".join(PROVIDERS), help=f"comma separated, of {', '.join(PROVIDERS)}")
    parser.add_argument("--uvloop", action="store_true", help="run the bench's own event loop on uvloop")
    parser.add_argument("--sqlite-synchronous", choices=["FULL", "NORMAL"], default="FULL",
                        help="the inbox database's PRAGMA synchronous (Herald's default: FULL)")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.runs, args.warmup = 500, 1, 200
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(chosen) - set(PROVIDERS)
    if unknown:
        parser.error(f"unknown provider(s) {', '.join(sorted(unknown))}; choose from {', '.join(PROVIDERS)}")
    if args.messages < 1 or args.runs < 1 or args.concurrency < 1 or args.warmup < args.concurrency:
        parser.error("--messages, --runs and --concurrency must be at least 1, --warmup at least --concurrency")
    figures = run_channels(chosen, args)
    if "inbox" in chosen:
        figures.append(measure_inbox(args))
    report(figures, args)
    return 0


def run_channels(chosen: list[str], args: argparse.Namespace) -> list[Figure]:
    wanted = {"smsc" if n == "smpp" else "h2" if n == "apns" else "http" for n in chosen if n != "inbox"}
    if not wanted:
        return []
    keys = Keys.make()
    with tempfile.TemporaryDirectory(prefix="herald-channels-bench-") as tmp, contextlib.ExitStack() as stack:
        options: dict[str, str] = {}
        if "h2" in wanted:
            certfile, keyfile, cert_pem = write_certificate(Path(tmp))
            options = {"certfile": str(certfile), "keyfile": str(keyfile)}
            keys.tls_client = ssl.create_default_context(cadata=cert_pem.decode())
        ports = {kind: stack.enter_context(peer(kind, options)) for kind in sorted(wanted)}
        by_name = {f.provider: f for f in run_loop(lambda: channel_figures(chosen, keys, ports, args), args.uvloop)}
    return [by_name[name] for name in chosen if name in by_name]


def report(figures: list[Figure], args: argparse.Namespace) -> None:
    summaries = [f.summary() for f in figures]
    sniffio = importlib.util.find_spec("sniffio") is not None
    print(json.dumps({"messages": args.messages, "runs": args.runs, "concurrency": args.concurrency,
                      "warmup": args.warmup, "cpus": os.cpu_count(), "loop": "uvloop" if args.uvloop else "asyncio",
                      "sniffio_installed": sniffio, "figures": summaries}, indent=2))
    print(f"channel sends: {args.messages:,} per provider per run, {args.runs} run(s), {args.concurrency} in flight, "
          f"{os.cpu_count()} CPUs, {'uvloop' if args.uvloop else 'asyncio'}; median (min, max)")
    if not sniffio and any(s["provider"] in HTTP_CASES for s in summaries):
        print("  note: sniffio is not installed, so httpcore retries `import sniffio` (a sys.path scan) on every "
              "request: the HTTP figures include that cost")
    for s in summaries:
        peer_note = ""
        if s["peer_cpu_share"] is not None:
            bound = " PEER-BOUND" if max(s["peer_cpu_share"], s["reference_peer_cpu_share"] or 0) >= PEER_BOUND else ""
            ref_share = s["reference_peer_cpu_share"]
            peer_note = (f"  peer {s['peer_cpu_share']:.0%} / {ref_share:.0%} of a core{bound}" if ref_share is not None
                         else f"  peer {s['peer_cpu_share']:.0%} of a core{bound}")
        failed = f"  FAILURES {s['failures']}: {s['first_failure']}" if s["failures"] else ""
        print(f"  {s['provider']:<15} {s['per_s']:>7,} {s['unit']} ({s['min']:,}-{s['max']:,})  "
              f"CPU {s['cpu_us_per_msg']:,.0f} µs/msg | {s['reference']} {s['reference_per_s']:,} "
              f"(CPU {s['reference_cpu_us_per_msg']:,.0f} µs) | ratio {s['ratio']:.2f}, adapter "
              f"{s['adapter_cpu_us_per_msg']:+,.0f} µs/msg{peer_note}{failed}")


if __name__ == "__main__":
    sys.exit(main())
