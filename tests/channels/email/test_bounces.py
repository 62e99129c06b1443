"""DSN/ARF parsing over a corpus of real-format bounces (tests/channels/email/bounces/, sources in
its README.md), junk that must give nothing, and classify() over a table of codes and texts."""

from __future__ import annotations

import email
import email.policy
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from herald.channels.email import bounces
from herald.channels.email.bounces import parse_report, to_json_rows
from herald.channels.email.classify import classify, parse_status, refine_status
from herald.domain.delivery import FailureReason as R

CORPUS_DIR = Path(__file__).parent / "bounces"


@dataclass(frozen=True)
class Expected:
    recipient: str | None
    status: str | None
    reply_code: int | None
    reason: R
    permanent: bool | None
    kind: str = "bounced"
    message_id: str | None = None


def bounced(recipient: str, status: str | None, reply_code: int | None, reason: R, message_id: str | None = None
            ) -> Expected:
    return Expected(recipient, status, reply_code, reason, True, "bounced", message_id)


def deferred(recipient: str, status: str | None, reply_code: int | None, reason: R, message_id: str | None = None
             ) -> Expected:
    return Expected(recipient, status, reply_code, reason, False, "deferred", message_id)


def complained(recipient: str, message_id: str | None) -> Expected:
    return Expected(recipient, None, None, R.COMPLAINT, None, "complained", message_id)


