"""Mail arriving at the inbound SMTP listener (channels/email/inbound.py serving services/inbound.handle,
as `herald inbound-smtp` runs them), on SQLite and PostgreSQL, spoken to over SMTP on 127.0.0.1:
  * a mailto unsubscribe (RFC 2369 List-Unsubscribe `<mailto:unsubscribe+<token>@<inbound domain>>`)
    suppresses the address at once; a forged or wrong-kind token changes nothing and still gets 250
    (the listener reveals nothing about tokens);
  * an ARF complaint report (RFC 5965) at abuse@ marks the message complained and suppresses the address;
  * when the database cannot record a message the sender gets 451 and its retry is recorded."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import smtplib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import Engine, select

from herald.bootstrap import Container
from herald.channels.email.inbound import InboundHandler, serve
from herald.db.engine import make_engine
from herald.db.tables import suppressions
from herald.services import inbound
from tests.dnsserver import DnsServer
from tests.services.test_email import (  # noqa: F401 - dns, mail and sink are fixtures
    Sink,
    World,
    dns,
    history,
    mail,
    message,
    queue,
    send,
    setup_world,
    sink,
)

INBOUND = "in.herald.test"   # the inbound domain of the `mail` container
BOUNCES = Path(__file__).parent.parent / "channels" / "email" / "bounces"
SAMPLE_ID = "msg_01JA0L0P1A2S3D4F5G6H7J8K9L"   # the id the corpus' returned messages carry
T = TypeVar("T")


def with_listener(c: Container, talk: Callable[[int], T], *, engines: Sequence[Engine] = ()) -> T:
    """Run the listener on a free port while `talk(port)` speaks SMTP to it from a thread.
    `engines`: the databases the first deliveries use, in turn (then the container's)."""
    waiting = list(engines)

    async def deliver(rcpts: Sequence[str], raw: bytes) -> None:
        engine = waiting.pop(0) if waiting else c.engine
        await asyncio.to_thread(inbound.handle, engine, c.adapters, c.email.links, rcpts, raw, c.clock.now())

    async def scenario() -> T:
        server = await serve(InboundHandler(deliver, domains=[INBOUND]), "127.0.0.1", 0)
        try:
            return await asyncio.to_thread(talk, server.sockets[0].getsockname()[1])
        finally:
            server.close()
            await server.wait_closed()
    return asyncio.run(scenario())


def submit(port: int, mail_from: str, rcpt: str, raw: bytes) -> tuple[int, str]:
    """One message over SMTP; the reply to its DATA (code, text). Lines end in CRLF on the wire
    (RFC 5321 §2.3.8; smtplib sends bytes as they are), whatever the file has."""
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        assert client.mail(mail_from)[0] == 250
        code, text = client.rcpt(rcpt)
        assert code == 250, text
        try:
            code, reply = client.data(raw)
        except smtplib.SMTPDataError as refused:   # smtplib raises for anything but 250
            error = refused.smtp_error
            return refused.smtp_code, error.decode() if isinstance(error, bytes) else error
        return code, reply.decode()


def suppressed(c: Container) -> list[tuple[str, str, str]]:
    with c.engine.begin() as conn:
        return [tuple(r) for r in conn.execute(select(suppressions.c.address, suppressions.c.reason,
                                                      suppressions.c.source).order_by(suppressions.c.id))]


def sent_marketing(c: Container, dns: DnsServer, sink: tuple[Sink, int],  # noqa: F811
                   to: str = "ana@example.net") -> tuple[World, str]:
    world = setup_world(c, dns, sink[1])
    message_id = queue(c, world, world.marketing, to=to)
    send(c, message_id)
    assert message(c, message_id)["status"] == "sent"
    return world, message_id


def unsubscribe_mail(token: str, sender: str = "ana@example.net") -> bytes:
    return (f"From: {sender}\r\nTo: unsubscribe+{token}@{INBOUND}\r\nSubject: unsubscribe\r\n"
            "Date: Mon, 04 Nov 2024 10:00:00 +0000\r\n\r\nunsubscribe\r\n").encode()


def test_a_mailto_unsubscribe_suppresses_the_address_and_a_forged_one_does_nothing(
        mail: Container, dns: DnsServer, sink: tuple[Sink, int]) -> None:  # noqa: F811
    _world, message_id = sent_marketing(mail, dns, sink)
    token = mail.email.links.unsubscribe_url(message_id).rsplit("/", 1)[1]
    received = email.message_from_bytes(sink[0].received[0][2], policy=email.policy.default)
    assert f"<mailto:unsubscribe+{token}@{INBOUND}>" in str(received["List-Unsubscribe"])   # what the buyer sees

    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    click_token = mail.email.links.click_url(message_id, "https://shop.example/").rsplit("/", 1)[1]

    def forged(port: int) -> list[tuple[int, str]]:
        return [submit(port, "ana@example.net", f"unsubscribe+{bad}@{INBOUND}", unsubscribe_mail(bad))
                for bad in (flipped, "not-a-token", click_token)]
    for code, _text in with_listener(mail, forged):
        assert code == 250
    assert suppressed(mail) == []
    assert history(mail, message_id) == ["sent"]

    code, _text = with_listener(mail, lambda port: submit(port, "ana@example.net", f"unsubscribe+{token}@{INBOUND}",
                                                          unsubscribe_mail(token)))
    assert code == 250
    assert suppressed(mail) == [("ana@example.net", "unsubscribed", "mailto")]
    assert history(mail, message_id) == ["sent", "unsubscribed"]
    assert message(mail, message_id)["status"] == "sent"   # an unsubscribe is not a delivery status


def arf_for(sample: str, message_id: str) -> bytes:
    """A corpus complaint report whose returned message is ours: its Message-ID (and any other
    mention of the sample's id) rewritten to `<message_id@shop.example>`."""
    raw = (BOUNCES / sample).read_bytes()
    raw = re.sub(rb"(?im)^(Message-ID:[ \t]*)<?[^\s>]+>?", rb"\1<" + message_id.encode() + rb"@shop.example>", raw)
    return raw.replace(SAMPLE_ID.encode(), message_id.encode())


@pytest.mark.parametrize(("sample", "recipient"), [
    ("arf-fbl-rfc822-headers.eml", "grace@mailbox.example"),   # Original-Rcpt-To: <Grace@Mailbox.example>
    ("rfc5965-b2-abuse-report.eml", "user@example.com"),       # Original-Rcpt-To: <user@example.com>
])
def test_an_arf_complaint_at_abuse_marks_the_message_and_suppresses_the_address(
        mail: Container, dns: DnsServer, sink: tuple[Sink, int], sample: str,  # noqa: F811
        recipient: str) -> None:
    _world, message_id = sent_marketing(mail, dns, sink, to=recipient)
    report = arf_for(sample, message_id)
    assert f"<{message_id}@shop.example>".encode() in report
    code, _text = with_listener(mail, lambda port: submit(port, "staff@fbl.mailbox.example", f"abuse@{INBOUND}",
                                                          report))
    assert code == 250
    row = message(mail, message_id)
    assert (row["status"], row["status_reason"]) == ("complained", "complaint")
    assert history(mail, message_id) == ["sent", "complained"]
    assert suppressed(mail) == [(recipient, "complaint", "inbound-smtp")]


def test_a_complaint_suppresses_the_messages_recipient_not_the_address_the_report_names(
        mail: Container, dns: DnsServer, sink: tuple[Sink, int]) -> None:  # noqa: F811
    _world, message_id = sent_marketing(mail, dns, sink, to="ana@example.net")
    report = arf_for("arf-fbl-rfc822-headers.eml", message_id)   # names grace@mailbox.example
    assert with_listener(mail, lambda port: submit(port, "staff@fbl.mailbox.example", f"abuse@{INBOUND}",
                                                   report))[0] == 250
    assert message(mail, message_id)["status"] == "complained"
    assert suppressed(mail) == [("ana@example.net", "complaint", "inbound-smtp")]


def test_a_database_failure_answers_451_and_the_retry_is_recorded(
        mail: Container, dns: DnsServer, sink: tuple[Sink, int]) -> None:  # noqa: F811
    _world, message_id = sent_marketing(mail, dns, sink)
    token = mail.email.links.unsubscribe_url(message_id).rsplit("/", 1)[1]
    down = make_engine("postgresql://herald@127.0.0.1:1/herald")   # nothing listens on port 1: connection refused

    def deliver_twice(port: int) -> list[tuple[int, str]]:
        return [submit(port, "ana@example.net", f"unsubscribe+{token}@{INBOUND}", unsubscribe_mail(token))
                for _attempt in range(2)]
    try:
        first, retry = with_listener(mail, deliver_twice, engines=[down])
    finally:
        down.dispose()
    assert first[0] == 451 and first[1].startswith("4.3.0")
    assert retry[0] == 250
    assert suppressed(mail) == [("ana@example.net", "unsubscribed", "mailto")]
    assert history(mail, message_id) == ["sent", "unsubscribed"]


def test_a_report_for_nobody_we_know_is_accepted_and_changes_nothing(
        mail: Container, dns: DnsServer, sink: tuple[Sink, int]) -> None:  # noqa: F811
    """The corpus sample as it is (its id is not one of ours): 250, so the reporter does not retry forever."""
    _world, message_id = sent_marketing(mail, dns, sink)
    raw = (BOUNCES / "arf-fbl-rfc822-headers.eml").read_bytes()
    assert with_listener(mail, lambda port: submit(port, "staff@fbl.mailbox.example", f"fbl@{INBOUND}", raw))[0] == 250
    assert suppressed(mail) == [] and history(mail, message_id) == ["sent"]

