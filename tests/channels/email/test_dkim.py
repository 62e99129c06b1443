"""DkimSigner against an independent verifier: dkimpy fetches the public key from a real DNS
server on 127.0.0.1 (tests/dnsserver.py) and checks messages built by build_mime.

dkimpy verifies ed25519 through PyNaCl. When PyNaCl is not installed, `verify` hands dkimpy a
stand-in for the three PyNaCl names it uses, doing the Ed25519 verification with `cryptography`
(OpenSSL); canonicalisation, header selection and hashing stay dkimpy's own."""

from __future__ import annotations

import base64
import importlib.util
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from types import SimpleNamespace

import dkim
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from dkim.canonicalization import Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from herald.channels.email.dkim import DEFAULT_SIGNED_HEADERS, DkimSigner, generate_key, relaxed_body, txt_strings
from herald.channels.email.mime import build_mime
from herald.domain.delivery import EmailContent, OutboundMessage
from tests.dnsserver import DnsServer, dns_server

Verify = Callable[[bytes], bool]
DATE = datetime(2030, 5, 17, 9, 30, 12, tzinfo=UTC)
SELECTOR = "h2030"


class _BadSignature(Exception):
    pass


class _VerifyKey:
    def __init__(self, key: bytes, encoder: object) -> None:
        self._key = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(key))

    def verify(self, message: bytes, signature: bytes) -> bytes:
        try:
            self._key.verify(signature, message)
        except InvalidSignature as error:
            raise _BadSignature from error
        return message


_NACL_STAND_IN = SimpleNamespace(signing=SimpleNamespace(VerifyKey=_VerifyKey),
                                 encoding=SimpleNamespace(Base64Encoder=object()),
                                 exceptions=SimpleNamespace(ValueError=ValueError, BadSignatureError=_BadSignature))


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[bytes, str]]:
    return {"rsa-2048": generate_key("rsa-2048"), "ed25519": generate_key("ed25519")}


@pytest.fixture
def dns(keys: dict[str, tuple[bytes, str]]) -> Iterator[DnsServer]:
    with dns_server({f"{SELECTOR}._domainkey.example.com": [("TXT", keys["rsa-2048"][1])],
                     f"{SELECTOR}._domainkey.ed.example.com": [("TXT", keys["ed25519"][1])]}) as server:
        yield server


@pytest.fixture
def verify(dns: DnsServer, monkeypatch: pytest.MonkeyPatch) -> Verify:
    if importlib.util.find_spec("nacl") is None:
        monkeypatch.setattr(dkim, "nacl", _NACL_STAND_IN, raising=False)
    dnsfunc = dns.dkim_dnsfunc()

    def verify_with_dkimpy(message: bytes) -> bool:
        return bool(dkim.verify(message, dnsfunc=dnsfunc))
    return verify_with_dkimpy


def signer(keys: dict[str, tuple[bytes, str]], algorithm: str) -> DkimSigner:
    domain = "example.com" if algorithm == "rsa-2048" else "ed.example.com"
    return DkimSigner(domain, SELECTOR, keys[algorithm][0])