# file -> the events it must give, in order.
CORPUS: dict[str, list[Expected]] = {
    # standards
    "rfc3464-d1-simple.eml": [
        # a 4.0.0 in a final failure: the MTA gave up after 5 days
        bounced("louisl@larry.slip.umd.edu", "4.0.0", 426, R.EXPIRED)],
    "rfc3464-d2-multi-recipient.eml": [
        bounced("arathib@vnet.ibm.com", "5.0.0", 550, R.UNKNOWN),
        deferred("johnh@hpnjld.njd.hp.com", "4.0.0", None, R.HOST_UNKNOWN),
        bounced("wsnell@sdcc13.ucsd.edu", "5.0.0", 550, R.INVALID_ADDRESS)],
    "rfc3464-d4-delayed.eml": [deferred("thomas@de-montfort.ac.uk", "4.0.0", None, R.TRANSIENT)],
    "rfc2034-relayed-and-failed.eml": [
        bounced("nosuchuser@dbc.mtview.ca.us", "5.1.1", 550, R.INVALID_ADDRESS),
        bounced("remoteuser@isi.edu", "5.7.1", 551, R.POLICY)],
    "rfc5965-b2-abuse-report.eml": [complained("user@example.com", "8787KJKJ3K4J3K4J3K4J3.mail")],
    # Postfix
    "postfix-user-unknown.eml": [
        bounced("jane@acme.example", "5.1.1", 550, R.INVALID_ADDRESS, "msg_01J9ZK3Q7M4X2B8N6C5V1R0T9A")],
    "postfix-gmail-dmarc.eml": [
        bounced("kijitora@gmail.example", "5.7.26", 550, R.POLICY, "msg_01HF3A8C2D4E6G8J0K2M4N6P8Q")],
    "postfix-delayed.eml": [
        deferred("slow@mx-down.example", "4.4.1", None, R.TRANSIENT, "msg_01J9ZM0A1B2C3D4E5F6G7H8J9K")],
    "postfix-host-not-found.eml": [
        bounced("Bob@no-such-domain.example", "5.4.4", None, R.HOST_UNKNOWN, "msg_01J9ZP5T6Y7U8I9O0P1A2S3D4F")],
    "postfix-yahoo-policy.eml": [
        bounced("kijitora@aol.example", "5.7.9", 554, R.POLICY, "msg_01HF3B1C3E5G7J9K1M3N5P7Q9R")],
    # Exim
    "exim-plain-user-unknown.eml": [
        bounced("kijitora@example.ed.example", "5.1.1", 550, R.INVALID_ADDRESS, "msg_01J9ZR2W3E4R5T6Y7U8I9O0P1A")],
    "exim-plain-delayed.eml": [
        deferred("busy@full.example", "4.2.2", 452, R.MAILBOX_FULL, "msg_01J9ZS9D8F7G6H5J4K3L2Z1X0C")],
    # Sendmail
    "sendmail-plain-user-unknown.eml": [
        bounced("nobody@partner.example", "5.1.1", 550, R.INVALID_ADDRESS, "msg_01J9ZT4R5E6W7Q8A9S0D1F2G3H")],
    "sendmail-plain-warning.eml": [
        deferred("later@slow.example", None, None, R.TRANSIENT, "msg_01JA0R5G6H7J8K9L0Z1X2C3V4B")],
    "sendmail-dsn-spamhaus.eml": [
        bounced("carol@isp.example", "5.7.1", 554, R.BLOCKED, "msg_01J9ZV6B7N8M9L0K1J2H3G4F5D")],
    # qmail
    "qmail-two-recipients.eml": [
        bounced("ghost@relay.example", "5.1.1", None, R.INVALID_ADDRESS, "msg_01J1QW2E3R4T5Y6U7I8O9P0A1S"),
        bounced("shortdude@gmail.example", "5.7.1", 550, R.POLICY, "msg_01J1QW2E3R4T5Y6U7I8O9P0A1S")],
    "qmail-over-quota.eml": [
        bounced("fullbox@hosting.example", "5.2.2", None, R.MAILBOX_FULL, "msg_01J9ZW1Q2W3E4R5T6Y7U8I9O0P")],
    # Exchange / Office 365
    "exchange2010-text-ndr.eml": [
        bounced("alex.former@corp.example", "5.1.10", 550, R.INVALID_ADDRESS, "msg_01J9ZX7U8I9O0P1A2S3D4F5G6H")],
    "exchange2007-in-reply-to.eml": [
        bounced("old.user@legacy.example", "5.1.1", 550, R.INVALID_ADDRESS, "msg_01JA0B1N2M3B4V5C6X7Z8L9K0J")],
    "office365-dsn-banned-ip.eml": [
        bounced("jane@contoso.example", "5.7.606", 550, R.BLOCKED, "msg_01JA0C2V3B4N5M6L7K8J9H0G1F")],
    "office365-dsn-two-recipients.eml": [
        bounced("full@contoso.example", "5.2.2", 554, R.MAILBOX_FULL, "msg_01JA0Q4F5G6H7J8K9L0Z1X2C3V"),
        bounced("gone@contoso.example", "5.1.10", 550, R.INVALID_ADDRESS, "msg_01JA0Q4F5G6H7J8K9L0Z1X2C3V")],
    "office365-text-edge-block.eml": [
        bounced("sam@fabrikam.example", "5.4.1", 550, R.INVALID_ADDRESS, "msg_01JA0D3Q4W5E6R7T8Y9U0I1O2P")],
    # Gmail
    "gmail-dsn-no-such-user.eml": [
        bounced("ghost@gmail.example", "5.1.1", 550, R.INVALID_ADDRESS, "msg_01JA0E4R5T6Y7U8I9O0P1A2S3D")],
    "gmail-dsn-rate-limited.eml": [
        deferred("pat@gmail.example", "4.7.28", 421, R.THROTTLED, "msg_01JA0F5T6Y7U8I9O0P1A2S3D4F")],
    "gmail-plain-legacy.eml": [
        bounced("userunknown@example.jp", "5.1.1", 550, R.INVALID_ADDRESS, "msg_01H5ZQ1W2E3R4T5Y6U7I8O9P0A")],
    # Amazon SES
    "ses-dsn-mailbox-full.eml": [
        bounced("lena@mailhost.example", "5.2.2", 552, R.MAILBOX_FULL, "msg_01JA0G6Y7U8I9O0P1A2S3D4F5G")],
    "ses-sns-bounce-notification.eml": [
        bounced("bounce@simulator.amazonses.com", "5.1.1", 550, R.INVALID_ADDRESS, "msg_01JA0H7U8I9O0P1A2S3D4F5G6H")],
    "ses-sns-complaint-notification.eml": [
        complained("complaint@simulator.amazonses.com", "msg_01JA0J8I9O0P1A2S3D4F5G6H7J")],
    # Yahoo
    "yahoo-plain-no-account.eml": [
        bounced("gone.user@yahoo.example", None, 554, R.INVALID_ADDRESS, "msg_01JA0K9O0P1A2S3D4F5G6H7J8K")],
    # feedback loops and odd encodings
    "arf-fbl-rfc822-headers.eml": [complained("Grace@mailbox.example", "msg_01JA0L0P1A2S3D4F5G6H7J8K9L")],
    "dsn-base64-crlf.eml": [
        bounced("lost@appliance.example", "5.1.1", 550, R.INVALID_ADDRESS, "msg_01JA0M1A2S3D4F5G6H7J8K9L0Z")],
}

