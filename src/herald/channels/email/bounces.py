"""Read one inbound bounce (DSN) or complaint (ARF) message into `DeliveryEvent`s: one per failed,
delayed or complaining recipient. Pure: bytes in, events out, no IO.

Formats, tried in this order:
  1. RFC 3464 `multipart/report; report-type=delivery-status` (a `message/delivery-status` part, or
     RFC 6533 `message/global-delivery-status`): what Postfix, Exim 4, Sendmail, Gmail,
     Exchange/Office 365, Amazon SES and Yahoo send. Action "failed" -> bounced (permanent),
     "delayed" -> deferred; delivered/relayed/expanded are not failures and are skipped.
  2. RFC 5965 ARF (a `message/feedback-report` part): feedback-loop complaints.
  3. Amazon SES notifications delivered by email (an SNS email subscription: a JSON body).
  4. Plain-text bounces of MTAs that send no report part (qmail, old Exim, Sendmail, Exchange text
     NDRs, old Gmail, Yahoo): an introduction sentence says it is a bounce; recipients are the
     `<addr>:` / indented bare-address lines of the notice, each followed by its diagnostic.
Anything else (a reply, an auto-reply, junk) is not a bounce: `[]`, never an exception.

Our message id (`OutboundMessage.id`) is recovered from the returned original message: its
`X-Herald-Message-Id` header, else the left part of its `Message-ID: <id@sending-domain>`; else the
bounce's `In-Reply-To` (Exchange sets it); else a VERP return path `bounce+<id>@domain` the bounce
was addressed to. The recipient is the address as we sent it: a DSN's Original-Recipient when
present (Final-Recipient may be an internal alias), else its Final-Recipient.
"""

from __future__ import annotations

import base64
import contextlib
import email
import email.errors
import email.header
import email.policy
import html
import json
import quopri
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from email.parser import HeaderParser
from email.utils import parsedate_to_datetime
from typing import Any

from herald.channels.email.classify import classify, parse_status, refine_status
from herald.domain.delivery import DeliveryEvent, EventKind, FailureReason

__all__ = ["parse_report", "to_json_rows"]

_MAX_DEPTH = 12              # MIME nesting we follow
_MAX_LEAVES = 200            # MIME parts we look at
_TEXT_LIMIT = 256 * 1024     # characters of notification text we scan
_DETAIL_LIMIT = 1000         # characters of diagnostic kept per event
_SEGMENT_LIMIT = 4000        # characters of diagnostic collected per recipient (plain text)
_MAX_RECIPIENTS = 1000       # events per report (a report is bounded by the caller, not its content)

_DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_ARF_TYPE = "message/feedback-report"
_RETURNED_TYPES = frozenset({"message/rfc822", "message/global", "text/rfc822-headers",
                             "message/rfc822-headers", "message/global-headers"})

# A mailbox as it appears in notices: no spaces, brackets or quotes; a dotted domain. Non-ASCII
# (RFC 6531) addresses pass.
_ADDR = r"[^\s<>()\[\]\"',;:@]+@[^\s<>()\[\]\"',;:@]+\.[^\s<>()\[\]\"',;:@.]+"
_ADDRESS = re.compile(_ADDR)


def parse_report(raw: bytes) -> list[DeliveryEvent]:
    """The events one inbound message reports; [] when it is not a bounce or complaint (or is too
    broken to read). The caller bounds `raw` (<= 10 MB)."""
    try:
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
        return _events(message)
    except Exception:   # inbound mail is hostile: a message we cannot read is not a bounce
        return []


def to_json_rows(events: Sequence[DeliveryEvent]) -> list[dict[str, object]]:
    """The rows of `herald bounces parse FILE --json`: exactly these keys, one row per event."""
    return [{"recipient": e.recipient, "status": e.status, "reply_code": e.reply_code,
             "reason": e.reason.value if e.reason is not None else None, "permanent": e.permanent}
            for e in events]


# --- dispatch ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Context:
    """What every format shares: the report itself, its notice and the returned original."""

    message: Message
    text: str                      # the human-readable notice (text/plain, else de-tagged HTML)
    returned: Message | None       # headers of the returned original, when attached as a part
    date: datetime | None          # the report's own Date


