"""Signed tracking URLs (click redirect, open pixel, unsubscribe) and the HTML rewriting that puts
them into a rendered email. Stdlib only; runs once per recipient, so it is one regex pass over
the HTML plus one HMAC per link.

A token is url-safe base64 (no padding) of

    version (1 byte) | kind (1 byte: c, o, u) | len(message id) (1 byte) | message id (UTF-8)
    | target URL (UTF-8, click only) | HMAC-SHA256(key, everything before)[:16]

The kind is inside the MAC, so an open token cannot be replayed as a click or an unsubscribe.
A verified click target is always an absolute http(s) URL without whitespace or control
characters: the redirect endpoint may put it in `Location` as it is (no open redirect to
`javascript:` and no header injection), but only after `verify`.

URLs: `{base}/t/c/{token}` (click, redirect to the target), `{base}/t/o/{token}.gif` (open
pixel), `{base}/t/u/{token}` (unsubscribe page and RFC 8058 one-click POST).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

TrackedKind = Literal["click", "open", "unsubscribe"]

_VERSION = 1
MAC_BYTES = 16                 # truncated HMAC-SHA256: 128 bits
_MAX_MESSAGE_ID_BYTES = 255    # one length byte
_MAX_TARGET_BYTES = 8_000      # longer links stay untracked (rewrite_links leaves them as they are)
_MAX_TOKEN_CHARS = 12_000
_KIND_CODES: dict[TrackedKind, bytes] = {"click": b"c", "open": b"o", "unsubscribe": b"u"}
_CODE_KINDS: dict[int, TrackedKind] = {code[0]: kind for kind, code in _KIND_CODES.items()}
_PATHS: dict[TrackedKind, str] = {"click": "/t/c/", "open": "/t/o/", "unsubscribe": "/t/u/"}
_TOKEN_ALPHABET = re.compile(r"[A-Za-z0-9_-]+")
# No ASCII whitespace/controls (header injection at the redirect) and an http(s) scheme with a host.
_HTTP_URL = re.compile(r"https?://[^\x00-\x20\x7f/?#]+(?:[/?#][^\x00-\x20\x7f]*)?", re.IGNORECASE)


class BadToken(ValueError):
    """A tracking token that was not made by us with this key (tampered, truncated, malformed)."""


@dataclass(frozen=True, slots=True)
class TrackedLink:
    kind: TrackedKind
    message_id: str
    target: str | None     # the click's destination; None for open and unsubscribe


def is_trackable_url(url: str) -> bool:
    """An absolute http(s) URL we are willing to sign as a click target."""
    return _HTTP_URL.fullmatch(url) is not None and len(url.encode()) <= _MAX_TARGET_BYTES


class TrackingLinks:
    """Makes and verifies the signed URLs of one Herald instance. `previous_keys` still verify
    (key rotation: links in mail already sent keep working) but never sign."""

    def __init__(self, base_url: str, key: bytes, *, previous_keys: Sequence[bytes] = ()) -> None:
        base = base_url.rstrip("/")
        if not is_trackable_url(base + "/"):
            raise ValueError("tracking base URL must be an absolute http(s) URL")
        if len(key) < 16:
            raise ValueError("tracking key must be at least 16 bytes")
        self.base_url = base
        self._key = key
        self._keyed_mac = hmac.new(key, digestmod="sha256")   # copied per token: the key is hashed once
        self._verify_keys = (key, *previous_keys)
        self._prefix = base + "/t/"

    def click_url(self, message_id: str, target: str) -> str:
        """Raises ValueError unless `target` is an absolute http(s) URL (see is_trackable_url)."""
        if not is_trackable_url(target):
            raise ValueError("click target must be an absolute http(s) URL without spaces or control characters")
        return self.base_url + _PATHS["click"] + self._token("click", message_id, target)

    def open_url(self, message_id: str) -> str:
        return self.base_url + _PATHS["open"] + self._token("open", message_id, "") + ".gif"

    def unsubscribe_url(self, message_id: str) -> str:
        return self.base_url + _PATHS["unsubscribe"] + self._token("unsubscribe", message_id, "")

    def is_tracking_url(self, url: str) -> bool:
        """True for URLs under this instance's tracking paths (never rewritten again)."""
        return url.startswith(self._prefix)

    def rewrite(self, html_text: str, message_id: str) -> str:
        """`rewrite_links` for one message: every http(s) link becomes a signed click URL, except
        links already under the tracking base (the unsubscribe link stays direct)."""
        try:
            head = _payload_head("click", message_id)   # once per message, not per link
        except ValueError:
            return html_text   # as when click_url refuses every link: left untracked
        click_base = self.base_url + _PATHS["click"]

        def click_url(target: str) -> str:   # click_url(message_id, target)
            if not is_trackable_url(target):
                raise ValueError("click target must be an absolute http(s) URL")
            return click_base + self._sealed(head + target.encode())

        return rewrite_links(html_text, click_url, skip_prefixes=(self._prefix,))

    def verify(self, token: str, *, kind: TrackedKind | None = None) -> TrackedLink:
        """The link a token stands for; raises BadToken on anything we did not sign, and on a
        token of another kind than `kind` when given (each endpoint should pass its own). An open
        token may carry its ".gif" suffix."""
        if token.endswith(".gif"):
            if kind not in (None, "open"):
                raise BadToken("wrong token kind")
            return self._verify_kind(token[:-4], expected="open")
        return self._verify_kind(token, expected=kind)

    def _verify_kind(self, token: str, expected: TrackedKind | None) -> TrackedLink:
        raw = decode_token(token)
        payload, given = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if not any(hmac.compare_digest(given, mac(key, payload)) for key in self._verify_keys):
            raise BadToken("signature mismatch")
        link = _parse_payload(payload)
        if expected is not None and link.kind != expected:
            raise BadToken("wrong token kind")
        return link

    def _token(self, kind: TrackedKind, message_id: str, target: str) -> str:
        return self._sealed(_payload_head(kind, message_id) + target.encode())

    def _sealed(self, payload: bytes) -> str:
        """The token: payload and its MAC, url-safe base64 without padding."""
        mac = self._keyed_mac.copy()
        mac.update(payload)
        encoded = binascii.b2a_base64(payload + mac.digest()[:MAC_BYTES], newline=False)
        return encoded.translate(_URLSAFE).rstrip(b"=").decode("ascii")