NOT_BOUNCES = [
    "not-bounce-human-reply.eml",
    "not-bounce-vacation.eml",
    "not-bounce-forwarded-bounce.eml",
    "arf-auth-failure-dmarc.eml",
    "mdn-read-receipt.eml",
    "dsn-delivered-only.eml",
]


def read(name: str) -> bytes:
    return (CORPUS_DIR / name).read_bytes()


def observed(name: str) -> list[Expected]:
    return [Expected(e.recipient, e.status, e.reply_code, e.reason or R.UNKNOWN, e.permanent, e.kind, e.message_id)
            for e in parse_report(read(name))]


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_sample_gives_its_expected_events(name: str) -> None:
    assert observed(name) == CORPUS[name]


@pytest.mark.parametrize("name", NOT_BOUNCES)
def test_message_that_is_not_a_bounce_gives_no_event(name: str) -> None:
    assert parse_report(read(name)) == []


def test_corpus_is_complete_and_documented() -> None:
    files = {path.name for path in CORPUS_DIR.glob("*.eml")}
    assert files == set(CORPUS) | set(NOT_BOUNCES)     # every file has an expectation, and exists
    assert len([name for name, events in CORPUS.items() if events and events[0].kind != "complained"]) >= 20
    readme = (CORPUS_DIR / "README.md").read_text()
    assert [name for name in sorted(files) if f"`{name}`" not in readme] == []


def test_dsn_events_carry_provider_time_code_and_fields() -> None:
    [event] = parse_report(read("gmail-dsn-no-such-user.eml"))
    assert event.provider == "dsn"
    # Last-Attempt-Date, not the earlier Arrival-Date
    assert event.occurred_at == datetime(2024, 10, 8, 10, 0, 5, tzinfo=UTC)
    assert event.provider_code == "550 5.1.1"
    assert "does not exist" in event.detail
    assert event.raw["format"] == "rfc3464"
    assert event.raw["fields"]["action"] == "failed"


def test_plain_text_bounce_is_timed_by_its_date_and_names_its_format() -> None:
    [event] = parse_report(read("qmail-over-quota.eml"))
    assert event.occurred_at == datetime(2024, 10, 9, 11, 20, 1, tzinfo=UTC)
    assert event.raw == {"format": "qmail"}
    assert "(#5.2.2)" in event.detail


def test_arf_complaint_is_timed_by_arrival_date() -> None:
    [event] = parse_report(read("rfc5965-b2-abuse-report.eml"))
    assert event.provider == "arf"
    assert event.occurred_at == datetime(2005, 3, 8, 18, 0, tzinfo=UTC)   # 14:00 EDT
    assert event.raw["feedback_type"] == "abuse"


def test_ses_notification_keeps_the_ses_message_id() -> None:
    [event] = parse_report(read("ses-sns-bounce-notification.eml"))
    assert event.provider == "ses"
    assert event.provider_message_id == "0101019271a2b3c4-891e9a0e-9c9d-4773-9bfe-608f2ef4756d-000000"
    assert event.occurred_at == datetime(2024, 10, 10, 9, 20, 40, 502000, tzinfo=UTC)


def test_to_json_rows_has_exactly_the_cli_keys() -> None:
    rows = to_json_rows(parse_report(read("office365-dsn-two-recipients.eml")))
    assert rows == [
        {"recipient": "full@contoso.example", "status": "5.2.2", "reply_code": 554, "reason": "mailbox_full",
         "permanent": True},
        {"recipient": "gone@contoso.example", "status": "5.1.10", "reply_code": 550, "reason": "invalid_address",
         "permanent": True},
    ]


# --- shapes the corpus files do not show -------------------------------------------------------

def dsn(fields: str, *, subject: str = "Undelivered Mail Returned to Sender", returned: str = "") -> bytes:
    text = ("From: MAILER-DAEMON@mx.example.net\nTo: news@shop.example\nSubject: " + subject + "\n"
            "MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\n\n"
            "--b\nContent-Type: text/plain\n\nnotice\n\n--b\nContent-Type: message/delivery-status\n\n" + fields
            + ("\n--b\nContent-Type: text/rfc822-headers\n\n" + returned if returned else "") + "\n--b--\n")
    return text.encode()