def _events(message: Message) -> list[DeliveryEvent]:
    leaves = list(_leaves(message))
    ctx = _Context(message, _notification_text(leaves), _returned_part(leaves),
                   _parse_date(_header(message, "Date")))
    dsn_parts = [part for part in leaves if part.get_content_type() in _DSN_TYPES]
    if dsn_parts:
        events = _from_dsn(dsn_parts, ctx)
        if events is not None:
            return events
    for part in leaves:
        if part.get_content_type() == _ARF_TYPE:
            return _from_arf(part, ctx)
    ses = _from_ses_notification(ctx.text)
    if ses is not None:
        return ses
    return _from_plain_text(ctx)


def _leaves(part: Message, depth: int = 0) -> Iterator[Message]:
    """The non-multipart parts, in order; message/* parts are leaves (their insides are the
    returned original or report fields, never the notice)."""
    if depth > _MAX_DEPTH:
        return
    payload = part.get_payload()
    if part.get_content_maintype() == "multipart" and isinstance(payload, list):
        count = 0
        for sub in payload:
            if isinstance(sub, Message):
                for leaf in _leaves(sub, depth + 1):
                    count += 1
                    if count > _MAX_LEAVES:
                        return
                    yield leaf
        return
    yield part


# --- text helpers -----------------------------------------------------------------------------