def _payload_head(kind: TrackedKind, message_id: str) -> bytes:
    """version | kind | len(message id) | message id: the payload before the target."""
    mid = message_id.encode()
    if not mid or len(mid) > _MAX_MESSAGE_ID_BYTES:
        raise ValueError(f"message id must be 1..{_MAX_MESSAGE_ID_BYTES} bytes")
    return bytes((_VERSION,)) + _KIND_CODES[kind] + bytes((len(mid),)) + mid


_URLSAFE = bytes.maketrans(b"+/", b"-_")   # what base64.urlsafe_b64encode does, without its two wrappers


def mac(key: bytes, payload: bytes) -> bytes:
    """The truncated HMAC-SHA256 that seals Herald's signed tokens (here and pipeline/consent_links.py)."""
    return hmac.digest(key, payload, "sha256")[:MAC_BYTES]


def decode_token(token: str, *, max_chars: int = _MAX_TOKEN_CHARS, min_payload: int = 4) -> bytes:
    """Strict url-safe base64 without padding: one spelling per token, nothing ignored. Returns
    payload + MAC (at least `min_payload` payload bytes); raises BadToken."""
    if len(token) > max_chars or not _TOKEN_ALPHABET.fullmatch(token) or len(token) % 4 == 1:
        raise BadToken("malformed token")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as err:
        raise BadToken("malformed token") from err
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
        raise BadToken("non-canonical token")   # stray bits in the last character
    if len(raw) < min_payload + MAC_BYTES:
        raise BadToken("token too short")
    return raw


