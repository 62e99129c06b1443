"""The RFC 5322 / MIME bytes of one outbound email, built directly (no EmailMessage + generator:
they cost tens of microseconds per message, on the path that must stay far below one RSA
signature).

Contract of `build_mime`:
  * CRLF line endings only, no bare CR or LF anywhere; ready for SMTP DATA (the SMTP library
    dot-stuffs; quoted-printable also encodes a leading "." as =2E).
  * Header order: From, To, Subject, Date, Message-ID, MIME-Version, Reply-To, the extra
    `EmailContent.headers` in their order, then Content-Type (+ Content-Transfer-Encoding).
  * Non-ASCII display names, subjects and extra header values are RFC 2047 encoded-words
    (UTF-8, "B" encoding), at most 76 characters per line; ASCII headers are folded at
    whitespace to at most 78 characters where a whitespace allows it.
  * Internationalised addresses: the domain is IDNA-encoded (UTS 46, IDNA 2008), so it travels
    in ASCII; a non-ASCII local part stays UTF-8 in the header and needs SMTPUTF8 (RFC 6531),
    which `needs_smtputf8` tells the SMTP provider.
  * Bodies are UTF-8: 7bit when ASCII with lines of at most 998 characters (no encoding work),
    else quoted-printable for small parts where it is not bigger than base64, else base64 (see
    `encode_text`). Boundaries start with "=_", which neither quoted-printable nor base64 can
    produce; 7bit text could, so the boundary also carries 96 random bits.
  * Header injection is refused: a CR or LF in an extra header raises ValueError; in a subject or
    display name (template output) it becomes a space.
"""

from __future__ import annotations

import binascii
import os
import re
import struct
from datetime import datetime
from functools import lru_cache

import idna

from herald.domain.delivery import Attachment, EmailContent, OutboundMessage

MAX_LINE = 78            # RFC 5322 §2.1.1 "SHOULD"
MAX_ENCODED_LINE = 76    # RFC 2047 §2: a line holding encoded-words
_EW_PREFIX = "=?utf-8?b?"
_EW_SUFFIX = "?="
_EW_MAX = 75             # RFC 2047 §2: one encoded-word

# Headers build_mime writes itself; an extra header of the same name would duplicate them.
RESERVED_HEADERS = frozenset({
    "from", "to", "subject", "date", "message-id", "mime-version", "reply-to",
    "content-type", "content-transfer-encoding",
})
_HEADER_NAME = re.compile(r"[!-9;-~]+\Z")           # RFC 5322 ftext
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_QUOTE_IN_PHRASE = re.compile(r'(["\\])')
_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+\Z")
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # RFC 2045 token (unquoted parameter value)


def build_mime(message: OutboundMessage, *, date: datetime) -> bytes:
    """The full message, CRLF line endings, ready for SMTP DATA."""
    content = _email_content(message)
    domain = message.sending_domain or content.from_address.rpartition("@")[2]
    headers = [
        _fold(f"From: {format_mailbox(content.from_name, content.from_address, MAX_ENCODED_LINE - 6)}"),
        _fold(f"To: {transport_address(message.to)}"),
        _unstructured("Subject", _one_line(content.subject)),
        f"Date: {_rfc5322_date(date)}",
        _fold(f"Message-ID: <{_message_id_left(message.id)}@{idna_domain(domain)}>"),
        "MIME-Version: 1.0",
    ]
    if content.reply_to:
        headers.append(_fold(f"Reply-To: {transport_address(content.reply_to)}"))
    headers.extend(_extra_header(name, value) for name, value in content.headers)
    entity_headers, body = _body(content)
    headers.extend(entity_headers)
    headers.append("")
    body.insert(0, "\r\n".join(headers).encode("utf-8"))
    body.insert(1, b"\r\n")
    return b"".join(body)   # one copy of the whole message


def needs_smtputf8(message: OutboundMessage) -> bool:
    """True when an address has a non-ASCII local part (RFC 6531): the SMTP provider must use
    SMTPUTF8 in MAIL FROM, or refuse the message if the relay does not offer it. A non-ASCII
    domain alone does not need it (IDNA)."""
    addresses = [message.to]
    if message.email is not None:
        addresses.append(message.email.from_address)
        if message.email.reply_to:
            addresses.append(message.email.reply_to)
    return any(not address.rpartition("@")[0].isascii() for address in addresses)


