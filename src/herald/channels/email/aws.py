"""AWS Signature Version 4 request signing with the standard library (no botocore).

The algorithm, as published in the AWS General Reference ("Signature Version 4 signing process",
https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html) and checked against
AWS's Signature Version 4 test suite (aws-sig-v4-test-suite, tests/channels/email/test_ses.py):

  CanonicalRequest = Method \\n CanonicalURI \\n CanonicalQuery \\n CanonicalHeaders \\n SignedHeaders \\n
                     hex(SHA256(body))
  StringToSign     = "AWS4-HMAC-SHA256" \\n X-Amz-Date \\n <date>/<region>/<service>/aws4_request \\n
                     hex(SHA256(CanonicalRequest))
  SigningKey       = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")

The canonical URI follows the rule for every service except S3: the path is normalised (dot
segments and empty segments removed) and each segment URI-encoded once more, so a path that is
already percent-encoded is encoded twice, as AWS specifies. Not for S3.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from urllib.parse import quote, unquote, urlsplit

__all__ = ["ALGORITHM", "canonical_request", "sign_v4", "string_to_sign"]

ALGORITHM = "AWS4-HMAC-SHA256"

# Headers sign_v4 computes itself; a caller passing one of them has a bug (it would be signed twice).
_SET_BY_SIGNER = frozenset({"authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SPACES = re.compile(r"\s+")

Headers = Mapping[str, str] | Iterable[tuple[str, str]]


def sign_v4(method: str, url: str, headers: Headers, body: bytes, *, access_key: str, secret_key: str,
            region: str, service: str, now: datetime, session_token: str | None = None,
            content_sha256_header: bool = False) -> dict[str, str]:
    """The headers to add to a request so AWS accepts it: X-Amz-Date, Authorization, and
    X-Amz-Security-Token (temporary credentials) / X-Amz-Content-Sha256 (S3) when asked.

    Every header in `headers` is signed (pass exactly the ones that will be sent: Content-Type,
    ...); Host is taken from `url` unless given. `body` must be the exact bytes sent."""
    pairs = list(headers.items() if isinstance(headers, Mapping) else headers)
    clashing = sorted({name.lower() for name, _ in pairs} & _SET_BY_SIGNER)
    if clashing:
        raise ValueError(f"sign_v4 sets {', '.join(clashing)} itself; do not pass them")
    amz_date = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    payload_hash = hashlib.sha256(body).hexdigest()
    added = {"X-Amz-Date": amz_date}
    if session_token:
        added["X-Amz-Security-Token"] = session_token
    if content_sha256_header:
        added["X-Amz-Content-Sha256"] = payload_hash
    signed = [*pairs, *added.items()]
    if not any(name.lower() == "host" for name, _ in signed):
        signed.append(("host", host_of(url)))
    creq, signed_names = canonical_request(method, url, signed, payload_hash)
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    key = _signing_key(secret_key, amz_date[:8], region, service)
    signature = hmac.new(key, string_to_sign(amz_date, scope, creq).encode(), hashlib.sha256).hexdigest()
    added["Authorization"] = (f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={signed_names}, "
                              f"Signature={signature}")
    return added


def canonical_request(method: str, url: str, headers: Headers, payload_hash: str) -> tuple[str, str]:
    """(the canonical request, the SignedHeaders list) for a request whose headers are all signed."""
    parts = urlsplit(url)
    names, canonical_headers = _canonical_headers(headers)
    creq = "\n".join([method.upper(), _canonical_uri(parts.path), _canonical_query(parts.query),
                      canonical_headers, names, payload_hash])
    return creq, names


def string_to_sign(amz_date: str, scope: str, creq: str) -> str:
    return "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])


def host_of(url: str) -> str:
    """The Host header an HTTP client sends for `url`: lower-cased host, port only when not the default."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        return f"{host}:{parts.port}"
    return host


def _canonical_uri(path: str) -> str:
    segments: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    normalised = "/" + "/".join(segments)
    if segments and (path.endswith("/") or path.endswith("/.") or path.endswith("/..")):
        normalised += "/"
    return quote(normalised, safe="/~")


def _canonical_query(query: str) -> str:
    """Each name and value URI-encoded (RFC 3986 unreserved characters kept), sorted by name, then value."""
    if not query:
        return ""
    pairs = []
    for item in query.split("&"):
        name, _, value = item.partition("=")
        pairs.append((_encode(name), _encode(value)))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def _encode(text: str) -> str:
    return quote(unquote(text), safe="-_.~")


def _canonical_headers(headers: Headers) -> tuple[str, str]:
    """Lower-cased names, sorted; values trimmed with inner runs of spaces collapsed; a header given
    more than once has its values joined with commas in the order given."""
    values: dict[str, list[str]] = {}
    for name, value in headers.items() if isinstance(headers, Mapping) else headers:
        values.setdefault(name.strip().lower(), []).append(_SPACES.sub(" ", value.strip()))
    names = sorted(values)
    canonical = "".join(f"{name}:{','.join(values[name])}\n" for name in names)
    return ";".join(names), canonical


@lru_cache(maxsize=16)
def _signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """Valid for a whole day: derived once per (credentials, day, region, service)."""
    key = hmac.new(f"AWS4{secret_key}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key