def test_dsn_without_action_is_read_from_the_status_class() -> None:
    raw = dsn("Reporting-MTA: dns; mx.example.net\n\nFinal-Recipient: rfc822; a@example.org\nStatus: 5.1.1\n\n"
              "Final-Recipient: rfc822; b@example.org\nStatus: 4.2.2\n")
    assert [(e.kind, e.recipient, e.reason) for e in parse_report(raw)] == [
        ("bounced", "a@example.org", R.INVALID_ADDRESS), ("deferred", "b@example.org", R.MAILBOX_FULL)]


def test_dsn_recipients_without_blank_lines_between_them_are_all_read() -> None:
    raw = dsn("Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 5.1.1\n"
              "Final-Recipient: rfc822; b@example.org\nAction: failed\nStatus: 5.2.2\n")
    assert [(e.recipient, e.status) for e in parse_report(raw)] == [
        ("a@example.org", "5.1.1"), ("b@example.org", "5.2.2")]


def test_generic_status_gives_way_to_the_specific_code_in_the_diagnostic() -> None:
    raw = dsn("Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 5.0.0\n"
              "Diagnostic-Code: smtp; 550 5.1.1 <a@example.org>: Recipient address rejected\n")
    [event] = parse_report(raw)
    assert (event.status, event.reply_code, event.reason) == ("5.1.1", 550, R.INVALID_ADDRESS)


def test_original_recipient_as_sent_wins_over_a_rewritten_final_recipient() -> None:
    raw = dsn("Original-Recipient: rfc822;Sales@Shop-Customer.example\n"
              "Final-Recipient: rfc822;sales-team@tenant.onmicrosoft.example\nAction: failed\nStatus: 5.2.2\n")
    assert [e.recipient for e in parse_report(raw)] == ["Sales@shop-customer.example"]


def test_gateway_recipient_without_an_address_is_skipped() -> None:
    # RFC 3464 appendix D, the X.400 gateway example's only recipient
    assert parse_report(dsn("Reporting-MTA: mailbus; SYS30\n\nFinal-Recipient: unknown; nair_s\n"
                            "Status: 5.0.0 (unknown permanent failure)\nAction: failed\n")) == []


@pytest.mark.parametrize(("headers", "expected"), [
    ("X-Herald-Message-Id: msg_A\nMessage-ID: <msg_B@shop.example>\n", "msg_A"),
    ("Message-ID: <msg_B@shop.example>\n", "msg_B"),
    ("Message-ID:\n <msg_C@shop.example>\n", "msg_C"),
])
def test_our_id_comes_from_the_returned_headers(headers: str, expected: str) -> None:
    raw = dsn("Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 5.1.1\n", returned=headers)
    assert [e.message_id for e in parse_report(raw)] == [expected]


def test_our_id_falls_back_to_the_verp_return_path() -> None:
    raw = dsn("Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 5.1.1\n").replace(
        b"To: news@shop.example", b"To: bounce+msg_VERP1@shop.example")
    assert [e.message_id for e in parse_report(raw)] == ["msg_VERP1"]


def test_report_without_any_id_has_none() -> None:
    raw = dsn("Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 5.1.1\n")
    assert [e.message_id for e in parse_report(raw)] == [None]


def arf(fields: str, returned: str = "") -> bytes:
    return ("From: fbl@isp.example\nTo: fbl@shop.example\nSubject: complaint\nMIME-Version: 1.0\n"
            "Content-Type: multipart/report; report-type=feedback-report; boundary=\"a\"\n\n"
            "--a\nContent-Type: text/plain\n\ncomplaint\n\n--a\nContent-Type: message/feedback-report\n\n" + fields
            + "\n--a\nContent-Type: text/rfc822-headers\n\n" + returned + "\n--a--\n").encode()


def test_arf_with_several_original_recipients_gives_one_complaint_each() -> None:
    raw = arf("Feedback-Type: abuse\nVersion: 1\n"
              "Original-Rcpt-To: <a@isp.example>\nOriginal-Rcpt-To: <b@isp.example>\n",
              "Message-ID: <msg_X@shop.example>\n")
    assert [(e.kind, e.recipient, e.message_id) for e in parse_report(raw)] == [
        ("complained", "a@isp.example", "msg_X"), ("complained", "b@isp.example", "msg_X")]