# --- addresses ---------------------------------------------------------------------------------

def format_mailbox(name: str | None, address: str, first_room: int = _EW_MAX) -> str:
    """`"Name" <addr>`, the name RFC 2047 encoded when not ASCII, its first encoded-word fitting
    in `first_room` characters (unfolded: callers fold at the spaces between the words)."""
    addr = transport_address(address)
    if not name:
        return addr
    name = _one_line(name)
    if name.isascii() and name.isprintable() and "=?" not in name:
        return f"{_quoted(name)} <{addr}>"
    return f"{' '.join(_phrase_words(name, first_room))} <{addr}>"


def _phrase_words(name: str, first_room: int) -> list[str]:
    """A non-ASCII display name as RFC 5322 words: plain atoms stay readable, each run of other
    words becomes encoded-words (spaces inside the run are encoded too).

    Whitespace is normalised to single spaces. Quirk: Python's address parser keeps a space
    between adjacent encoded-words of a phrase (RFC 2047 §6.2 says drop it); a run of more
    than ~45 UTF-8 bytes needs two encoded-words, which RFC readers join and Python spaces."""
    words: list[str] = []
    run: list[str] = []
    for word in name.split():
        if _ATEXT.match(word) and "=?" not in word:
            if run:
                words.extend(_encoded_words(" ".join(run).encode("utf-8"), min(first_room, _EW_MAX)))
                run = []
            words.append(word)
        else:
            run.append(word)
    if run:
        words.extend(_encoded_words(" ".join(run).encode("utf-8"), min(first_room, _EW_MAX)))
    return words


def _quoted(text: str) -> str:
    """An RFC 5322 quoted-string (also a valid RFC 2045 quoted parameter value)."""
    if '"' in text or "\\" in text:
        text = _QUOTE_IN_PHRASE.sub(r"\\\1", text)
    return f'"{text}"'


def transport_address(address: str) -> str:
    """The address as it travels: IDNA (A-label) domain, local part untouched."""
    if not address.isprintable() or " " in address or "<" in address or ">" in address:
        raise ValueError("not a usable email address")
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise ValueError("not a usable email address")
    return f"{local}@{idna_domain(domain)}"


@lru_cache(maxsize=4096)
def idna_domain(domain: str) -> str:
    """The ASCII (A-label) form of a domain; ASCII domains pass unchanged."""
    if domain.isascii():
        return domain
    return idna.encode(domain, uts46=True).decode("ascii")


# --- headers -----------------------------------------------------------------------------------

def _extra_header(name: str, value: str) -> str:
    if not _HEADER_NAME.match(name):
        raise ValueError(f"invalid header name {name!r}")
    if name.lower() in RESERVED_HEADERS:
        raise ValueError(f"header {name} is written by build_mime, not by EmailContent.headers")
    if "\r" in value or "\n" in value:
        raise ValueError(f"header {name} contains a line break")
    return _unstructured(name, value)


def _unstructured(name: str, value: str) -> str:
    """An unstructured header: folded ASCII, or encoded-words when the value is not plain ASCII
    (or would not read back exactly: leading whitespace, control characters, "=?" that a reader
    would decode, a word too long for a 998-character line)."""
    line = f"{name}: {value}"
    if value.isascii() and value.isprintable() and "=?" not in value and value[:1] != " ":
        folded = _fold(line)
        if len(line) <= MAX_LINE or max(map(len, folded.split("\r\n"))) <= 998:
            return folded
    first_room = max(MAX_ENCODED_LINE - len(name) - 2, 24)
    words = _encoded_words(value.encode("utf-8"), min(first_room, _EW_MAX), _EW_MAX)
    return f"{name}: " + "\r\n ".join(words)