def _parse_payload(payload: bytes) -> TrackedLink:
    if payload[0] != _VERSION or payload[1] not in _CODE_KINDS:
        raise BadToken("unknown token version or kind")
    kind = _CODE_KINDS[payload[1]]
    mid_end = 3 + payload[2]
    if payload[2] == 0 or len(payload) < mid_end:
        raise BadToken("malformed token")
    try:
        message_id = payload[3:mid_end].decode()
        target = payload[mid_end:].decode()
    except UnicodeDecodeError as err:
        raise BadToken("malformed token") from err
    if kind == "click":
        if not is_trackable_url(target):
            raise BadToken("click target is not an http(s) URL")
        return TrackedLink(kind, message_id, target)
    if target:
        raise BadToken("unexpected target")
    return TrackedLink(kind, message_id, None)


# <a ...href=...>: attributes before href are skipped whole (quoted values may hold ">" or " href=").
# Case folded by hand: with re.IGNORECASE the scan for "<a" is twice as slow.
_A_HREF = re.compile(
    r"""<[aA](?=[\s/>])(?:[^>"']|"[^"]*"|'[^']*')*?\s[hH][rR][eE][fF]\s*=\s*"""
    r"""(?:"([^"]*)"|'([^']*)'|([^\s"'<>`]+))"""
)


def rewrite_links(html_text: str, click_url: Callable[[str], str], *, skip_prefixes: Sequence[str] = ()) -> str:
    """Every `<a href="http(s)://...">` pointed at `click_url(target)`, in one regex pass.

    The href is HTML-unescaped before it is handed to `click_url` (`&amp;` in the source is `&`
    in the URL) and the new one is escaped when written. Left alone: mailto:, tel:, #anchors,
    relative links, targets `click_url` refuses with ValueError, anything under `skip_prefixes`
    and any URL shaped like one of ours (path ending /t/c|o|u/<token>), so the unsubscribe link
    stays direct even when the caller does not pass the base (`TrackingLinks.rewrite` does)."""
    pieces: list[str] = []
    last = 0
    for match in _A_HREF.finditer(html_text):
        group = 1 if match.group(1) is not None else 2 if match.group(2) is not None else 3
        target = html.unescape(match.group(group)).strip(_HTML_SPACE)  # browsers strip ASCII space only
        if not _wants_tracking(target, skip_prefixes):
            continue
        try:
            tracked = click_url(target)
        except ValueError:
            continue
        start, end = match.span(group)
        if group != 3:       # replace the quotes too
            start, end = start - 1, end + 1
        pieces.append(html_text[last:start])
        pieces.append('"' + html.escape(tracked, quote=True) + '"')
        last = end
    if not pieces:
        return html_text
    pieces.append(html_text[last:])
    return "".join(pieces)


def _wants_tracking(target: str, skip_prefixes: Sequence[str]) -> bool:
    lowered = target[:8].lower()
    if not (lowered.startswith("https://") or lowered.startswith("http://")):
        return False
    if _OUR_TRACKING_PATH.search(target) is not None:
        return False
    return not any(target.startswith(prefix) for prefix in skip_prefixes)


_HTML_SPACE = " \t\n\f\r"  # the "ASCII whitespace" of the HTML standard (not NBSP)
_OUR_TRACKING_PATH = re.compile(r"/t/[cou]/[A-Za-z0-9_-]{20,}(?:\.gif)?(?:[?#]|$)")


_BODY_END = "</body"


def add_open_pixel(html_text: str, url: str) -> str:
    """A 1x1 image pointing at `url`, just before the last </body> (appended when there is none)."""
    pixel = (f'<img src="{html.escape(url, quote=True)}" width="1" height="1" alt="" '
             'style="display:block;width:1px;height:1px;border:0;" />')
    at = html_text.rfind(_BODY_END)
    if at < 0:
        at = html_text.lower().rfind(_BODY_END)
    if at < 0:
        return html_text + pixel
    return html_text[:at] + pixel + html_text[at:]