def outbound(**changes: object) -> OutboundMessage:
    content = EmailContent(
        from_address="shop@example.com", from_name="书店 Bücher — a rather long shop name, folded",
        subject="您的订单已发货 — your order has shipped 🚚 and will arrive on Thursday, 19 May",
        html="<table>\n  <tr><td>Widget   x 2</td>\t<td>€19.99</td></tr>\n</table>\n",
        text="Hello Anna,\n\nWidget x 2   €19.99  \n\n.\n",
        reply_to="help@example.com",
        headers=(("List-Unsubscribe", "<https://t.example.com/u/0123456789abcdef0123456789abcdef>, "
                                      "<mailto:unsubscribe+0123456789abcdef@example.com>"),
                 ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")))
    fields: dict[str, object] = {"id": "01J2Z3ABCDEF", "workspace_id": "w1", "channel": "email",
                                 "purpose": "marketing", "to": "anna@example.org", "email": content,
                                 "sending_domain": "example.com"}
    fields.update(changes)
    return OutboundMessage(**fields)  # type: ignore[arg-type]


def tag(signed: bytes, name: str) -> str:
    header = signed.split(b"\r\n\r\n", 1)[0].decode("utf-8").split("\r\n")
    first = next(i for i, line in enumerate(header) if line.startswith("DKIM-Signature:"))
    value = header[first]
    for line in header[first + 1:]:
        if not line.startswith((" ", "\t")):
            break
        value += line
    match = re.search(rf"(?:^|;)\s*{name}=([^;]*)", value.removeprefix("DKIM-Signature:"))
    assert match is not None
    return re.sub(r"\s+", "", match.group(1))


@pytest.mark.parametrize("algorithm", ["rsa-2048", "ed25519"])
def test_dkimpy_verifies_through_dns_and_rejects_a_changed_body_byte_or_subject(
        algorithm: str, keys: dict[str, tuple[bytes, str]], dns: DnsServer, verify: Verify) -> None:
    raw = build_mime(outbound(), date=DATE)
    signed = signer(keys, algorithm).sign(raw)
    assert signed.endswith(raw) and signed.startswith(b"DKIM-Signature: v=1; a=")
    assert verify(signed)
    name = f"{SELECTOR}._domainkey.{'example.com' if algorithm == 'rsa-2048' else 'ed.example.com'}"
    assert ("udp", name, "TXT") in dns.queries   # the key came over the wire

    body_at = signed.index(b"\r\n\r\n") + 4
    index = signed.index(b"Hello", body_at)
    assert not verify(signed[:index] + b"J" + signed[index + 1:])   # one body byte
    subject_at = signed.index(b"\r\nSubject: =?utf-8?b?") + len(b"\r\nSubject: =?utf-8?b?")
    other = b"A" if signed[subject_at:subject_at + 1] != b"A" else b"B"
    assert not verify(signed[:subject_at] + other + signed[subject_at + 1:])


def test_the_signature_survives_what_relaxed_canonicalisation_allows(
        keys: dict[str, tuple[bytes, str]], verify: Verify) -> None:
    signed = signer(keys, "rsa-2048").sign(build_mime(outbound(), date=DATE))
    head, body = signed.split(b"\r\n\r\n", 1)
    refolded = head.replace(b"\r\nSubject: ", b"\r\nsubject:    ").replace(b"\r\n =?", b"\r\n\t =?")
    padded = body.replace(b"\r\n", b"  \r\n", 3) + b"\r\n\r\n"
    assert verify(refolded + b"\r\n\r\n" + padded)
    assert verify(b"X-Added-In-Transit: yes\r\n" + signed)


def test_from_is_oversigned_and_only_present_headers_are_listed(
        keys: dict[str, tuple[bytes, str]], verify: Verify) -> None:
    signed = signer(keys, "rsa-2048").sign(build_mime(outbound(), date=DATE))
    assert tag(signed, "h").split(":") == ["from", "to", "subject", "date", "message-id", "mime-version",
                                           "content-type", "reply-to", "list-unsubscribe", "list-unsubscribe-post",
                                           "from"]
    assert not verify(b"From: attacker@example.net\r\n" + signed)
    index = signed.index(b"\r\nFrom: ") + 2
    assert not verify(signed[:index] + b"From: attacker@example.net\r\n" + signed[index:])

    without_reply_to = signer(keys, "rsa-2048").sign(build_mime(outbound(email=EmailContent(
        from_address="shop@example.com", from_name=None, subject="s", html=None, text="t")), date=DATE))
    assert "reply-to" not in tag(without_reply_to, "h") and "list-unsubscribe" not in tag(without_reply_to, "h")
    assert verify(without_reply_to)


def test_repeated_headers_are_signed_bottom_up(keys: dict[str, tuple[bytes, str]], verify: Verify) -> None:
    raw = b"From: shop@example.com\r\nX-Tag: one\r\nTo: a@example.org\r\nX-Tag: two\r\n\r\nbody\r\n"
    signed = DkimSigner("example.com", SELECTOR, keys["rsa-2048"][0], (*DEFAULT_SIGNED_HEADERS, "X-Tag")).sign(raw)
    assert tag(signed, "h") == "from:to:x-tag:x-tag:from"
    assert verify(signed)
    swapped = signed.replace(b"X-Tag: one", b"X-Tag: two").replace(b"X-Tag: two\r\n\r\n", b"X-Tag: one\r\n\r\n")
    assert not verify(swapped)


def test_utf8_headers_and_an_empty_body_verify(keys: dict[str, tuple[bytes, str]], verify: Verify) -> None:
    raw = build_mime(outbound(to="jörg@bücher.de"), date=DATE)
    assert "jörg".encode() in raw
    assert verify(signer(keys, "ed25519").sign(raw))
    assert verify(signer(keys, "rsa-2048").sign(b"From: shop@example.com\r\nSubject: empty\r\n\r\n"))


def test_tags_and_timestamp(keys: dict[str, tuple[bytes, str]]) -> None:
    signed = DkimSigner("Example.COM.", SELECTOR, keys["rsa-2048"][0]).sign(b"From: a@example.com\r\n\r\nx\r\n",
                                                                           now=1_900_000_000)
    assert (tag(signed, "v"), tag(signed, "a"), tag(signed, "c")) == ("1", "rsa-sha256", "relaxed/relaxed")
    assert (tag(signed, "d"), tag(signed, "s"), tag(signed, "t")) == ("example.com", SELECTOR, "1900000000")
    header = signed.split(b"\r\nFrom:", 1)[0]
    assert all(len(line) <= 78 for line in header.split(b"\r\n"))
    ed = signer(keys, "ed25519").sign(b"From: a@example.com\r\n\r\nx\r\n")
    assert tag(ed, "a") == "ed25519-sha256"
    assert len(base64.b64decode(tag(ed, "b"))) == 64
    assert DkimSigner("bücher.de", SELECTOR, keys["ed25519"][0]).domain == "xn--bcher-kva.de"


def test_generated_keys_and_their_dns_values(keys: dict[str, tuple[bytes, str]]) -> None:
    pem, txt = keys["rsa-2048"]
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert txt.startswith("v=DKIM1; k=rsa; p=")
    public = serialization.load_der_public_key(base64.b64decode(txt.split("p=", 1)[1]))
    assert public.public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]
    assert DkimSigner("example.com", SELECTOR, pem).dns_txt == txt

    pem, txt = keys["ed25519"]
    ed_key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(ed_key, ed25519.Ed25519PrivateKey)
    assert txt == "v=DKIM1; k=ed25519; p=" + base64.b64encode(
        ed_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def test_txt_strings_split_at_255_bytes_and_the_server_serves_them_so(
        keys: dict[str, tuple[bytes, str]], dns: DnsServer) -> None:
    txt = keys["rsa-2048"][1]
    strings = txt_strings(txt)
    assert len(strings) == 2 and "".join(strings) == txt
    assert all(len(s.encode()) <= 255 for s in strings)
    answer = dns.resolver().resolve(f"{SELECTOR}._domainkey.example.com", "TXT")
    assert [len(s) for s in next(iter(answer)).strings] == [len(s) for s in strings]
    accented = txt_strings("é" * 200)   # 400 bytes: never cut inside a character
    assert "".join(accented) == "é" * 200 and [len(s.encode()) for s in accented] == [254, 146]
    assert txt_strings("") == [""]


def test_keys_dkim_cannot_use_are_refused() -> None:
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(ValueError, match="RSA or Ed25519"):
        DkimSigner("example.com", SELECTOR, ec_pem)
    with pytest.raises(ValueError, match="selector"):
        DkimSigner("example.com", "bad selector", generate_key("ed25519")[0])
    with pytest.raises(ValueError, match="algorithm"):
        generate_key("dsa")  # type: ignore[arg-type]


@pytest.mark.parametrize(("body", "canonical"), [
    (b"", b""),
    (b"\r\n\r\n", b""),
    (b"a  b\t c \r\n\r\n\r\n", b"a b c\r\n"),
    (b"x\t\r\n \r\ny", b"x\r\n\r\ny\r\n"),
    (b"end without crlf  ", b"end without crlf\r\n"),
    (b" lead\r\n", b" lead\r\n"),
])
def test_relaxed_body_canonicalisation(body: bytes, canonical: bytes) -> None:
    assert relaxed_body(body) == canonical


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b" ", b"  ", b"\t", b"a", b"bc", b"\r\n"]), max_size=40))
def test_relaxed_body_equals_dkimpys_canonicalisation(tokens: list[bytes]) -> None:
    """Any body of spaces, tabs, text and CRLF lines (ending in CRLF, as every message does)
    canonicalises as dkimpy's straightforward regex implementation does."""
    body = b"".join(tokens) + b"\r\n"
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)