def _header(message: Message, name: str) -> str:
    value = message.get(name)
    if value is None:
        return ""
    text = str(value)
    if "=?" in text:
        with contextlib.suppress(ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
            text = str(email.header.make_header(email.header.decode_header(text)))
    return text


def _decode_bytes(data: bytes, charset: str | None) -> str:
    try:
        return data.decode(charset or "utf-8", errors="replace")
    except LookupError:   # unknown charset ("unicode-1-1-utf-7", typos): most bounces are ASCII
        return data.decode("utf-8", errors="replace")


def _part_text(part: Message) -> str:
    """A leaf's content as text, transfer encoding and charset undone, whatever its type."""
    payload = part.get_payload()
    if isinstance(payload, list):
        # message/* parts the parser split into sub-messages: put their raw text back together.
        raw = "\n\n".join(_message_source(sub) for sub in payload if isinstance(sub, Message))
        return _undo_transfer_encoding(raw, part)
    data = part.get_payload(decode=True)
    if isinstance(data, bytes):
        return _decode_bytes(data, part.get_content_charset())
    return payload if isinstance(payload, str) else ""


def _message_source(message: Message) -> str:
    head = "\n".join(f"{name}: {value}" for name, value in message.items())
    body = message.get_payload()
    return f"{head}\n\n{body}" if isinstance(body, str) and body else head


def _undo_transfer_encoding(text: str, part: Message) -> str:
    # The email package parses message/delivery-status fields before any transfer decoding, so a
    # base64 report (some Exchange and appliance relays) arrives here still encoded.
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding == "base64":
        data = re.sub(r"[^A-Za-z0-9+/]", "", text.partition("=")[0])
        data = data[:len(data) - 1] if len(data) % 4 == 1 else data   # a truncated report
        return _decode_bytes(base64.b64decode(data + "=" * (-len(data) % 4)), "utf-8")
    if encoding == "quoted-printable":
        return _decode_bytes(quopri.decodestring(text.encode("utf-8", errors="replace")), "utf-8")
    return text


_BLOCK_TAGS = re.compile(r"<\s*(?:br|/p|/div|/tr|/li|/h\d|/table)\b[^>]*>", re.IGNORECASE)
_TAGS = re.compile(r"<[^>]*>")
_SCRIPTS = re.compile(r"<(style|script)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)


def _html_to_text(markup: str) -> str:
    text = _SCRIPTS.sub(" ", markup)
    text = _BLOCK_TAGS.sub("\n", text)
    return html.unescape(_TAGS.sub(" ", text))


def _notification_text(leaves: Sequence[Message]) -> str:
    """The human-readable notice: its text/plain parts, else its HTML parts without tags."""
    plain, markup = [], []
    for part in leaves:
        ctype = part.get_content_type()
        if str(part.get("Content-Disposition", "")).lower().startswith("attachment"):
            continue
        if ctype == "text/plain" or (part.get_content_maintype() == "multipart"):
            plain.append(_part_text(part))   # a multipart whose boundary is missing is text too
        elif ctype == "text/html":
            markup.append(_part_text(part))
    text = "\n".join(plain) if any(t.strip() for t in plain) else "\n".join(map(_html_to_text, markup))
    return text[:_TEXT_LIMIT].replace("\r\n", "\n").replace("\r", "\n")


def _squash(text: str) -> str:
    return " ".join(text.split())[:_DETAIL_LIMIT]


def _address(value: str | None) -> str | None:
    """The mailbox in a DSN/ARF address field ("rfc822; <a@b.example>"), domain lower-cased."""
    if not value:
        return None
    _, sep, rest = value.partition(";")
    match = _ADDRESS.search(rest if sep else value)
    return _normalise(match.group(0)) if match else None


def _normalise(address: str) -> str:
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


def _parse_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _first_date(*values: str | None) -> datetime | None:
    for value in values:
        parsed = _parse_date(value)
        if parsed is not None:
            return parsed
    return None


# --- SMTP replies inside diagnostics ------------------------------------------------------------

# "550 5.1.1 ...", "550-5.7.26 ...", "#550 5.1.1 RESOLVER..." (Exchange 2007)
_REPLY_AT_START = re.compile(r"^\W{0,3}([45]\d\d)(?=[\s-]|$)")
_REPLY_BEFORE_STATUS = re.compile(r"(?<![\w.])([45]\d\d)[ -]+[245]\.\d{1,3}\.\d{1,3}(?![\w]|\.\d)")
# "Remote host said: 550 ...", "Remote Server returned '550 ...'", "<<< 550 ...", "The error ... was:\n550"
_REPLY_AFTER_WORDS = re.compile(
    r"(?:said|returned|answered|replied|reply|response|was|<<<)\s*:?\s*['\"#]?([45]\d\d)(?=[\s-])",
    re.IGNORECASE)


def _reply_code(text: str) -> int | None:
    for pattern in (_REPLY_AT_START, _REPLY_BEFORE_STATUS, _REPLY_AFTER_WORDS):
        match = pattern.search(text)
        if match:
            return int(match.group(1))
    return None


def _split_typed(value: str) -> tuple[str, str]:
    """("smtp", "550 5.1.1 ...") from a Diagnostic-Code "smtp; 550 5.1.1 ..."."""
    kind, sep, rest = value.partition(";")
    if sep and kind.strip() and " " not in kind.strip():
        return kind.strip().lower(), rest.strip()
    return "", value.strip()


# --- our message id -----------------------------------------------------------------------------

_INLINE_HERALD_ID = re.compile(r"^[ \t>]*X-Herald-Message-Id:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)
_INLINE_MESSAGE_ID = re.compile(r"^[ \t>]*Message-ID:[ \t]*(?:\n[ \t]+)?(\S+)", re.IGNORECASE | re.MULTILINE)
_VERP = re.compile(r"(?:^|[<\s,])bounce\+([^@\s<>]+)@", re.IGNORECASE)


def _id_from_message_id(value: str | None) -> str | None:
    """"ourid" from "<ourid@shop.example>" (or a bare "ourid@shop.example")."""
    if not value:
        return None
    value = value.strip()
    match = re.search(r"<([^<>\s]+)>", value)
    token = match.group(1) if match else (value.split() or [""])[0]
    left = token.rpartition("@")[0] if "@" in token else token
    left = left.strip("<>")
    return left if 0 < len(left) <= 200 else None


def _returned_part(leaves: Sequence[Message]) -> Message | None:
    for part in leaves:
        ctype = part.get_content_type()
        if ctype not in _RETURNED_TYPES:
            continue
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            return payload[0]
        return HeaderParser(policy=email.policy.compat32).parsestr(_part_text(part).lstrip())
    return None


def _message_id(ctx: _Context, inline_returned: str = "", reported: str | None = None) -> str | None:
    """Our id, best evidence first. `inline_returned` is a returned copy quoted in the notice text;
    `reported` a Message-ID the report itself names (Gmail's X-Original-Message-ID DSN field)."""
    candidates: list[str | None] = []
    if ctx.returned is not None:
        candidates.append(_header(ctx.returned, "X-Herald-Message-Id").strip().strip("<>") or None)
    herald_inline = _INLINE_HERALD_ID.search(inline_returned)
    candidates.append(herald_inline.group(1).strip("<>") if herald_inline else None)
    if ctx.returned is not None:
        candidates.append(_id_from_message_id(_header(ctx.returned, "Message-ID")))
    message_id_inline = _INLINE_MESSAGE_ID.search(inline_returned)
    candidates.append(_id_from_message_id(message_id_inline.group(1)) if message_id_inline else None)
    candidates.append(_id_from_message_id(reported))
    candidates.append(_id_from_message_id(_header(ctx.message, "In-Reply-To")))
    for name in ("To", "Delivered-To", "X-Original-To"):
        verp = _VERP.search(_header(ctx.message, name))
        candidates.append(verp.group(1) if verp else None)
    return next((c for c in candidates if c), None)


# --- RFC 3464 delivery status -------------------------------------------------------------------

def _field_blocks(text: str) -> list[dict[str, str]]:
    """RFC 3464 section 2.1: groups of header-like fields separated by blank lines; names lower
    cased, folded lines joined. A repeated field starts a new group (some MTAs omit the blank
    line between recipients)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last: str | None = None
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
            current, last = {}, None
        elif line[0] in " \t":
            if last is not None:
                current[last] += " " + line.strip()
        else:
            name, sep, value = line.partition(":")
            name = name.strip().lower()
            if not sep or not name or " " in name:
                last = None
                continue
            if name in current:
                blocks.append(current)
                current = {}
            current[name] = value.strip()
            last = name
    if current:
        blocks.append(current)
    return blocks


def _from_dsn(parts: Sequence[Message], ctx: _Context) -> list[DeliveryEvent] | None:
    """Events of the delivery-status parts; None when they name no recipient at all (then the
    plain-text reading gets its chance)."""
    per_message: dict[str, str] = {}
    recipients: list[dict[str, str]] = []
    for part in parts:
        for block in _field_blocks(_part_text(part)):
            if "final-recipient" in block or "original-recipient" in block:
                recipients.append(block)
            else:
                per_message = {**block, **per_message}
    del recipients[_MAX_RECIPIENTS:]
    if not recipients:
        return None
    message_id = _message_id(ctx, reported=per_message.get("x-original-message-id"))
    events = (_dsn_event(block, per_message, message_id, ctx) for block in recipients)
    return [event for event in events if event is not None]


def _dsn_kind(action: str, status: str | None) -> EventKind | None:
    if action == "failed" or (not action and status is not None and status[0] == "5"):
        return "bounced"
    if action == "delayed" or (not action and status is not None and status[0] == "4"):
        return "deferred"
    return None   # delivered, relayed, expanded: not a failure


def _dsn_event(block: Mapping[str, str], per_message: Mapping[str, str], message_id: str | None,
               ctx: _Context) -> DeliveryEvent | None:
    recipient = _address(block.get("original-recipient")) or _address(block.get("final-recipient"))
    _, diagnostic = _split_typed(block.get("diagnostic-code", ""))
    status_field = block.get("status", "")
    status = refine_status(status_field, diagnostic)
    kind = _dsn_kind((block.get("action", "").split() or [""])[0].lower(), status)
    if recipient is None or kind is None:
        return None
    reply_code = _reply_code(diagnostic)
    # Without a diagnostic, the status comment ("4.0.0 (host name lookup failure)") is the text.
    text = diagnostic or status_field
    reason = _final_reason(kind, *classify(status, reply_code, text))
    return DeliveryEvent(
        kind=kind, provider="dsn",
        occurred_at=_first_date(block.get("last-attempt-date"), _header(ctx.message, "Date"),
                                per_message.get("arrival-date")),
        message_id=message_id, recipient=recipient, reason=reason, permanent=kind == "bounced",
        status=status, reply_code=reply_code, provider_code=_provider_code(reply_code, status),
        detail=_squash(text), raw={"format": "rfc3464", "fields": dict(block)})


def _final_reason(kind: EventKind, reason: FailureReason, permanent: bool) -> FailureReason:
    """A temporary cause (4.x.x) in a final failure means the MTA gave up retrying: EXPIRED."""
    if kind == "bounced" and not permanent and reason in (FailureReason.TRANSIENT, FailureReason.THROTTLED):
        return FailureReason.EXPIRED
    return reason


def _provider_code(reply_code: int | None, status: str | None) -> str | None:
    code = " ".join(str(part) for part in (reply_code, status) if part is not None)
    return code or None


# --- RFC 5965 ARF -----------------------------------------------------------------------------

# RFC 6591 auth-failure reports (DMARC/SPF failures) and RFC 6650 "not-spam" are not complaints.
_NOT_COMPLAINTS = frozenset({"auth-failure", "not-spam"})


def _from_arf(part: Message, ctx: _Context) -> list[DeliveryEvent]:
    blocks = _field_blocks(_part_text(part))
    fields: dict[str, str] = {}
    rcpt_fields: list[str] = []
    for block in blocks:
        rcpt_fields += [block["original-rcpt-to"]] if "original-rcpt-to" in block else []
        fields = {**block, **fields}
    feedback_type = (fields.get("feedback-type", "abuse").split() or ["abuse"])[0].lower()
    if feedback_type in _NOT_COMPLAINTS:
        return []
    recipients = _unique(a for a in map(_address, rcpt_fields) if a)[:_MAX_RECIPIENTS]
    if not recipients:
        fallback = _address(fields.get("removal-recipient")) or _single_address(ctx.returned, "To")
        recipients = [fallback] if fallback else []
    message_id = _message_id(ctx)
    if not recipients and message_id is None:
        return []
    occurred_at = _first_date(fields.get("arrival-date"), fields.get("received-date"), _header(ctx.message, "Date"))
    raw = {"format": "rfc5965", "feedback_type": feedback_type, "user_agent": fields.get("user-agent", "")}
    targets: list[str | None] = list(recipients) or [None]
    return [DeliveryEvent(kind="complained", provider="arf", occurred_at=occurred_at, message_id=message_id,
                          recipient=recipient, reason=FailureReason.COMPLAINT, detail=f"feedback-type: {feedback_type}",
                          raw=raw)
            for recipient in targets]


def _single_address(message: Message | None, name: str) -> str | None:
    if message is None:
        return None
    found = _ADDRESS.findall(_header(message, name))
    return _normalise(found[0]) if len(found) == 1 else None


def _unique(values: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for value in values:
        seen.setdefault(value, None)
    return list(seen)


# --- Amazon SES notifications by email ------------------------------------------------------------
# https://docs.aws.amazon.com/ses/latest/dg/notification-contents.html: an SNS email subscription
# delivers the notification JSON as the body (notificationType; event publishing uses eventType).

_SES_SUBTYPES: dict[str, FailureReason] = {
    "NoEmail": FailureReason.INVALID_ADDRESS,
    "Suppressed": FailureReason.INVALID_ADDRESS,
    "OnAccountSuppressionList": FailureReason.INVALID_ADDRESS,
    "MailboxFull": FailureReason.MAILBOX_FULL,
    "MessageTooLarge": FailureReason.POLICY,
    "ContentRejected": FailureReason.POLICY,
    "AttachmentRejected": FailureReason.POLICY,
}


def _from_ses_notification(text: str) -> list[DeliveryEvent] | None:
    if '"notificationType"' not in text and '"eventType"' not in text:
        return None
    try:
        document, _ = json.JSONDecoder().raw_decode(text, text.index("{"))
    except ValueError:
        return None
    if isinstance(document, dict) and isinstance(document.get("Message"), str):   # the SNS envelope
        try:
            document = json.loads(document["Message"])
        except ValueError:
            return None
    if not isinstance(document, dict):
        return None
    kind = document.get("notificationType") or document.get("eventType")
    mail = _json_object(document.get("mail"))
    if kind == "Bounce" and isinstance(document.get("bounce"), dict):
        return _ses_bounces(document["bounce"], mail)
    if kind == "Complaint" and isinstance(document.get("complaint"), dict):
        return _ses_complaints(document["complaint"], mail)
    return [] if kind else None


def _json_object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _json_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _ses_message_id(mail: Mapping[str, Any]) -> str | None:
    headers = _json_list(mail.get("headers"))
    values = {str(h.get("name", "")).lower(): str(h.get("value", "")) for h in headers if isinstance(h, dict)}
    common = _json_object(mail.get("commonHeaders"))
    return (values.get("x-herald-message-id") or _id_from_message_id(values.get("message-id"))
            or _id_from_message_id(str(common.get("messageId") or "")))


def _iso_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _ses_bounces(bounce: Mapping[str, Any], mail: Mapping[str, Any]) -> list[DeliveryEvent]:
    permanent = bounce.get("bounceType") == "Permanent"
    subtype = str(bounce.get("bounceSubType") or "")
    events = []
    for entry in _json_list(bounce.get("bouncedRecipients"))[:_MAX_RECIPIENTS]:
        recipient = _address(str(entry.get("emailAddress", ""))) if isinstance(entry, dict) else None
        if recipient is None:
            continue
        _, diagnostic = _split_typed(str(entry.get("diagnosticCode") or ""))
        status = refine_status(str(entry.get("status") or ""), diagnostic)
        reply_code = _reply_code(diagnostic)
        reason = _SES_SUBTYPES.get(subtype) or classify(status, reply_code, diagnostic)[0]
        events.append(DeliveryEvent(
            kind="bounced", provider="ses", occurred_at=_iso_time(bounce.get("timestamp")),
            message_id=_ses_message_id(mail), provider_message_id=str(mail.get("messageId") or "") or None,
            recipient=recipient, reason=reason, permanent=permanent, status=status, reply_code=reply_code,
            provider_code=_provider_code(reply_code, status), detail=_squash(diagnostic or subtype),
            raw={"format": "ses-notification", "bounceType": bounce.get("bounceType"), "bounceSubType": subtype}))
    return events


def _ses_complaints(complaint: Mapping[str, Any], mail: Mapping[str, Any]) -> list[DeliveryEvent]:
    feedback_type = str(complaint.get("complaintFeedbackType") or "abuse")
    if feedback_type in _NOT_COMPLAINTS:
        return []
    entries = _json_list(complaint.get("complainedRecipients"))[:_MAX_RECIPIENTS]
    recipients = [_address(str(e.get("emailAddress", ""))) for e in entries if isinstance(e, dict)]
    return [DeliveryEvent(
        kind="complained", provider="ses", occurred_at=_iso_time(complaint.get("timestamp")),
        message_id=_ses_message_id(mail), provider_message_id=str(mail.get("messageId") or "") or None,
        recipient=recipient, reason=FailureReason.COMPLAINT, detail=f"feedback-type: {feedback_type}",
        raw={"format": "ses-notification", "complaintFeedbackType": feedback_type})
        for recipient in recipients if recipient]


# --- plain-text bounces ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Intro:
    """A sentence that only a bounce (or delay warning) of some MTA begins with."""

    name: str
    pattern: re.Pattern[str]
    temporary: bool = False


def _intro(name: str, *alternatives: str, temporary: bool = False) -> _Intro:
    # Notices are wrapped at any word: every space in a phrase matches any run of white space; an
    # apostrophe may be typographic (U+2019: Microsoft 365 writes "couldn\u2019t").
    pattern = "|".join(alternative.replace(" ", r"\s+").replace("'", r"['\u2019]") for alternative in alternatives)
    return _Intro(name, re.compile(pattern, re.IGNORECASE), temporary)


# Delay warnings first: their wording overlaps the failures' ("could not be delivered ... will retry").
_INTROS: tuple[_Intro, ...] = (
    _intro("exim", r"has not yet been delivered to one or more of its recipients", temporary=True),
    _intro("sendmail", r"following addresses had transient non-fatal errors",
           r"Warning: could not send message for past", temporary=True),
    _intro("warning", r"THIS IS A WARNING (?:MESSAGE )?ONLY", temporary=True),   # Postfix, Sendmail
    _intro("gmail", r"Delivery to the following recipients? has been delayed",
           r"There was a temporary problem delivering your message", temporary=True),
    _intro("exchange", r"Delivery is delayed to these recipients or groups", r"hasn't been delivered yet",
           temporary=True),
    _intro("qmail", r"This is the qmail-send program at", r"I'm afraid I wasn't able to deliver your message"),
    _intro("exim", r"This message was created automatically by mail delivery software"),
    _intro("sendmail", r"following addresses had permanent fatal errors",
           r"The following addresses had delivery problems", r"The original message was received at"),
    _intro("postfix", r"This is the (?:mail system|Postfix program) at host"),
    _intro("exchange", r"Delivery has failed to these recipients or groups",
           r"The following recipient\(s\) cannot be reached",
           r"Your message to \S+ couldn't be delivered", r"rejected your message to the following e-?mail addresses",
           r"Your message did not reach some or all of the intended recipients",
           r"could not be delivered to the following recipients"),
    _intro("gmail", r"Delivery to the following recipients? failed", r"Your message wasn't delivered to",
           r"Your message to \S+ has been blocked"),
    _intro("yahoo", r"Sorry,? we were unable to deliver your message to the following address",
           r"Unable to deliver message to the following address"),
    _intro("generic", r"could not be delivered to one or more (?:of its )?recipients",
           r"was not delivered to", r"message (?:was|is) undeliverable", r"undeliverable to the following",
           r"permanent fatal errors", r"unable to deliver your message"),
)

# Only automatic mail is read as a bounce: a person quoting a bounce in a reply is not one.
_BOUNCE_SENDER = re.compile(r"mailer-daemon|postmaster|mail delivery|microsoftexchange|delivery subsystem|"
                            r"mail administrator|\bbounces?\b", re.IGNORECASE)
_BOUNCE_SUBJECT = re.compile(r"undeliver|delivery status notification|failure notice|returned mail|"
                             r"delivery (?:has )?fail|non-?delivery|not (?:be )?delivered|delivery (?:is )?delayed|"
                             r"delayed mail|warning: message|mail delivery", re.IGNORECASE)
_PERMANENT_WORDS = re.compile(r"permanent (?:fatal )?error|failed permanently|given up|will not be retried",
                              re.IGNORECASE)

# Where the notice ends and the returned copy of the message begins.
_RETURNED_MARKER = re.compile(
    r"^[ \t]*-+ ?Below this line is a copy of the message"
    r"|^[ \t]*-+ ?This is a copy of (?:the|your) message"
    r"|^[ \t]*-+ ?(?:Original message|Message header|Returned message|Returned mail|Undelivered message)"
    r"(?: follows)?\.? ?-*[ \t]*$"
    r"|^[ \t]*-+ ?(?:Original|Returned) message(?:'s)? headers? -*"
    r"|^[ \t]*Original message headers:"
    r"|^[ \t]*-+ ?The header of the original message",
    re.IGNORECASE | re.MULTILINE)

# A recipient line: an address at the start (maybe in <> or quotes), then nothing, ':', '...', a
# comment "(...)", Exchange's "<mailto:...>", " ( addr )" or " on <date>" (Exchange 2003/2007).
# Sentences ("a@b.example wrote:") are not.
_RECIPIENT_LINE = re.compile(rf"^[ \t]*(?:[*>-][ \t]*)?[<'\"]?(?P<addr>{_ADDR})[>'\"]?(?P<rest>.*)$")
_RECIPIENT_REST = re.compile(r"^\s*(?:$|:|\.\.\.|\(|<mailto:|,|on \d)", re.IGNORECASE)
_RECIPIENT_SENTENCE = re.compile(
    rf"(?:wasn['\u2019]t delivered to|delivering your message to|Your message to|couldn['\u2019]t be delivered to|"
    rf"could not be delivered to)\s+<?(?P<addr>{_ADDR})>?", re.IGNORECASE)


def _intro_match(text: str) -> tuple[_Intro, int] | None:
    for intro in _INTROS:
        match = intro.pattern.search(text)
        if match:
            return intro, match.start()
    return None


_REPLY_OR_FORWARD = re.compile(r"^\s*(?:re|fwd?|aw|wg|tr|sv|vs)\s*:", re.IGNORECASE)


def _looks_automatic(message: Message) -> bool:
    if _REPLY_OR_FORWARD.match(_header(message, "Subject")):
        return False   # a person replying to or forwarding a bounce ("Undeliverable: Re: ..." is fine)
    return bool(_BOUNCE_SENDER.search(_header(message, "From"))
                or _BOUNCE_SUBJECT.search(_header(message, "Subject"))
                or _header(message, "Return-Path").strip() == "<>"
                or message.get("X-Failed-Recipients") is not None)


def _from_plain_text(ctx: _Context) -> list[DeliveryEvent]:
    found = _intro_match(ctx.text)
    if found is None or not _looks_automatic(ctx.message):
        return []
    intro, start = found
    marker = _RETURNED_MARKER.search(ctx.text, start)
    notice = ctx.text[ctx.text.rfind("\n", 0, start) + 1:marker.start() if marker else len(ctx.text)]
    returned_text = ctx.text[marker.end():] if marker else ""
    segments = _recipient_segments(notice, _own_addresses(ctx.message))
    if not segments:
        failed = _ADDRESS.findall(_header(ctx.message, "X-Failed-Recipients"))
        segments = {_normalise(address): notice for address in failed}
    temporary = intro.temporary and not _PERMANENT_WORDS.search(notice)
    kind: EventKind = "deferred" if temporary else "bounced"
    message_id = _message_id(ctx, returned_text)
    return [_plain_event(kind, recipient, segment, notice, intro.name, message_id, ctx)
            for recipient, segment in segments.items()]


def _own_addresses(message: Message) -> set[str]:
    """Addresses that are the report's own envelope (our return path, the MTA), never recipients."""
    own: set[str] = set()
    for name in ("From", "To", "Delivered-To", "X-Original-To", "Return-Path", "Reply-To"):
        own.update(_normalise(a).lower() for a in _ADDRESS.findall(_header(message, name)))
    return own


def _recipient_segments(notice: str, own: set[str]) -> dict[str, str]:
    """recipient -> the notice text that follows its line(s) up to the next recipient; a recipient
    named twice (Exchange lists it, then its diagnostic) gets both pieces."""
    segments: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    current: str | None = None
    for line in notice.split("\n"):
        recipient = _line_recipient(line)
        if recipient is not None and recipient.lower() not in own:
            if recipient not in segments and len(segments) >= _MAX_RECIPIENTS:
                break
            current = recipient
            segments.setdefault(recipient, [])
        if current is not None and sizes.get(current, 0) < _SEGMENT_LIMIT:
            segments[current].append(line)
            sizes[current] = sizes.get(current, 0) + len(line)
    return {recipient: "\n".join(lines) for recipient, lines in segments.items()}


def _line_recipient(line: str) -> str | None:
    match = _RECIPIENT_LINE.match(line)
    if match and _RECIPIENT_REST.match(match.group("rest")):
        return _normalise(match.group("addr"))
    sentence = _RECIPIENT_SENTENCE.search(line)
    return _normalise(sentence.group("addr")) if sentence else None


def _plain_event(kind: EventKind, recipient: str, segment: str, notice: str, name: str,
                 message_id: str | None, ctx: _Context) -> DeliveryEvent:
    # A recipient's own lines usually carry its code; if not, the notice's shared text does.
    text = segment if (parse_status(segment) or _reply_code(segment)) else notice
    status = parse_status(text)
    reply_code = _reply_code(text)
    reason = _final_reason(kind, *classify(status, reply_code, text))
    return DeliveryEvent(
        kind=kind, provider="dsn", occurred_at=ctx.date, message_id=message_id, recipient=recipient,
        reason=reason, permanent=kind == "bounced", status=status, reply_code=reply_code,
        provider_code=_provider_code(reply_code, status), detail=_squash(segment), raw={"format": name})

