"""What the push tests' local peers share: JWT checks written against RFC 7515/7518 with
`cryptography` alone (so they do not trust the library that signed the token), and an HTTP/2 server
over TLS on 127.0.0.1 (hypercorn, ALPN h2) for the APNs tests. Bounded: the server runs as a task in
the test's own event loop and is shut down when the block ends."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID
from hypercorn.asyncio import serve
from hypercorn.config import Config


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# ---- JWTs ----------------------------------------------------------------------------------------------

def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    head, claims, signature = token.split(".")
    return (json.loads(unb64url(head)), json.loads(unb64url(claims)), f"{head}.{claims}".encode(),
            unb64url(signature))


def verify_es256(token: str, key: ec.EllipticCurvePublicKey) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of an ES256 JWS whose raw r||s signature (RFC 7518 3.4) `key` verifies;
    cryptography's InvalidSignature otherwise."""
    header, claims, signed, signature = _parts(token)
    if header.get("alg") != "ES256" or len(signature) != 64:
        raise ValueError(f"not an ES256 JWS: {header}")
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
    return header, claims


def verify_rs256(token: str, key: rsa.RSAPublicKey) -> tuple[dict[str, Any], dict[str, Any]]:
    header, claims, signed, signature = _parts(token)
    if header.get("alg") != "RS256":
        raise ValueError(f"not an RS256 JWS: {header}")
    key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
    return header, claims


# ---- an HTTP/2 server over TLS -----------------------------------------------------------------------------

@dataclass(frozen=True)
class H2Request:
    method: str
    path: str
    headers: dict[str, str]   # lower-cased names
    body: bytes
    http_version: str

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class H2Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


H2Answer = Callable[[H2Request], H2Reply]


@dataclass(frozen=True)
class H2Server:
    base_url: str
    seen: list[H2Request]
    client_tls: ssl.SSLContext   # trusts only the server's throwaway certificate


def write_certificate(folder: Path) -> tuple[Path, Path, bytes]:
    """A throwaway EC certificate for 127.0.0.1, valid for a day: (cert file, key file, cert PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (folder / "cert.pem").write_bytes(cert_pem)
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem", cert_pem


@contextlib.asynccontextmanager
async def serve_h2(answer: H2Answer, folder: Path) -> AsyncIterator[H2Server]:
    """HTTPS on 127.0.0.1 offering only h2 (like APNs), each request answered by `answer`."""
    certfile, keyfile, cert_pem = write_certificate(folder)
    seen: list[H2Request] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        request = H2Request(scope["method"], scope["path"],
                            {k.decode().lower(): v.decode() for k, v in scope["headers"]}, body,
                            scope["http_version"])
        seen.append(request)
        reply = answer(request)
        headers = [(k.lower().encode(), v.encode()) for k, v in reply.headers.items()]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)   # connections queue until the server task runs: no start-up race
    port = listener.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{listener.detach()}"]
    config.certfile, config.keyfile = str(certfile), str(keyfile)
    config.alpn_protocols = ["h2"]
    config.graceful_timeout = 1.0
    config.accesslog = config.errorlog = None
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    client_tls = ssl.create_default_context(cadata=cert_pem.decode())
    try:
        yield H2Server(f"https://127.0.0.1:{port}", seen, client_tls)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
