"""The SMTP provider against real SMTP servers on 127.0.0.1: aiosmtpd (run in the test's event
loop, so its handlers can count connections and inject failures) and postfix's `smtp-sink`
(started as a process; its -r/-f/-Q/-q options inject soft and hard rejections, a 421 and
dropped connections). DKIM signatures are checked by dkimpy, which fetches the public key from
the dnslib server in tests/dnsserver.py.

smtp-sink tests skip with the reason when /usr/sbin/smtp-sink is absent, and fail instead under
HERALD_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import dkim  # type: ignore[import-untyped]
import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from herald.channels.email.dkim import DkimSigner, generate_key
from herald.channels.email.smtp import MessageSigner, SmtpProvider, SmtpRelay
from herald.domain.delivery import EmailContent, FailureReason, OutboundMessage, ProviderConfigError, SendResult
from tests.dnsserver import dns_server
from tests.stores.localserver import Tls, self_signed_tls

SELECTOR = "h5"
USER, PASSWORD = "shop-relay", "s3cret-password"


def outbound(**changes: Any) -> OutboundMessage:
    content = EmailContent(
        from_address="shop@example.com", from_name="Bücher & Co",
        subject="Your order has shipped 🚚",
        html="<p>Hello Anna,</p>\n<p>your <b>order</b> is on its way.</p>\n",
        text="Hello Anna,\n\nyour order is on its way.\n.\nA line that was a lone dot above.\n",
        headers=(("List-Unsubscribe", "<https://t.example.com/u/0123456789abcdef>"),
                 ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")))
    fields: dict[str, Any] = {"id": "01J2SMTP0001", "workspace_id": "w1", "channel": "email",
                              "purpose": "marketing", "to": "anna@example.org", "email": content,
                              "sending_domain": "example.com"}
    fields.update(changes)
    return OutboundMessage(**fields)


def unsigned(domain: str) -> MessageSigner | None:
    return None


# --- an aiosmtpd sink in the test's event loop ---------------------------------------------------

@dataclass
class Sink:
    port: int = 0
    envelopes: list[Envelope] = field(default_factory=list)
    connections: int = 0
    quits: int = 0
    sessions: list[SMTP] = field(default_factory=list)
    ciphers: list[object] = field(default_factory=list)   # TLS cipher of each DATA's connection


DataHook = Callable[[SMTP, Envelope], Awaitable[str]]


class _Handler:
    def __init__(self, sink: Sink, pipelining: bool, on_data: DataHook | None) -> None:
        self.sink, self.pipelining, self.on_data = sink, pipelining, on_data

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.pipelining:   # aiosmtpd reads pipelined commands fine but does not say so
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        if address.startswith("unknown"):
            return "550 5.1.1 <unknown>: Recipient address rejected: User unknown in virtual mailbox table"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.on_data is not None:
            return await self.on_data(server, envelope)
        self.sink.envelopes.append(envelope)
        self.sink.ciphers.append(server.transport.get_extra_info("cipher") if server.transport else None)
        return "250 2.0.0 Ok: queued as 4TqAbC12"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.sink.quits += 1
        return "221 Bye"


def _authenticator(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                   auth_data: Any) -> AuthResult:
    good = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(), PASSWORD.encode())
    return AuthResult(success=good, handled=False)   # handled=False: aiosmtpd replies 535 itself


@asynccontextmanager
async def aiosmtpd_sink(*, pipelining: bool = True, smtputf8: bool = True, starttls: ssl.SSLContext | None = None,
                        implicit_tls: ssl.SSLContext | None = None, auth: bool = False,
                        exclude_auth: tuple[str, ...] = (), on_data: DataHook | None = None) -> AsyncIterator[Sink]:
    sink = Sink()
    handler = _Handler(sink, pipelining, on_data)

    def session() -> SMTP:
        sink.connections += 1
        server = SMTP(handler, hostname="sink.test", enable_SMTPUTF8=smtputf8, tls_context=starttls,
                      require_starttls=starttls is not None, authenticator=_authenticator if auth else None,
                      auth_required=auth, auth_require_tls=implicit_tls is None,
                      auth_exclude_mechanism=exclude_auth)
        sink.sessions.append(server)
        return server

    server = await asyncio.get_running_loop().create_server(session, "127.0.0.1", 0, ssl=implicit_tls)
    sink.port = server.sockets[0].getsockname()[1]
    try:
        yield sink
    finally:
        server.close()
        for smtp in sink.sessions:
            if smtp.transport is not None:
                cast(asyncio.Transport, smtp.transport).abort()
        await server.wait_closed()


def relay(port: int, **changes: Any) -> SmtpRelay:
    values: dict[str, Any] = {"host": "127.0.0.1", "port": port, "security": "none", "timeout": 5.0}
    values.update(changes)
    return SmtpRelay(**values)


def raw(envelope: Envelope) -> bytes:
    """The message as the sink received it (dot-stuffing undone)."""
    assert isinstance(envelope.original_content, bytes)
    return envelope.original_content


def parsed(envelope: Envelope) -> email.message.EmailMessage:
    message = email.message_from_bytes(raw(envelope), policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


# --- delivery, headers, DKIM ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def dkim_key() -> tuple[bytes, str]:
    return generate_key("rsa-2048")


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
def test_a_sink_receives_the_message_and_dkimpy_verifies_its_signature(
        pipelining: bool, dkim_key: tuple[bytes, str]) -> None:
    pem, txt = dkim_key
    signer = DkimSigner("example.com", SELECTOR, pem)
    message = outbound(metadata={"return_path": "bounce+01J2SMTP0001@example.com"})

    async def scenario() -> tuple[SendResult, Sink]:
        async with aiosmtpd_sink(pipelining=pipelining) as sink:
            provider = SmtpProvider(relay(sink.port), lambda domain: signer if domain == "example.com" else None)
            result = await provider.send(message)
            await provider.aclose()
            return result, sink

    result, sink = asyncio.run(scenario())
    assert result == SendResult.accepted("01J2SMTP0001", "4TqAbC12", detail="250 2.0.0 Ok: queued as 4TqAbC12")
    [envelope] = sink.envelopes
    assert envelope.mail_from == "bounce+01J2SMTP0001@example.com"
    assert envelope.rcpt_tos == ["anna@example.org"]
    assert sink.quits == 1

    received = parsed(envelope)
    [sender] = received["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Bücher & Co", "shop@example.com")
    assert received["To"] == "anna@example.org"
    assert received["Subject"] == "Your order has shipped 🚚"
    assert received["Message-ID"] == "<01J2SMTP0001@example.com>"
    assert received["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert received.get_content_type() == "multipart/alternative"
    text, html = received.iter_parts()
    assert (text.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
    assert text.get_content().replace("\r\n", "\n") == message.email.text  # type: ignore[union-attr]
    assert html.get_content().replace("\r\n", "\n") == message.email.html  # type: ignore[union-attr]

    with dns_server({f"{SELECTOR}._domainkey.example.com": [("TXT", txt)]}) as dns:
        dnsfunc = dns.dkim_dnsfunc()
        received_bytes = raw(envelope)
        assert received_bytes.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
        assert dkim.verify(received_bytes, dnsfunc=dnsfunc)
        changed = received_bytes.replace(b"on its way", b"on its wax")
        assert changed != received_bytes
        assert not dkim.verify(changed, dnsfunc=dnsfunc)


def test_the_envelope_sender_is_the_from_address_without_a_return_path() -> None:
    async def scenario() -> Sink:
        async with aiosmtpd_sink() as sink:
            provider = SmtpProvider(relay(sink.port), unsigned)
            assert (await provider.send(outbound())).status == "accepted"
            await provider.aclose()
            return sink

    [envelope] = asyncio.run(scenario()).envelopes
    assert envelope.mail_from == "shop@example.com"
    assert not parsed(envelope)["DKIM-Signature"]


class _DotLines:
    """A 'signer' that appends body lines starting with dots: what dot-stuffing must carry."""

    def sign(self, message: bytes) -> bytes:
        return message + b".\r\n..\r\n.leading dot\r\nlast line without CRLF"


def test_lines_starting_with_a_dot_arrive_unchanged() -> None:
    async def scenario() -> Sink:
        async with aiosmtpd_sink() as sink:
            provider = SmtpProvider(relay(sink.port), lambda domain: _DotLines())
            assert (await provider.send(outbound())).status == "accepted"
            await provider.aclose()
            return sink

    [envelope] = asyncio.run(scenario()).envelopes
    assert raw(envelope).endswith(b"\r\n.\r\n..\r\n.leading dot\r\nlast line without CRLF\r\n")


def test_an_address_with_a_utf8_local_part_is_sent_with_smtputf8() -> None:
    message = outbound(to="用户@例子.测试")

    async def scenario(smtputf8: bool) -> tuple[SendResult, Sink]:
        async with aiosmtpd_sink(smtputf8=smtputf8) as sink:
            provider = SmtpProvider(relay(sink.port), unsigned)
            result = await provider.send(message)
            await provider.aclose()
            return result, sink

    result, sink = asyncio.run(scenario(True))
    assert result.status == "accepted"
    [envelope] = sink.envelopes
    assert "SMTPUTF8" in envelope.mail_options
    assert envelope.rcpt_tos == ["用户@xn--fsqu00a.xn--0zwm56d"]

    result, sink = asyncio.run(scenario(False))
    assert (result.status, result.reason) == ("failed", FailureReason.INVALID_ADDRESS)
    assert "SMTPUTF8" in result.detail
    assert sink.envelopes == []


@pytest.mark.parametrize("to", ["anna@example.org>\r\nRCPT TO:<evil@example.net", "no-at-sign", "a b@example.org"])
def test_an_address_that_would_break_the_command_line_is_refused_before_connecting(to: str) -> None:
    async def scenario() -> tuple[SendResult, Sink]:
        async with aiosmtpd_sink() as sink:
            provider = SmtpProvider(relay(sink.port), unsigned)
            result = await provider.send(outbound(to=to))
            await provider.aclose()
            return result, sink

    result, sink = asyncio.run(scenario())
    assert (result.status, result.reason) == ("failed", FailureReason.INVALID_ADDRESS)
    assert sink.connections == 0


# --- TLS and AUTH -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls() -> Tls:
    return self_signed_tls()


# aiosmtpd counts only STARTTLS as TLS for AUTH: the implicit-TLS sink must not require it, and warns.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize(("security", "exclude_auth"), [
    ("starttls", ()), ("starttls", ("PLAIN",)), ("implicit", ()), ("implicit", ("PLAIN",)),
], ids=["starttls-plain", "starttls-login", "implicit-plain", "implicit-login"])
def test_tls_and_auth(security: str, exclude_auth: tuple[str, ...], tls: Tls) -> None:
    async def scenario() -> tuple[SendResult, Sink]:
        async with aiosmtpd_sink(starttls=tls.server if security == "starttls" else None,
                                 implicit_tls=tls.server if security == "implicit" else None,
                                 auth=True, exclude_auth=exclude_auth) as sink:
            provider = SmtpProvider(relay(sink.port, security=security, tls_context=tls.client,
                                          username=USER, password=PASSWORD), unsigned)
            result = await provider.send(outbound())
            await provider.aclose()
            return result, sink

    result, sink = asyncio.run(scenario())
    assert result.status == "accepted", result
    [envelope] = sink.envelopes
    assert envelope.rcpt_tos == ["anna@example.org"]
    [session] = sink.sessions
    assert session.session is not None and session.session.authenticated
    [cipher] = sink.ciphers
    assert cipher is not None


def test_a_refused_password_is_auth_failed_and_retried(tls: Tls) -> None:
    async def scenario() -> tuple[SendResult, Sink]:
        async with aiosmtpd_sink(starttls=tls.server, auth=True) as sink:
            provider = SmtpProvider(relay(sink.port, security="starttls", tls_context=tls.client,
                                          username=USER, password="wrong"), unsigned)
            result = await provider.send(outbound())
            await provider.aclose()
            return result, sink

    result, sink = asyncio.run(scenario())
    assert (result.status, result.reason, result.provider_code) == ("retry", FailureReason.AUTH_FAILED,
                                                                    "535 5.7.8"), result
    assert "wrong" not in result.detail
    assert sink.envelopes == []


def test_an_untrusted_certificate_or_a_missing_starttls_is_provider_down(tls: Tls) -> None:
    async def scenario() -> tuple[SendResult, SendResult]:
        async with aiosmtpd_sink(starttls=tls.server) as sink:
            untrusted = SmtpProvider(relay(sink.port, security="starttls", tls_context=ssl.create_default_context()),
                                     unsigned)
            first = await untrusted.send(outbound())
        async with aiosmtpd_sink() as sink:
            plain = SmtpProvider(relay(sink.port, security="starttls"), unsigned)
            second = await plain.send(outbound())
        return first, second

    untrusted, no_starttls = asyncio.run(scenario())
    assert (untrusted.status, untrusted.reason) == ("retry", FailureReason.PROVIDER_DOWN)
    assert "certificate" in untrusted.detail.lower()
    assert (no_starttls.status, no_starttls.reason) == ("retry", FailureReason.PROVIDER_DOWN)
    assert "STARTTLS" in no_starttls.detail


def test_a_refused_connection_is_provider_down() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]   # bound, never listening: connections are refused
        result = asyncio.run(SmtpProvider(relay(port), unsigned).send(outbound()))
    assert (result.status, result.reason, result.maybe_sent) == ("retry", FailureReason.PROVIDER_DOWN, False)


def test_relay_settings_that_would_leak_the_password_are_refused() -> None:
    with pytest.raises(ProviderConfigError, match="unencrypted"):
        SmtpRelay("relay.example.com", security="none", username=USER, password=PASSWORD)
    with pytest.raises(ProviderConfigError, match="password"):
        SmtpRelay("relay.example.com", username=USER)
    assert PASSWORD not in repr(SmtpRelay("relay.example.com", username=USER, password=PASSWORD))


# --- the pool -------------------------------------------------------------------------------------

@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
def test_fifty_concurrent_messages_share_the_pools_four_connections(pipelining: bool) -> None:
    async def scenario() -> tuple[list[SendResult], Sink, int]:
        async with aiosmtpd_sink(pipelining=pipelining) as sink:
            provider = SmtpProvider(relay(sink.port, pool_size=4), unsigned)
            results = await asyncio.gather(*(provider.send(outbound(id=f"m{i:02}", to=f"r{i:02}@example.org"))
                                             for i in range(50)))
            await provider.aclose()
            return list(results), sink, provider.connections_opened

    results, sink, opened = asyncio.run(scenario())
    assert [r.status for r in results] == ["accepted"] * 50
    assert [r.message_id for r in results] == [f"m{i:02}" for i in range(50)]
    assert sorted(e.rcpt_tos[0] for e in sink.envelopes) == [f"r{i:02}@example.org" for i in range(50)]
    for envelope in sink.envelopes:   # each message went to its own recipient
        assert parsed(envelope)["To"] == envelope.rcpt_tos[0]
    assert sink.connections <= 4
    assert opened == sink.connections
    assert sink.quits == sink.connections


def test_a_connection_is_replaced_after_max_messages_and_when_the_relay_closed_it() -> None:
    async def scenario() -> tuple[list[SendResult], Sink]:
        async with aiosmtpd_sink() as sink:
            provider = SmtpProvider(relay(sink.port, pool_size=1, max_messages_per_connection=2), unsigned)
            results = [await provider.send(outbound()) for _ in range(5)]     # 2 + 2 + 1
            assert sink.connections == 3
            # The relay drops the idle connection; the provider only learns it when it writes MAIL.
            # That stale connection costs no retry outcome: the message goes on a fresh one.
            live = sink.sessions[-1]
            assert live.transport is not None
            live.transport.close()
            results.append(await provider.send(outbound()))
            await provider.aclose()
            return results, sink

    results, sink = asyncio.run(scenario())
    assert [r.status for r in results] == ["accepted"] * 6
    assert sink.connections == 4
    assert len(sink.envelopes) == 6


# --- failures injected by aiosmtpd handlers -------------------------------------------------------

@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
def test_a_refused_recipient_fails_and_the_connection_serves_the_next_message(pipelining: bool) -> None:
    async def scenario() -> tuple[list[SendResult], Sink]:
        async with aiosmtpd_sink(pipelining=pipelining) as sink:
            provider = SmtpProvider(relay(sink.port, pool_size=1), unsigned)
            results = [await provider.send(outbound(to=to)) for to in
                       ("unknown@example.org", "anna@example.org", "unknown@example.org", "bob@example.org")]
            await provider.aclose()
            return results, sink

    results, sink = asyncio.run(scenario())
    assert [(r.status, r.reason, r.provider_code) for r in results] == [
        ("failed", FailureReason.INVALID_ADDRESS, "550 5.1.1"), ("accepted", None, None),
        ("failed", FailureReason.INVALID_ADDRESS, "550 5.1.1"), ("accepted", None, None)]
    assert results[0].detail.startswith("RCPT: 550 5.1.1")
    assert [e.rcpt_tos for e in sink.envelopes] == [["anna@example.org"], ["bob@example.org"]]
    assert sink.connections == 1


async def _drop_connection(server: SMTP, envelope: Envelope) -> str:
    assert server.transport is not None
    cast(asyncio.Transport, server.transport).abort()
    return "250 2.0.0 Ok"   # never sent: the connection is gone


def test_a_connection_dropped_after_the_payload_may_have_delivered() -> None:
    async def scenario() -> SendResult:
        async with aiosmtpd_sink(on_data=_drop_connection) as sink:
            provider = SmtpProvider(relay(sink.port), unsigned)
            result = await provider.send(outbound())
            await provider.aclose()
            return result

    result = asyncio.run(scenario())
    assert (result.status, result.reason, result.maybe_sent) == ("retry", FailureReason.TRANSIENT, True)


def test_no_reply_to_the_payload_within_the_timeout_may_have_delivered() -> None:
    async def silent(server: SMTP, envelope: Envelope) -> str:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def scenario() -> tuple[SendResult, float]:
        async with aiosmtpd_sink(on_data=silent) as sink:
            provider = SmtpProvider(relay(sink.port, timeout=0.3), unsigned)
            started = time.monotonic()
            result = await provider.send(outbound())
            return result, time.monotonic() - started

    result, elapsed = asyncio.run(scenario())
    assert (result.status, result.maybe_sent) == ("retry", True)
    assert "no reply in time" in result.detail
    assert elapsed < 3


# --- postfix smtp-sink --------------------------------------------------------------------------

SMTP_SINK = "/usr/sbin/smtp-sink"


def require_smtp_sink() -> str:
    path = shutil.which("smtp-sink") or (SMTP_SINK if os.access(SMTP_SINK, os.X_OK) else None)
    if path:
        return path
    reason = "postfix smtp-sink not installed (apt-get install postfix): skipping the smtp-sink tests"
    if os.environ.get("HERALD_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (HERALD_REQUIRE_SERVICES=1 forbids skipping)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def smtp_sink(*options: str) -> Iterator[int]:
    """smtp-sink on a free 127.0.0.1 port with `options`; yields the port."""
    path = require_smtp_sink()
    port = _free_port()
    as_user = ["-u", "nobody"] if os.geteuid() == 0 else []   # it refuses to run as root without -u
    process = subprocess.Popen([path, *as_user, *options, f"127.0.0.1:{port}", "64"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"smtp-sink did not start: {process.stderr.read()!r}") from None  # type: ignore[union-attr]
                time.sleep(0.02)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=5)
        process.stderr.close()  # type: ignore[union-attr]


def send_through_sink(options: tuple[str, ...], count: int = 3, **relay_changes: Any) -> tuple[list[SendResult], int]:
    """Send `count` messages one after the other; (results, connections opened)."""
    async def scenario(port: int) -> tuple[list[SendResult], int]:
        provider = SmtpProvider(relay(port, **relay_changes), unsigned)
        results = [await provider.send(outbound(id=f"m{i}")) for i in range(count)]
        await provider.aclose()
        return results, provider.connections_opened

    with smtp_sink(*options) as port:
        return asyncio.run(scenario(port))


@pytest.mark.parametrize(("options", "status", "reason", "code"), [
    (("-r", "rcpt"), "retry", FailureReason.TRANSIENT, "450 4.3.0"),
    (("-r", "rcpt", "-b", "451 4.7.1 Too many messages, slow down"), "retry", FailureReason.THROTTLED, "451 4.7.1"),
    (("-r", "mail", "-b", "452 4.3.1 Insufficient system storage"), "retry", FailureReason.TRANSIENT, "452 4.3.1"),
    (("-r", "."), "retry", FailureReason.TRANSIENT, "450 4.3.0"),
    (("-f", "rcpt", "-B", "550 5.1.1 <anna@example.org>: Recipient address rejected: User unknown"),
     "failed", FailureReason.INVALID_ADDRESS, "550 5.1.1"),
    (("-f", "data", "-B", "554 5.7.1 Service unavailable; client host blocked using zen.spamhaus.org"),
     "failed", FailureReason.BLOCKED, "554 5.7.1"),
    (("-f", ".", "-B", "552 5.3.4 Message size exceeds fixed limit"), "failed", FailureReason.POLICY, "552 5.3.4"),
], ids=["rcpt-4xx", "rcpt-throttled", "mail-4xx", "data-end-4xx", "rcpt-5xx-unknown-user", "data-5xx-blocked",
        "data-end-5xx-size"])
def test_smtp_sink_refusals(options: tuple[str, ...], status: str, reason: FailureReason, code: str) -> None:
    results, opened = send_through_sink(options)
    for result in results:
        assert (result.status, result.reason, result.provider_code, result.maybe_sent) == (status, reason, code, False)
        assert result.detail.split(":")[0] in ("MAIL", "RCPT", "DATA", "end of data")
    assert opened == 1   # after RSET (or the refused payload) the connection is reused


def test_smtp_sink_421_closes_the_connection_and_is_retried() -> None:
    results, opened = send_through_sink(("-Q", "rcpt"))
    for result in results:
        assert (result.status, result.reason, result.provider_code) == ("retry", FailureReason.THROTTLED, "421 4.0.0")
    assert opened == 3


def test_smtp_sink_dropping_the_connection_before_and_after_the_payload() -> None:
    before, _ = send_through_sink(("-q", "data"), count=1)
    after, _ = send_through_sink(("-q", "."), count=1)
    assert [(r.status, r.reason, r.maybe_sent) for r in before] == [("retry", FailureReason.TRANSIENT, False)]
    assert [(r.status, r.reason, r.maybe_sent) for r in after] == [("retry", FailureReason.TRANSIENT, True)]


def test_smtp_sink_refusing_the_greeting_is_provider_down() -> None:
    results, _ = send_through_sink(("-f", "connect"), count=1)
    assert [(r.status, r.reason, r.provider_code) for r in results] == [("retry", FailureReason.PROVIDER_DOWN,
                                                                          "500 5.3.0")]


def test_smtp_sink_takes_many_concurrent_messages_pipelined_over_a_small_pool() -> None:
    async def scenario(port: int) -> tuple[list[SendResult], int]:
        provider = SmtpProvider(relay(port, pool_size=4), unsigned)
        results = await asyncio.gather(*(provider.send(outbound(id=f"m{i:03}")) for i in range(200)))
        await provider.aclose()
        return list(results), provider.connections_opened

    with smtp_sink() as port:
        results, opened = asyncio.run(scenario(port))
    assert [r.status for r in results] == ["accepted"] * 200
    assert [r.message_id for r in results] == [f"m{i:03}" for i in range(200)]
    assert opened <= 4


def test_smtp_sink_dropping_every_connection_after_the_payload_under_load() -> None:
    """Pipelined hand-over under failure: the sender whose payload went out may have delivered;
    the sender whose MAIL/RCPT/DATA rode behind it in the same write gets no reply, tries once
    more on a fresh connection, and never reports a maybe-sent it did not earn."""
    async def scenario(port: int) -> list[SendResult]:
        provider = SmtpProvider(relay(port, pool_size=2), unsigned)
        results = await asyncio.gather(*(provider.send(outbound(id=f"m{i:02}")) for i in range(20)))
        await provider.aclose()
        return list(results)

    with smtp_sink("-q", ".") as port:
        results = asyncio.run(scenario(port))
    assert {(r.status, r.reason) for r in results} == {("retry", FailureReason.TRANSIENT)}
    sent = [r for r in results if r.maybe_sent]
    assert len(sent) >= 2
    assert all("after the message was sent" in r.detail for r in sent)
    assert all("before the message was sent" in r.detail for r in results if not r.maybe_sent)


def test_cancelled_sends_leave_the_pool_usable() -> None:
    """Senders cancelled at every point of their life (waiting for a connection, mid-transaction,
    waiting for the payload's reply after handing the connection on) leave a working pool."""
    async def scenario() -> list[SendResult]:
        async with aiosmtpd_sink() as sink:
            provider = SmtpProvider(relay(sink.port, pool_size=2), unsigned)
            after: list[SendResult] = []
            for steps in range(40):
                tasks = [asyncio.create_task(provider.send(outbound(id=f"c{i}"))) for i in range(8)]
                for _ in range(steps):
                    await asyncio.sleep(0)
                for task in tasks[::2]:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                after.append(await provider.send(outbound(id=f"after{steps}")))
            await provider.aclose()
            return after

    loop_errors: list[dict[str, Any]] = []

    async def run() -> list[SendResult]:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: loop_errors.append(context))
        return await scenario()

    after = asyncio.run(run())
    assert [r.status for r in after] == ["accepted"] * 40
    assert loop_errors == []
