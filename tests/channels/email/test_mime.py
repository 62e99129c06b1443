"""build_mime: the stdlib parser (policy=default) reads back every header and part exactly, the
bytes are CRLF-only and SMTP-ready, international addresses travel as the RFCs say."""

from __future__ import annotations

import email
import re
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from email.policy import default
from email.utils import format_datetime

import pytest

from herald.channels.email.mime import build_mime, encode_text, needs_smtputf8
from herald.domain.delivery import Attachment, EmailContent, OutboundMessage

DATE = datetime(2030, 5, 17, 9, 30, 12, tzinfo=UTC)
UNSUBSCRIBE = (("List-Unsubscribe", "<https://t.example.com/u/0123456789abcdef>, <mailto:unsub+01J@example.com>"),
               ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))


def message(*, to: str = "anna@example.org", from_address: str = "shop@example.com",
            from_name: str | None = "Example Shop", subject: str = "Your order has shipped",
            html: str | None = "<p>Hello Anna</p>\n", text: str = "Hello Anna\n", reply_to: str | None = None,
            headers: tuple[tuple[str, str], ...] = UNSUBSCRIBE, attachments: tuple[Attachment, ...] = (),
            sending_domain: str | None = "example.com", message_id: str = "01J2Z3ABCDEF") -> OutboundMessage:
    content = EmailContent(from_address=from_address, from_name=from_name, subject=subject, html=html, text=text,
                           reply_to=reply_to, headers=headers, attachments=attachments)
    return OutboundMessage(id=message_id, workspace_id="w1", channel="email", purpose="marketing", to=to,
                           email=content, sending_domain=sending_domain)


