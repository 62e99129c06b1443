"""DKIM signing (RFC 6376), c=relaxed/relaxed, with a=rsa-sha256 (RSA keys, 2048 bits) or
a=ed25519-sha256 (RFC 8463), through `cryptography`. The key is loaded once per signer: build
one DkimSigner per sending domain and keep it (loading an RSA PEM costs more than signing).

Contract of `DkimSigner.sign(message)`: `message` is a whole RFC 5322 message with CRLF line
endings (what build_mime returns; bare LF line endings are not detected and would be signed
as one long header); the result is the same bytes with one `DKIM-Signature:` header
prepended. Headers named in `signed_headers` are signed when present (every instance,
bottom-up as RFC 6376 §5.4.2 selects them) and From is signed once more than it occurs
("oversigning", RFC 6376 §8.15) so a From added in transit breaks the signature.

Cost besides the private-key operation: a memchr scan of the body for tabs, the whitespace
rules applied between its first and last space only (base64 parts have none), one SHA-256 of
it, ~10 µs of header work.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Sequence
from typing import Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from herald.channels.email.mime import idna_domain

DEFAULT_SIGNED_HEADERS: tuple[str, ...] = (
    "From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type", "Reply-To",
    "List-Unsubscribe", "List-Unsubscribe-Post",
)
MIN_RSA_BITS = 1024    # RFC 8301 §3.2: verifiers MUST NOT consider smaller keys valid
TXT_STRING_MAX = 255   # RFC 1035 §3.3: one <character-string> holds at most 255 octets

_WSP_TO_COLLAPSE = re.compile(rb"\t[ \t]*| [ \t]+")   # the runs relaxed canonicalisation changes (headers)
_SELECTOR = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\Z")

Algorithm = Literal["rsa-2048", "ed25519"]


class DkimSigner:
    """Signs messages for one (domain, selector) with one private key (PEM, unencrypted)."""

    def __init__(self, domain: str, selector: str, private_key_pem: bytes,
                 signed_headers: Sequence[str] = DEFAULT_SIGNED_HEADERS, *, key_is_ours: bool = False) -> None:
        """`key_is_ours`: the PEM is one `generate_key` made (read back from Herald's own storage),
        so OpenSSL's RSA consistency checks are skipped: 13 µs to load instead of ~40 ms. Never
        for a key a user imported (a malformed key must be refused, not used to sign)."""
        if not _SELECTOR.match(selector):
            raise ValueError(f"invalid DKIM selector {selector!r}")
        key = serialization.load_pem_private_key(private_key_pem, password=None,
                                                 unsafe_skip_rsa_key_validation=key_is_ours)
        if isinstance(key, rsa.RSAPrivateKey):
            if key.key_size < MIN_RSA_BITS:
                raise ValueError(f"a {key.key_size}-bit RSA key is too small for DKIM (use 2048)")
            self.algorithm = "rsa-sha256"
        elif isinstance(key, ed25519.Ed25519PrivateKey):
            self.algorithm = "ed25519-sha256"
        else:
            raise ValueError("a DKIM key must be RSA or Ed25519")
        self._key = key
        self.domain = idna_domain(domain.rstrip(".")).lower()
        self.selector = selector
        self._signed_names = tuple(dict.fromkeys(name.lower().encode("ascii") for name in signed_headers))
        self._signed_set = frozenset(self._signed_names)
        self._head = _fold_tags("DKIM-Signature:", [(" ", tag) for tag in (
            "v=1;", f"a={self.algorithm};", "c=relaxed/relaxed;", f"d={self.domain};", f"s={selector};")])
        self._h_cache: dict[tuple[str, ...], str] = {}

    @property
    def public_key_b64(self) -> str:
        """The p= value of this key's DNS record."""
        return public_key_b64(self._key)

    @property
    def dns_txt(self) -> str:
        """The TXT value to publish at <selector>._domainkey.<domain>."""
        return dns_txt_value(self._key)

    def sign(self, message: bytes, *, now: int | None = None) -> bytes:
        """`message` with a DKIM-Signature header prepended; `now` (Unix time) sets t=."""
        header_end = message.find(b"\r\n\r\n")
        if header_end < 0:   # no body: the header block is the whole message
            header_block, body = message, b""
        else:
            header_block, body = message[:header_end + 2], message[header_end + 4:]
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode("ascii")
        signed_fields, names = self._select_headers(header_block)
        timestamp = int(time.time()) if now is None else now
        # Layout: the static tags, "t=; bh=" (63 characters), the h= lines, then b= (RFC 6376 §3.5
        # allows FWS between tags, after each ":" in h= and inside base64 values).
        unsigned = f"{self._head}\r\n t={timestamp}; bh={body_hash};\r\n{self._h_lines(names)}"
        signed_fields.append(relaxed_header(unsigned.encode("ascii") + b" b="))
        signature = base64.b64encode(self._signature(b"".join(signed_fields))).decode("ascii")
        return f"{unsigned}\r\n b={_fold_base64(signature)}\r\n".encode("ascii") + message

    def _select_headers(self, header_block: bytes) -> tuple[list[bytes], tuple[str, ...]]:
        """The relaxed fields to sign (each ending in CRLF), bottom-up per name (RFC 6376 §5.4.2),
        and the h= names, From oversigned. Relaxed canonicalisation unfolds and collapses
        whitespace, so the whole block is unfolded and collapsed once, then read a line a field."""
        block = header_block.replace(b"\r\n ", b" ").replace(b"\r\n\t", b"\t")
        if b"\t" in block or b"  " in block:
            block = _WSP_TO_COLLAPSE.sub(b" ", block)
        instances: dict[bytes, list[bytes]] = {}
        wanted = self._signed_set
        for line in block.split(b"\r\n"):
            name, _, value = line.partition(b":")
            key = name.rstrip(b" ").lower()
            if key in wanted:
                instances.setdefault(key, []).append(b"%s:%s\r\n" % (key, value.strip(b" ")))
        signed: list[bytes] = []
        names: list[str] = []
        for key in self._signed_names:
            for field in reversed(instances.get(key, ())):
                signed.append(field)
                names.append(key.decode("ascii"))
        names.append("from")   # one more From than present: an added From fails verification
        return signed, tuple(names)

    def _h_lines(self, names: tuple[str, ...]) -> str:
        """The folded h= tag for these names (a handful of variants per signer: cached)."""
        folded = self._h_cache.get(names)
        if folded is None:
            folded = _fold_tags("", _h_tag(list(names)))   # " h=...": its first line starts with the glue
            if len(self._h_cache) >= 256:   # bounded, whatever headers arrive
                self._h_cache.clear()
            self._h_cache[names] = folded
        return folded

    def _signature(self, data: bytes) -> bytes:
        if isinstance(self._key, rsa.RSAPrivateKey):
            return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        assert isinstance(self._key, ed25519.Ed25519PrivateKey)
        # RFC 8463 §3: Ed25519 (pure) over the SHA-256 of the canonicalised data
        return self._key.sign(hashlib.sha256(data).digest())


def generate_key(algorithm: Algorithm) -> tuple[bytes, str]:
    """A new key: (private key PEM, PKCS#8 unencrypted; the DNS TXT value "v=DKIM1; k=...; p=...")."""
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa-2048":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unknown DKIM key algorithm {algorithm!r}")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem, dns_txt_value(key)