def _encoded_words(data: bytes, first_room: int, room: int = _EW_MAX) -> list[str]:
    """RFC 2047 "B" encoded-words holding `data`, each cut at a UTF-8 character boundary (a word
    must hold whole characters); the first fits in `first_room` characters, the rest in `room`.
    Readers drop the whitespace between adjacent encoded-words, so the text reads back exact."""
    overhead = len(_EW_PREFIX) + len(_EW_SUFFIX)
    words: list[str] = []
    start = 0
    limit = first_room
    while start < len(data) or not words:
        end = min(start + (limit - overhead) // 4 * 3, len(data))
        while end < len(data) and end > start + 1 and 0x80 <= data[end] < 0xC0:
            end -= 1   # do not split a multi-byte character
        chunk = binascii.b2a_base64(data[start:end], newline=False).decode("ascii")
        words.append(f"{_EW_PREFIX}{chunk}{_EW_SUFFIX}")
        start, limit = end, room
    return words


def _fold(line: str) -> str:
    """Fold an ASCII header line at whitespace so lines stay within 78 characters where the
    text allows it (a longer unbreakable word stays whole). Unfolding restores it exactly."""
    if len(line) <= MAX_LINE:
        return line
    first_cut = line.find(":") + 2   # never fold right after "Name:"
    parts: list[str] = []
    start = 0
    while len(line) - start > MAX_LINE:
        cut = _fold_point(line, start, max(first_cut, start + 1))
        if cut < 0:
            break
        parts.append(line[start:cut])
        start = cut
    parts.append(line[start:])
    return "\r\n".join(parts)


def _fold_point(line: str, start: int, earliest: int) -> int:
    """Index of the whitespace to fold before: the last one keeping the line within 78
    characters, else the first one after; -1 if none. The line before it is never blank."""
    limit = start + MAX_LINE
    cut = max(line.rfind(" ", earliest, limit + 1), line.rfind("\t", earliest, limit + 1))
    if cut > start and line[start:cut].strip():
        return cut
    for index in range(max(limit, earliest), len(line)):
        if line[index] in " \t" and line[start:index].strip():
            return index
    return -1


def _message_id_left(message_id: str) -> str:
    if not _DOT_ATOM.match(message_id):
        raise ValueError("a message id must be a dot-atom to be a Message-ID's left part")
    return message_id


def _one_line(text: str) -> str:
    """Template output may carry a line break; in a header it would end the header."""
    return _LINE_BREAK.sub(" ", text) if ("\r" in text or "\n" in text) else text


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _rfc5322_date(date: datetime) -> str:
    """RFC 5322 §3.3 date-time, as email.utils.format_datetime writes it (a third of its cost)."""
    offset = date.utcoffset()
    minutes = 0 if offset is None else int(offset.total_seconds()) // 60   # naive means UTC in Herald
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return (f"{_DAYS[date.weekday()]}, {date.day:02d} {_MONTHS[date.month - 1]} {date.year:04d} "
            f"{date.hour:02d}:{date.minute:02d}:{date.second:02d} {sign}{hours:02d}{minutes:02d}")


# --- bodies ------------------------------------------------------------------------------------

# A MIME entity: its header lines, and its body as pieces joined once at the end.
_Entity = tuple[list[str], list[bytes]]


def _body(content: EmailContent) -> _Entity:
    """The top-level entity headers (Content-Type, ...) and everything after the blank line."""
    token = os.urandom(12).hex()
    if content.html is None:
        headers, body = _text_part("text/plain", content.text)
    else:
        headers, body = _multipart("alternative", f"=_a{token}", [
            _text_part("text/plain", content.text),
            _text_part("text/html", content.html),
        ])
    if not content.attachments:
        return headers, body
    parts = [(headers, body)] + [_attachment_part(attachment) for attachment in content.attachments]
    return _multipart("mixed", f"=_m{token}", parts)


def _multipart(subtype: str, boundary: str, parts: list[_Entity]) -> _Entity:
    """RFC 2046 §5.1: each part after "--boundary", the CRLF before a delimiter belongs to it."""
    delimiter = f"--{boundary}\r\n".encode("ascii")
    pieces: list[bytes] = []
    for headers, body in parts:
        pieces.append(delimiter)
        pieces.append("\r\n".join(headers).encode("utf-8"))
        pieces.append(b"\r\n\r\n")
        pieces.extend(body)
        pieces.append(b"\r\n")
    pieces.append(f"--{boundary}--\r\n".encode("ascii"))
    return [f'Content-Type: multipart/{subtype}; boundary="{boundary}"'], pieces


def _text_part(content_type: str, text: str) -> _Entity:
    body, encoding = encode_text(text)
    return [f'Content-Type: {content_type}; charset="utf-8"', f"Content-Transfer-Encoding: {encoding}"], [body]


def encode_text(text: str) -> tuple[bytes, str]:
    """UTF-8 text with CRLF line breaks, encoded: (body, Content-Transfer-Encoding).

    Cost matters here (every byte of every message): CPython's quoted-printable encoder costs
    ~8 ns/byte, six times base64. So: ASCII with lines <= 998 -> 7bit (no encoding at all);
    else quoted-printable when the part is small and QP is not bigger than base64 (readable
    text with a few accents); else base64 (large or mostly non-Latin parts)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    raw = text.encode("utf-8")
    data = raw.replace(b"\n", b"\r\n")   # on bytes: twice as fast as on the str
    if text.isascii() and b"\x00" not in raw and (len(raw) <= 998 or max(map(len, raw.split(b"\n"))) <= 998):
        return data, "7bit"
    if len(data) <= QP_MAX_BYTES:
        characters = len(text) + raw.count(b"\n")   # with the CRs added
        if _quoted_printable_estimate(data, characters) <= _base64_length(len(data)):
            return _quoted_printable(data), "quoted-printable"
    return _base64(data), "base64"


QP_MAX_BYTES = 4096


def _quoted_printable_estimate(data: bytes, characters: int) -> int:
    """QP size from cheap counts: every non-ASCII byte and "=" becomes 3 bytes, plus soft
    breaks. Non-ASCII bytes are estimated as twice the UTF-8 overhead (exact for 2-byte
    characters, an overestimate for 3- and 4-byte ones, which favours base64 for CJK)."""
    escaped = 2 * (len(data) - characters) + data.count(b"=")
    size = len(data) + 2 * escaped
    return size + size // 73 * 3


def _quoted_printable(data: bytes) -> bytes:
    """binascii keeps CRLF as hard breaks only when the first line break is CRLF; text without
    any line break gets one appended for the encoding and removed after."""
    if b"\r\n" in data:
        return binascii.b2a_qp(data, istext=True)
    return binascii.b2a_qp(data + b"\r\n", istext=True)[:-2]


def _base64_length(size: int) -> int:
    encoded = (size + 2) // 3 * 4
    return encoded + (encoded + 75) // 76 * 2


_BASE64_BLOCK = struct.Struct("76s" * 32)   # 32 base64 lines cut by one C call


def _base64(data: bytes) -> bytes:
    """Base64 in 76-character lines, CRLF separated: one C call to encode, then the lines cut
    32 at a time by struct (twice as fast as slicing line by line, measured on CPython 3.11)."""
    encoded = binascii.b2a_base64(data, newline=False)
    whole = len(encoded) // _BASE64_BLOCK.size * _BASE64_BLOCK.size
    chunks = [b"\r\n".join(lines) for lines in _BASE64_BLOCK.iter_unpack(memoryview(encoded)[:whole])]
    chunks.extend(encoded[i:i + 76] for i in range(whole, len(encoded), 76))
    return b"\r\n".join(chunks)


def _attachment_part(attachment: Attachment) -> _Entity:
    content_type = attachment.content_type
    if not content_type.isascii() or "/" not in content_type or "\r" in content_type or "\n" in content_type:
        raise ValueError(f"invalid attachment content type {content_type!r}")
    headers = [
        _fold(f"Content-Type: {content_type}; {_parameter('name', attachment.filename)}"),
        _fold(f"Content-Disposition: attachment; {_parameter('filename', attachment.filename)}"),
        "Content-Transfer-Encoding: base64",
    ]
    return headers, [_base64(attachment.data)]


def _parameter(name: str, value: str) -> str:
    """A MIME parameter: a token, a quoted string, or RFC 2231 `name*=utf-8''%XX` when not ASCII."""
    value = _one_line(value)
    if _TOKEN.match(value):
        return f"{name}={value}"
    if value.isascii():
        return f"{name}={_quoted(value)}"
    encoded = "".join(chr(b) if _TOKEN.match(chr(b)) and chr(b) not in "%'*" else f"%{b:02X}"
                      for b in value.encode("utf-8"))
    return f"{name}*=utf-8''{encoded}"


def _email_content(message: OutboundMessage) -> EmailContent:
    if message.email is None:
        raise ValueError("an email message needs its EmailContent")
    return message.email


__all__ = ["build_mime", "encode_text", "format_mailbox", "idna_domain", "needs_smtputf8", "transport_address"]