def parse(raw: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(raw, policy=default)
    assert isinstance(parsed, EmailMessage)
    assert not parsed.defects, parsed.defects
    return parsed


def crlf(text: str) -> str:
    return re.sub(r"\r\n|\r|\n", "\r\n", text)


def header_lines(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def assert_crlf_only(raw: bytes) -> None:
    assert re.search(rb"(?<!\r)\n|\r(?!\n)", raw) is None, "bare CR or LF"
    assert raw.endswith(b"\r\n")


def test_every_header_and_both_parts_read_back_in_order() -> None:
    out = message(reply_to="help@example.com", html="<p>Hello <b>Anna</b></p>\n<p>Total: 19.99</p>",
                  text="Hello Anna\nTotal: 19.99\n")
    raw = build_mime(out, date=DATE)
    parsed = parse(raw)
    assert list(parsed.keys()) == ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Reply-To",
                                   "List-Unsubscribe", "List-Unsubscribe-Post", "Content-Type"]
    assert b'\r\nFrom: "Example Shop" <shop@example.com>\r\n' in b"\r\n" + raw
    assert parsed["From"].addresses[0].display_name == "Example Shop"
    assert str(parsed["To"]) == "anna@example.org"
    assert str(parsed["Subject"]) == "Your order has shipped"
    assert parsed["Date"].datetime == DATE
    assert str(parsed["Message-ID"]) == "<01J2Z3ABCDEF@example.com>"
    assert str(parsed["MIME-Version"]) == "1.0"
    assert str(parsed["Reply-To"]) == "help@example.com"
    assert str(parsed["List-Unsubscribe"]) == UNSUBSCRIBE[0][1]
    assert str(parsed["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    assert parsed.get_content_type() == "multipart/alternative"
    plain, html = list(parsed.iter_parts())
    assert (plain.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
    assert plain.get_content_charset() == html.get_content_charset() == "utf-8"
    assert plain.get_content() == crlf("Hello Anna\nTotal: 19.99\n")
    assert html.get_content() == crlf("<p>Hello <b>Anna</b></p>\n<p>Total: 19.99</p>")
    assert_crlf_only(raw)
    assert all(len(line) <= 78 for line in header_lines(raw))


@pytest.mark.parametrize(("name", "subject"), [
    ("书店 Bücher", "您的订单已发货 — 预计三天内送达，感谢您的惠顾！请保留此邮件以便查询物流信息。"),  # noqa: RUF001
    ("متجر الأزياء", "تم شحن طلبك رقم ١٢٣٤ وسيصل خلال ثلاثة أيام عمل، شكراً لتسوقك معنا"),
    ("Emoji 🎉 Shop", "👩‍👩‍👧 Family sale 🚚📦 — 20% off everything, today only! 🎁✨ Don't miss it 🛍️"),
    ("Ærøskøbing Strikkeri", "Ihre Bestellung ist unterwegs: Größe M, Farbe Weiß, Lieferung Donnerstag"),
    ("Plain", "=?utf-8?q?looks_encoded?= but is literal text"),
    ("Plain", "  leading spaces and a very long ascii subject line that needs folding at a space somewhere"),
    ('Shop "Best", Inc. (EU)', "ASCII with specials: <tags> & \"quotes\" ; commas, dots."),
    ("Plain", "a tab\tand an escape \x1b in the subject"),
    ("Ünïcödé, \"quoted\" (comment) <angle>", "x"),
])
def test_non_ascii_names_and_subjects_read_back_exactly(name: str, subject: str) -> None:
    raw = build_mime(message(from_name=name, subject=subject), date=DATE)
    parsed = parse(raw)
    assert str(parsed["Subject"]) == subject
    address = parsed["From"].addresses[0]
    assert (address.display_name, address.addr_spec) == (name, "shop@example.com")
    assert raw.split(b"\r\n\r\n", 1)[0].isascii()
    assert all(len(line) <= 78 for line in header_lines(raw)), header_lines(raw)
    assert_crlf_only(raw)


def test_a_long_non_ascii_display_name_is_split_into_encoded_words_rfc_readers_join() -> None:
    """A run of non-atom words longer than one encoded-word (75 chars) needs several; RFC 2047
    §6.2 readers drop the space between them. Python's address parser keeps one (a CPython quirk),
    so this reads back the display name without spaces for the comparison."""
    name = "非常长的商店名称一二三四五六七八九十非常长的商店名称一二三四五六七八九十"
    raw = build_mime(message(from_name=name), date=DATE)
    assert all(len(line) <= 78 for line in header_lines(raw))
    display = parse(raw)["From"].addresses[0].display_name
    assert display.replace(" ", "") == name


def test_a_subject_with_a_line_break_stays_one_header() -> None:
    raw = build_mime(message(subject="Line one\r\nBcc: victim@example.net\nthree"), date=DATE)
    parsed = parse(raw)
    assert str(parsed["Subject"]) == "Line one Bcc: victim@example.net three"
    assert parsed["Bcc"] is None


@pytest.mark.parametrize("headers", [
    (("X-Campaign", "spring\r\nBcc: victim@example.net"),),
    (("Bad Name", "x"),),
    (("Subject", "second subject"),),
    (("content-type", "text/plain"),),
])
def test_unsafe_or_duplicate_extra_headers_are_refused(headers: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(ValueError, match="header"):
        build_mime(message(headers=headers), date=DATE)


def test_non_ascii_extra_header_values_are_encoded_words() -> None:
    raw = build_mime(message(headers=(("X-Campaign", "Frühling 春"),)), date=DATE)
    assert str(parse(raw)["X-Campaign"]) == "Frühling 春"
    assert raw.split(b"\r\n\r\n", 1)[0].isascii()


@pytest.mark.parametrize("text", [
    "short ascii\n",
    "a line with a lone dot next\n.\nand a From line:\nFrom here on\n",
    "trailing spaces   \nand a tab\t\nend",
    "x" * 3000,                                   # one very long line, no break
    "no final line break",
    "mixed\r\nline\rbreaks\nhere\r\n",
    "café crème brûlée — 19,99 €\n" * 3,           # a few accents: quoted-printable
    "这是一封很长的中文邮件。" * 400,              # mostly non-Latin, large: base64
    ("word " * 300 + "\n") * 3,                   # ASCII lines over 998 characters
    "control \x00 and \x1b characters\n",
    "",
])
def test_bodies_read_back_exactly_with_short_crlf_lines(text: str) -> None:
    raw = build_mime(message(text=text, html=f"<pre>{text}</pre>"), date=DATE)
    assert_crlf_only(raw)
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    plain, html = list(parse(raw).iter_parts())
    assert plain.get_content() == crlf(text)
    assert html.get_content() == crlf(f"<pre>{text}</pre>")


def test_the_transfer_encoding_follows_the_content() -> None:
    assert encode_text("plain ascii\nlines\n") == (b"plain ascii\r\nlines\r\n", "7bit")
    assert encode_text("café\n")[1] == "quoted-printable"
    assert encode_text("é" * 10)[1] == "base64"                 # every byte escaped: base64 is shorter
    assert encode_text("这是中文" * 10)[1] == "base64"          # QP would triple every byte
    assert encode_text("ascii " * 200 + "é")[1] == "quoted-printable"
    assert encode_text(("a" * 70 + " é\n") * 200)[1] == "base64"   # large: base64 is cheaper to make
    assert encode_text("x" * 1200)[1] == "quoted-printable"       # a line too long for 7bit
    body, encoding = encode_text(".\nFrom me\n")
    assert encoding == "7bit" and body == b".\r\nFrom me\r\n"      # SMTP dot-stuffs; 7bit is exact
    assert all(len(line) <= 76 for line in encode_text("é" * 5000)[0].split(b"\r\n"))


def test_a_lone_dot_line_survives_smtp_dot_stuffing_semantics() -> None:
    """The message holds the "." line as is (7bit) or as =2E (quoted-printable); the SMTP client
    dot-stuffs it. Either way the parser reads the dot back."""
    raw = build_mime(message(text="before\n.\nafter é\n", html=None), date=DATE)
    assert b"\r\n.\r\n" not in raw
    assert parse(raw).get_content() == "before\r\n.\r\nafter é\r\n"


def test_text_only_is_a_single_part() -> None:
    raw = build_mime(message(html=None, text="Only text\n"), date=DATE)
    parsed = parse(raw)
    assert parsed.get_content_type() == "text/plain"
    assert not parsed.is_multipart()
    assert parsed.get_content() == "Only text\r\n"


def test_attachments_wrap_the_alternative_in_multipart_mixed() -> None:
    pdf = bytes(range(256)) * 40
    attachments = (Attachment("invoice 2030-05.pdf", "application/pdf", pdf),
                   Attachment("发票 \"final\".csv", "text/csv", b"a,b\n1,2\n"))
    raw = build_mime(message(attachments=attachments), date=DATE)
    assert_crlf_only(raw)
    parsed = parse(raw)
    assert parsed.get_content_type() == "multipart/mixed"
    alternative, *attached = list(parsed.iter_parts())
    assert alternative.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in alternative.iter_parts()] == ["text/plain", "text/html"]
    assert [(part.get_filename(), part.get_content_type(), part.get_payload(decode=True)) for part in attached] == [
        ("invoice 2030-05.pdf", "application/pdf", pdf), ("发票 \"final\".csv", "text/csv", b"a,b\n1,2\n")]
    assert all(part.get_content_disposition() == "attachment" for part in attached)


def test_a_bad_attachment_content_type_is_refused() -> None:
    with pytest.raises(ValueError, match="content type"):
        build_mime(message(attachments=(Attachment("a.txt", "text/plain\r\nX-Evil: 1", b"x"),)), date=DATE)


def test_international_domains_travel_as_idna_and_local_parts_need_smtputf8() -> None:
    ascii_local = message(to="anna@bücher.de", from_address="shop@例え.jp", sending_domain="例え.jp")
    raw = build_mime(ascii_local, date=DATE)
    parsed = parse(raw)
    assert str(parsed["To"]) == "anna@xn--bcher-kva.de"
    assert parsed["From"].addresses[0].addr_spec == "shop@xn--r8jz45g.jp"
    assert str(parsed["Message-ID"]) == "<01J2Z3ABCDEF@xn--r8jz45g.jp>"
    assert raw.isascii()
    assert not needs_smtputf8(ascii_local)

    utf8_local = message(to="jörg@bücher.de")
    raw = build_mime(utf8_local, date=DATE)
    assert str(parse(raw)["To"]) == "jörg@xn--bcher-kva.de"
    assert "To: jörg@xn--bcher-kva.de\r\n".encode() in raw   # UTF-8 header text (RFC 6532)
    assert needs_smtputf8(utf8_local)
    assert needs_smtputf8(message(from_address="商店@example.com"))
    assert needs_smtputf8(message(reply_to="ayuda.ñ@example.com"))
    assert not needs_smtputf8(message())


@pytest.mark.parametrize("address", ["no-at-sign", "a@", "@example.com", "two words@example.com",
                                     "x@example.com\r\nBcc: y@example.net", "<a@example.com>"])
def test_unusable_addresses_are_refused(address: str) -> None:
    with pytest.raises(ValueError, match="address"):
        build_mime(message(to=address), date=DATE)


def test_message_id_date_and_boundaries() -> None:
    out = message(sending_domain=None, from_address="shop@shop.example")
    first, second = build_mime(out, date=DATE), build_mime(out, date=DATE)
    assert str(parse(first)["Message-ID"]) == "<01J2Z3ABCDEF@shop.example>"   # From's domain without one
    assert first != second   # a fresh boundary per message
    paris = timezone(timedelta(hours=2))
    assert parse(build_mime(out, date=DATE.astimezone(paris)))["Date"].datetime == DATE
    assert b"Date: Fri, 17 May 2030 09:30:12 +0000\r\n" in build_mime(out, date=DATE.replace(tzinfo=None))
    with pytest.raises(ValueError, match="Message-ID"):
        build_mime(message(message_id="has space"), date=DATE)


def test_a_message_without_email_content_is_refused() -> None:
    bare = OutboundMessage(id="1", workspace_id="w", channel="email", purpose="marketing", to="a@example.com")
    with pytest.raises(ValueError, match="EmailContent"):
        build_mime(bare, date=DATE)


@pytest.mark.parametrize("offset", [timedelta(0), timedelta(hours=2), timedelta(hours=-3, minutes=-30),
                                    timedelta(hours=5, minutes=45), timedelta(hours=-11)])
def test_the_date_header_is_what_format_datetime_writes(offset: timedelta) -> None:
    when = datetime(2031, 12, 31, 23, 59, 58, 999999, tzinfo=timezone(offset))
    raw = build_mime(message(), date=when)
    assert f"\r\nDate: {format_datetime(when)}\r\n".encode() in raw