def test_arf_without_original_rcpt_to_uses_the_returned_to() -> None:
    raw = arf("Feedback-Type: abuse\nVersion: 1\n", "To: Grace <grace@isp.example>\nMessage-ID: <msg_Y@shop.example>\n")
    assert [(e.recipient, e.message_id) for e in parse_report(raw)] == [("grace@isp.example", "msg_Y")]


def test_arf_with_a_redacted_recipient_still_names_our_message() -> None:
    raw = arf("Feedback-Type: abuse\nVersion: 1\n", "To: redacted\nMessage-ID: <msg_Z@shop.example>\n")
    assert [(e.recipient, e.message_id) for e in parse_report(raw)] == [(None, "msg_Z")]


def test_arf_naming_neither_recipient_nor_message_gives_nothing() -> None:
    assert parse_report(arf("Feedback-Type: abuse\nVersion: 1\n", "Subject: hi\n")) == []


def test_not_spam_feedback_is_not_a_complaint() -> None:
    assert parse_report(arf("Feedback-Type: not-spam\nOriginal-Rcpt-To: <a@isp.example>\n")) == []


def test_ses_delivery_notification_is_not_a_failure() -> None:
    raw = (b"From: no-reply@sns.amazonaws.com\nSubject: AWS Notification Message\n\n"
           b'{"notificationType":"Delivery","delivery":{"recipients":["a@example.org"]},"mail":{}}')
    assert parse_report(raw) == []


# --- junk ----------------------------------------------------------------------------------------

JUNK = {
    "empty": b"",
    "one newline": b"\n",
    "nul bytes": b"\x00" * 4096,
    "not mail at all": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\n",
    "headers only": b"From: someone@example.org\nSubject: hello\n",
    "broken multipart/report": (b"From: MAILER-DAEMON@x.example\nContent-Type: multipart/report; boundary=\"nope\"\n\n"
                                b"no boundary ever appears\n"),
    "delivery-status without fields": (b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n"
                                       b"--b\nContent-Type: message/delivery-status\n\n\n--b--\n"),
    "bad charset and encoding": (b"From: MAILER-DAEMON@x.example\nSubject: failure notice\n"
                                 b"Content-Type: text/plain; charset=x-no-such-charset\n"
                                 b"Content-Transfer-Encoding: base64\n\n!!!not base64!!!\n"),
    "bounce words without any address": (b"From: MAILER-DAEMON@x.example\nSubject: failure notice\n\n"
                                         b"Hi. This is the qmail-send program at x.example.\nSorry.\n"),
    "json that is not ses": b"Subject: data\n\n{\"eventType\": [1, 2, 3]}",
}


@pytest.mark.parametrize("raw", JUNK.values(), ids=list(JUNK))
def test_junk_gives_no_event(raw: bytes) -> None:
    assert parse_report(raw) == []


@pytest.mark.parametrize("name", ["postfix-user-unknown.eml", "qmail-two-recipients.eml",
                                  "rfc5965-b2-abuse-report.eml"])
def test_report_truncated_inside_its_headers_gives_no_event(name: str) -> None:
    raw = read(name)
    header_end = raw.index(b"\n\n")
    for cut in range(0, header_end, 17):
        assert parse_report(raw[:cut]) == [], cut


def test_random_bytes_give_no_event() -> None:
    rng = random.Random(20241008)
    for _ in range(300):
        raw = rng.randbytes(rng.randrange(1, 3000))
        assert parse_report(raw) == []


def parsed_without_safety_net(raw: bytes) -> list[object]:
    # parse_report's catch-all is a last resort; the parser itself must survive hostile input.
    return list(bounces._events(email.message_from_bytes(raw, policy=email.policy.compat32)))


def test_every_prefix_of_every_sample_parses_without_an_exception() -> None:
    for path in sorted(CORPUS_DIR.glob("*.eml")):
        raw = path.read_bytes()
        for cut in range(0, len(raw), 61):
            parsed_without_safety_net(raw[:cut])