def dns_txt_value(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    kind = "rsa" if isinstance(key, rsa.RSAPrivateKey) else "ed25519"
    return f"v=DKIM1; k={kind}; p={public_key_b64(key)}"


def public_key_b64(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    """p=: RSA as DER SubjectPublicKeyInfo (RFC 6376 §3.6.1); Ed25519 as the raw 32-byte key
    (RFC 8463 §4.2)."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        der = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(der).decode("ascii")


def txt_strings(value: str) -> list[str]:
    """A TXT value as the <= 255-byte strings of one TXT record (RFC 7208 §3.3, RFC 6376 §3.6.2.2:
    readers concatenate them without separator). Cut at UTF-8 character boundaries."""
    data = value.encode("utf-8")
    strings: list[str] = []
    start = 0
    while start < len(data):
        end = min(start + TXT_STRING_MAX, len(data))
        while end < len(data) and 0x80 <= data[end] < 0xC0:
            end -= 1
        strings.append(data[start:end].decode("utf-8"))
        start = end
    return strings or [""]


# --- canonicalisation (RFC 6376 §3.4.2, §3.4.4) -----------------------------------------------

def relaxed_header(field: bytes) -> bytes:
    """name lower-cased, unfolded, whitespace runs as one space, none around the colon or at the
    end. Without the trailing CRLF."""
    name, _, value = field.partition(b":")
    value = value.replace(b"\r\n", b"")
    if b"\t" in value or b"  " in value:
        value = _WSP_TO_COLLAPSE.sub(b" ", value)
    return name.rstrip(b" \t").lower() + b":" + value.strip(b" \t")


def relaxed_body(body: bytes) -> bytes:
    """Whitespace runs as one space, none at line ends, no empty lines at the end, a final CRLF
    (an empty body stays empty: RFC 6376 errata 3509).

    Written for speed with bytes methods (memchr, no per-byte regex, which costs ~7 ns a byte in
    CPython's re): tabs become spaces, then every change relaxed canonicalisation makes (runs of
    spaces collapse, " CRLF" loses its space) involves a space, so only the stretch from the
    first space to the last one is rewritten. In build_mime's output the last space is in the
    part headers before a base64 body (which has none): the big parts are never scanned."""
    if b"\t" in body:
        body = body.replace(b"\t", b" ")
    first = body.find(b" ")
    if first < 0:
        return _without_trailing_empty_lines(body)
    # Up to 3 bytes past the last space: its CRLF, and a byte that is not a space, since
    # _collapse_spaces drops a run at the very end (only the end of the body may end in one,
    # and there the spaces go anyway).
    end = min(body.rfind(b" ") + 4, len(body))
    stretch = body[first:end]
    changed = stretch
    if b"  " in changed:
        changed = _collapse_spaces(changed)
    if b" \r\n" in changed:
        changed = changed.replace(b" \r\n", b"\r\n")
    if changed is not stretch:
        body = body[:first] + changed + body[end:]
    return _without_trailing_empty_lines(body)


def _without_trailing_empty_lines(body: bytes) -> bytes:
    """The rest of relaxed_body once whitespace runs are done."""
    if not body.endswith(b"\r\n"):
        body = body.rstrip(b" ")
        return body + b"\r\n" if body else b""
    end = len(body)
    while end >= 4 and body[end - 4:end] == b"\r\n\r\n":
        end -= 2
    if end == 2:   # nothing but empty lines
        return b""
    return body if end == len(body) else body[:end]


def _collapse_spaces(body: bytes) -> bytes:
    """Every run of spaces as one space. split(b"  ") cuts a run into pairs: what is left of it is
    empty pieces and one space at the start of the next piece."""
    pieces = body.split(b"  ")
    rest = [piece for piece in (piece.lstrip(b" ") for piece in pieces[1:]) if piece]
    if not rest:   # the body ends with the run
        return pieces[0] + b" "
    return b" ".join([pieces[0], *rest]) if pieces[0] else b" " + b" ".join(rest)


# --- folding -----------------------------------------------------------------------------------

def _h_tag(names: list[str]) -> list[tuple[str, str]]:
    """h= as (glue, token) pairs: FWS may follow each ":" (RFC 6376 §3.5 sig-h-tag), so a fold
    may come between names; on one line they are joined without a space."""
    tokens = [("", f"{name}:") for name in names]
    tokens[0] = (" ", f"h={names[0]}:")
    tokens[-1] = (tokens[-1][0], tokens[-1][1][:-1] + ";")
    return tokens


def _fold_tags(first_line: str, tokens: list[tuple[str, str]]) -> str:
    """`first_line` then each (glue, token): on the same line after its glue, or on a new
    line when the line would pass 78 characters. Relaxed canonicalisation reads a fold as one
    space: the signed text is this folded text, so it matches what the verifier sees."""
    lines = [first_line]
    for glue, token in tokens:
        if len(lines[-1]) + len(glue) + len(token) > 78:
            lines.append(" " + token)
        else:
            lines[-1] += glue + token
    return "\r\n".join(lines)


def _fold_base64(value: str) -> str:
    """b= in 72-character pieces, FWS between them (RFC 6376 §3.5: FWS allowed in base64)."""
    return "\r\n ".join(value[i:i + 72] for i in range(0, len(value), 72))


__all__ = [
    "DEFAULT_SIGNED_HEADERS", "DkimSigner", "dns_txt_value", "generate_key", "public_key_b64",
    "relaxed_body", "relaxed_header", "txt_strings",
]