def test_deep_nesting_and_many_parts_stay_bounded() -> None:
    depth = "".join(f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n' for i in range(500))
    assert parse_report(f"From: MAILER-DAEMON@x.example\n{depth}Content-Type: text/plain\n\nhi\n".encode()) == []
    many = ("From: MAILER-DAEMON@x.example\nContent-Type: multipart/report; boundary=\"z\"\n\n"
            + "--z\nContent-Type: message/delivery-status\n\nFinal-Recipient: rfc822; a@example.org\n"
              "Action: failed\nStatus: 5.1.1\n\n" * 1000 + "--z--\n")
    assert 0 < len(parse_report(many.encode())) <= 200


def test_a_report_gives_at_most_a_thousand_events() -> None:
    fields = "".join(f"Final-Recipient: rfc822; u{i}@example.org\nAction: failed\nStatus: 5.1.1\n\n"
                     for i in range(1500))
    assert len(parse_report(dsn(fields))) == 1000
    notice = "".join(f"<u{i}@example.org>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n" for i in range(1500))
    qmail = ("From: MAILER-DAEMON@x.example\nSubject: failure notice\n\n"
             "Hi. This is the qmail-send program at x.example.\n\n" + notice)
    assert len(parse_report(qmail.encode())) == 1000


# --- classify ------------------------------------------------------------------------------------

CLASSIFY_TABLE: list[tuple[str | None, int | None, str, R, bool]] = [
    # enhanced status codes decide first
    ("5.1.1", 550, "", R.INVALID_ADDRESS, True),
    ("5.1.10", 550, "RESOLVER.ADR.RecipientNotFound", R.INVALID_ADDRESS, True),
    ("5.1.10", 550, "Recipient address has null MX", R.HOST_UNKNOWN, True),
    ("5.1.2", 550, "", R.HOST_UNKNOWN, True),
    ("5.4.4", None, "", R.HOST_UNKNOWN, True),
    ("4.2.2", 452, "", R.MAILBOX_FULL, False),
    ("5.2.2", 552, "", R.MAILBOX_FULL, True),
    ("5.2.1", 550, "The email account that you tried to reach is disabled", R.INVALID_ADDRESS, True),
    ("4.2.1", 450, "The user you are trying to contact is receiving mail at a rate that prevents additional "
                   "messages from being delivered", R.THROTTLED, False),
    ("4.4.7", None, "", R.EXPIRED, False),
    ("5.4.7", None, "", R.EXPIRED, True),
    ("5.3.4", 552, "Message size exceeds fixed limit", R.POLICY, True),
    ("5.7.1", 554, "Service unavailable; Client host [203.0.113.9] blocked using zen.spamhaus.org", R.BLOCKED, True),
    ("5.7.1", 550, "Gmail has detected that this message is likely unsolicited mail", R.BLOCKED, True),
    ("5.7.1", 550, "Unauthenticated email from shop.example is not accepted due to domain's DMARC policy",
     R.POLICY, True),
    ("5.7.1", 554, "Relay access denied", R.POLICY, True),
    ("5.7.1", 550, "", R.BLOCKED, True),
    ("4.7.1", 451, "Greylisted, please try again in 300 seconds", R.TRANSIENT, False),
    ("4.7.0", 421, "Try again later, closing connection.", R.THROTTLED, False),
    ("4.7.28", 421, "Our system has detected an unusual rate of unsolicited mail", R.THROTTLED, False),
    ("5.7.26", 550, "This mail is unauthenticated", R.POLICY, True),
    ("5.7.23", 550, "SPF validation failed", R.POLICY, True),
    ("5.7.606", 550, "Access denied, banned sending IP [203.0.113.9]", R.BLOCKED, True),
    ("5.7.133", 550, "sender was not authenticated when sending to this group", R.POLICY, True),
    ("5.7.8", 535, "Authentication credentials invalid", R.AUTH_FAILED, True),
    ("5.7.9", 554, "Message not accepted for policy reasons", R.POLICY, True),
    ("5.4.1", 550, "Recipient address rejected: Access denied. AS(201806281)", R.INVALID_ADDRESS, True),
    ("5.6.0", 554, "", R.POLICY, True),
    # a generic code: the text (or the specific code inside it) decides
    ("5.0.0", 550, "550 5.1.1 <a@b.example>... User unknown", R.INVALID_ADDRESS, True),
    ("5.0.0", 550, "Requested action not taken: mailbox unavailable", R.INVALID_ADDRESS, True),
    # no enhanced code: well-known texts
    (None, 550, "550-5.1.1 The email account that you tried to reach does not exist.", R.INVALID_ADDRESS, True),
    (None, 550, "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", R.INVALID_ADDRESS,
     True),
    (None, 554, "delivery error: dd This user doesn't have a yahoo.com account", R.INVALID_ADDRESS, True),
    (None, None, "Sorry, no mailbox here by that name.", R.INVALID_ADDRESS, True),
    (None, 552, "Mailbox full", R.MAILBOX_FULL, True),
    (None, None, "The users mailfolder is over the allowed quota (size).", R.MAILBOX_FULL, True),
    (None, 550, "Rejected: 203.0.113.9 listed at zen.spamhaus.org", R.BLOCKED, True),
    (None, 554, "Your access to this mail system has been rejected due to the sending MTA's poor reputation",
     R.BLOCKED, True),
    (None, None, "Host or domain name not found. Name service error for name=x.example type=A", R.HOST_UNKNOWN,
     True),
    (None, 450, "Too many connections, slow down", R.THROTTLED, False),
    (None, 421, "Service not available, closing transmission channel", R.THROTTLED, False),
    (None, 535, "Username and Password not accepted", R.AUTH_FAILED, True),
    (None, 530, "Authentication required", R.AUTH_FAILED, True),
    (None, None, "retry timeout exceeded", R.EXPIRED, True),
    (None, None, "I'm not going to try again; this message has been in the queue too long.", R.EXPIRED, True),
    # only the class digit
    (None, 451, "Local error in processing", R.TRANSIENT, False),
    (None, 550, "Requested action not taken", R.UNKNOWN, True),
    (None, None, "Deferred: Connection timed out", R.TRANSIENT, False),
    (None, None, "", R.UNKNOWN, True),
    # the class of the enhanced code beats the reply code's
    ("4.2.2", 550, "", R.MAILBOX_FULL, False),
    # a success code says nothing about a failure
    ("2.0.0", 550, "", R.UNKNOWN, True),
    # typographic apostrophes (Microsoft 365)
    (None, 550, "This user doesn\u2019t have an outlook.example account", R.INVALID_ADDRESS, True),
]


@pytest.mark.parametrize(("status", "reply_code", "text", "reason", "permanent"), CLASSIFY_TABLE)
def test_classify(status: str | None, reply_code: int | None, text: str, reason: R, permanent: bool) -> None:
    assert classify(status, reply_code, text) == (reason, permanent)


@pytest.mark.parametrize(("text", "expected"), [
    ("550 5.1.1 <a@b.example>: Recipient address rejected", "5.1.1"),
    ("550-5.7.26 Unauthenticated", "5.7.26"),
    ("Sorry, no mailbox here by that name. (#5.1.1)", "5.1.1"),
    ("5.0.0 (permanent failure)", "5.0.0"),
    ("ends a sentence 4.4.7.", "4.4.7"),
    ("from [10.5.1.1] mapi id 15.20.5.1 version 4.2.1.7 Postfix 2.11.3", None),   # IPs and versions
    ("relayed: 250 2.0.0 Ok, then 550 5.2.2 full", "5.2.2"),                       # a failure beats a success
    ("250 2.1.5 ok", "2.1.5"),
    ("status 5.8.1 has no such subject", None),
    ("", None),
])
def test_parse_status(text: str, expected: str | None) -> None:
    assert parse_status(text) == expected


@pytest.mark.parametrize(("status", "text", "expected"), [
    ("5.0.0", "550 5.1.1 user unknown", "5.1.1"),          # generic gives way
    ("5.1.0", "550 5.1.1 user unknown", "5.1.1"),          # same subject, more detail
    ("5.7.1", "550 5.1.1 user unknown", "5.7.1"),          # a specific status stays
    ("5.0.0", "452 4.2.2 mailbox full", "5.0.0"),          # another class never replaces it
    (None, "550 5.2.2 full", "5.2.2"),
    ("4.0.0 (unknown temporary failure)", "", "4.0.0"),
])
def test_refine_status(status: str | None, text: str, expected: str | None) -> None:
    assert refine_status(status, text) == expected
