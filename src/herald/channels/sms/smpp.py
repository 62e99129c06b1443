"""SMPP 3.4: an ESME (client) bound as a transceiver to a carrier's or aggregator's SMSC. Sends
submit_sm, reads delivery receipts and inbound messages (deliver_sm) from the same bind. Pure
translation between `herald.domain.delivery` and the SMPP wire format; no database, no logging.

Sources (checked, not guessed):
  * SMPP Protocol Specification v3.4 Issue 1.2 (smpp.org/SMPP_v3_4_Issue1_2.pdf, as cited by Sinch's
    "SMPP submission error codes" page, developers.sinch.com/docs/sms/smpp/error-codes): the 16-octet
    header (command_length, command_id, command_status, sequence_number); bind_transceiver (4.1.5:
    system_id <= 15, password <= 8, system_type <= 12 octets, interface_version 0x34, addr_ton,
    addr_npi, address_range); submit_sm (4.4.1) and deliver_sm (4.6.1) with their C-Octet strings,
    optional TLVs after short_message; enquire_link (4.11), unbind (4.2), generic_nack (4.3);
    command_status values (5.1.3; the same table on docs.smsportal.com "SMPP Error Codes" and the
    rusmpp CommandStatus enum on docs.rs); esm_class (5.2.12: 0x40 UDH indicator; deliver_sm message
    type bits 5-2: 0x04 SMSC delivery receipt, 0x20 intermediate notification, see smpp-pdu's
    esm_class.rs on docs.rs); message_state (5.2.28: 1 ENROUTE, 2 DELIVERED, 3 EXPIRED, 4 DELETED,
    5 UNDELIVERABLE, 6 ACCEPTED, 7 UNKNOWN, 8 REJECTED) and the TLVs receipted_message_id 0x001E,
    message_state 0x0427, network_error_code 0x0423, message_payload 0x0424, sar_msg_ref_num
    0x020C / sar_total_segments 0x020E / sar_segment_seqnum 0x020F.
  * Delivery receipt text (Appendix B; 8x8 "SMPP - Delivery receipts", developer.8x8.com, and
    IBM's Karix receipt page show the same): "id:IIIIIIIIII sub:SSS dlvrd:DDD submit
    date:YYMMDDhhmm done date:YYMMDDhhmm stat:DDDDDDD err:E Text: ..." with stat DELIVRD, EXPIRED,
    DELETED, UNDELIV, ACCEPTD, UNKNOWN, REJECTD (and ENROUTE).
  * Concatenation: a User Data Header 05 00 03 <ref> <total> <seq> (3GPP TS 23.040 9.2.3.24.1, IEI
    0x00, 8-bit reference) with esm_class 0x40; GSM-7 (data_coding 0, one septet per octet,
    docs.smsportal.com "Sending and Receiving": "data_coding 0 GSM 03.38 is default SMSC character
    set") or UCS-2 (data_coding 8, UTF-16BE). The parts are cut by `herald.domain.sms.split`.
  * Source address TON/NPI (Infobip "What are TON and NPI settings?"): "+" number -> 1/1,
    alphanumeric -> 5/0, short code -> 3/0; destinations are E.164 digits with TON 1 / NPI 1
    (Sinch "Sending messages": "A destination address should always be sent as the E.164 CC + NDC +
    subscriber number").

Why our own asyncio client and PDU codec (the "PDUs" and "session" sections below) instead of a
library: the `smpp34` wheel (1.5.0, Rust core, which the tests run as the SMSC) has a client, but
its `connect()` does not report a refused bind (it waits its connect timeout and raises "bind timed out", so
a wrong password cannot be told from a silent SMSC: AUTH_FAILED would be impossible), it does not
hold its `window_size` (4 submit_sm were outstanding with window_size=2), its enquire_link interval
and 30-second response timer cannot be set from Python, it acknowledges every deliver_sm before the
application has it, and a client left unstopped aborts the interpreter at exit (PyGILState_Release).
`smpplib` is synchronous (a thread per connection). The PDUs an ESME needs are few and fixed;
a pure-Python codec also keeps a platform-specific binary wheel out of Herald's runtime. The
tests check this codec against smpp34's independent decoder and SMSC.

Our message id and the SMSC: SMPP carries no field for our id (user_message_reference is 16
bits), so the provider remembers each part's SMSC message id (from submit_sm_resp) -> our id, in
memory (`max_tracked` entries, oldest forgotten first). `SendResult.provider_message_id` is the
FIRST part's SMSC id, stored on the message, so a receipt that arrives after a restart, or on
another process's bind, still finds the message by (provider, provider_message_id) in feedback;
for a multipart message sent before a restart, only the first part's receipt matches.

Outcomes (`SendResult`):
  * every part's submit_sm_resp ROK -> accepted, provider_message_id = first part's id.
  * ESME_RTHROTTLED 0x58 and ESME_RMSGQFUL 0x14 -> retry THROTTLED; ESME_RSYSERR 0x08 and
    ESME_RINVBNDSTS 0x04 -> retry PROVIDER_DOWN; ESME_RSUBMITFAIL 0x45 / ESME_RX_T_APPN 0x64 ->
    retry TRANSIENT; ESME_RINVSRCADR / RINVSRCTON / RINVSRCNPI (the sender id refused) -> retry
    AUTH_FAILED (the settings are fixed, the message waits, as SendGrid's sender-identity refusal);
    ESME_RINVDSTADR 0x0B / RINVDSTTON / RINVDSTNPI -> failed INVALID_ADDRESS; ESME_RINVMSGLEN /
    RINVESMCLASS / RX_R_APPN / TLV errors / RINVDCS -> failed CONTENT_REJECTED; ESME_RPROHIBITED
    -> failed BLOCKED; any other -> failed UNKNOWN. `provider_code` is the status as "0x%08X".
  * no bind: connection refused / reset / timed out -> retry PROVIDER_DOWN; bind refused
    (ESME_RINVPASWD, RINVSYSID, RBINDFAIL, RINVSYSTYP, RALYBND) -> retry AUTH_FAILED with the
    bind's status as provider_code; bind throttled -> retry THROTTLED.
  * a sender that cannot be an SMPP source address -> retry AUTH_FAILED (fix the sender setting);
    a `to` that is not E.164 -> failed INVALID_ADDRESS; an empty text -> failed CONTENT_REJECTED.
  * the connection lost, or no submit_sm_resp within `timeout`, after the submit_sm was written ->
    retry PROVIDER_DOWN, maybe_sent=True (the SMSC may have queued it; a duplicate is possible).
  * a multipart message is submitted part by part; when part k > 1 is refused or unanswered, the
    first parts already went out: a retry outcome then carries maybe_sent=True, and the receipts of
    that send's parts are not reported.

Delivery receipts and inbound messages (`SmppProvider.events()`): SMPP has no HTTP callback. The
provider queues what the SMSC delivers on its bind, and the lead runs ONE long-lived consumer per
provider object, for as long as the object lives (the ProviderCache keeps it):

    async for item in provider.events():        # ends after aclose()
        if isinstance(item, DeliveryEvent):      # feedback.apply_events(conn, [item], ...)
            ...
        else:                                    # InboundMessage: STOP/HELP/START keywords
            ...

`events()` starts the bind too, so receipts flow even while nothing is sent. A deliver_sm is
acknowledged (deliver_sm_resp ROK) once its item is in the queue; when `event_buffer` items wait
unconsumed it is answered ESME_RMSGQFUL and the SMSC delivers it again later. An item is lost if
the process dies between the acknowledgement and the consumer storing it.
  * receipt (esm_class 0x04 or 0x20): the SMSC id from the receipted_message_id TLV, else "id:";
    the state from the message_state TLV, else "stat:". DELIVRD/ACCEPTD -> "delivered" (for a
    multipart message once ALL parts are); EXPIRED -> bounced EXPIRED; UNDELIV/FAILED -> bounced
    UNKNOWN (permanent); REJECTD -> rejected BLOCKED; DELETED -> rejected UNKNOWN (any failed part
    fails the message, reported once); UNKNOWN (and unrecognised states) -> deferred; ENROUTE ->
    nothing. occurred_at is "done date" read in `receipt_time_zone`; provider_code is "err:".
  * anything else with message type 0 is an inbound message (MO): text decoded by data_coding (0
    GSM-7, 1 ASCII, 3 Latin-1, 8 UCS-2), concatenated parts (UDH IEI 0x00/0x08 or the SAR TLVs)
    reassembled; sender "+digits" when TON is 1 (international). deliver_sm has no message id, so
    InboundMessage.provider_message_id is None.

Stored settings (kind "smpp"):
  config:  host (required), port (2775), system_id (required), system_type (""), source_addr
           (default sender when the message names none), source_ton / source_npi (override the
           automatic TON/NPI of the sender), window (10: submit_sm outstanding at once),
           max_per_second (none: submit_sm per second on the bind), timeout (30 s: wait for a
           response), connect_timeout (10 s: TCP connect + bind), enquire_link_interval (30 s),
           reconnect_min / reconnect_max (1 s / 60 s: backoff between bind attempts),
           receipt_time_zone ("UTC": the zone of the receipts' dates), receipt_id_format ("same", or
           "decimal" when the SMSC's receipts give the submit_sm_resp's hex id in decimal),
           event_buffer (10000), max_tracked (100000)
  secrets: password (the bind password, at most 8 characters; empty when the SMSC does not ask)
Not supported: TLS (SMPP over TLS), data_sm, outbind, several binds per provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import struct
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from herald.channels.config import only_known, optional, required
from herald.domain import sms as sms_text
from herald.domain.clock import Clock, SystemClock
from herald.domain.delivery import (
    Channel,
    DeliveryEvent,
    EventKind,
    FailureReason,
    InboundMessage,
    OutboundMessage,
    ProviderConfigError,
    SendResult,
    SmsContent,
    UnsupportedFeature,
)

__all__ = ["SmppProvider", "SmppSettings", "make_provider", "parse_receipt_text"]

KEY = "smpp"

# ---- PDUs -------------------------------------------------------------------------------------------

GENERIC_NACK: Final = 0x80000000
BIND_TRANSCEIVER: Final = 0x00000009
BIND_TRANSCEIVER_RESP: Final = 0x80000009
SUBMIT_SM: Final = 0x00000004
SUBMIT_SM_RESP: Final = 0x80000004
DELIVER_SM: Final = 0x00000005
DELIVER_SM_RESP: Final = 0x80000005
UNBIND: Final = 0x00000006
UNBIND_RESP: Final = 0x80000006
ENQUIRE_LINK: Final = 0x00000015
ENQUIRE_LINK_RESP: Final = 0x80000015
ALERT_NOTIFICATION: Final = 0x00000102
RESPONSE: Final = 0x80000000

HEADER: Final = struct.Struct(">IIII")
MAX_PDU: Final = 64 * 1024          # far above any PDU an SMSC sends an ESME
INTERFACE_VERSION: Final = 0x34

ESME_ROK: Final = 0x00
ESME_RINVCMDID: Final = 0x03
ESME_RMSGQFUL: Final = 0x14
ESME_RX_P_APPN: Final = 0x65

TLV_RECEIPTED_MESSAGE_ID: Final = 0x001E
TLV_SAR_MSG_REF_NUM: Final = 0x020C
TLV_SAR_TOTAL_SEGMENTS: Final = 0x020E
TLV_SAR_SEGMENT_SEQNUM: Final = 0x020F
TLV_NETWORK_ERROR_CODE: Final = 0x0423
TLV_MESSAGE_PAYLOAD: Final = 0x0424
TLV_MESSAGE_STATE: Final = 0x0427

ESM_UDHI: Final = 0x40
ESM_TYPE_MASK: Final = 0x3C
ESM_RECEIPT_TYPES: Final = frozenset({0x04, 0x20})   # SMSC delivery receipt, intermediate notification
REGISTERED_DELIVERY: Final = 0x01                      # a receipt for the final outcome, success or failure

R = FailureReason
# command_status of a refused submit_sm -> (outcome, reason, name)
SUBMIT_REFUSALS: Final[dict[int, tuple[Literal["retry", "failed"], FailureReason, str]]] = {
    0x58: ("retry", R.THROTTLED, "ESME_RTHROTTLED"),
    0x14: ("retry", R.THROTTLED, "ESME_RMSGQFUL"),
    0x08: ("retry", R.PROVIDER_DOWN, "ESME_RSYSERR"),
    0x04: ("retry", R.PROVIDER_DOWN, "ESME_RINVBNDSTS"),
    0x45: ("retry", R.TRANSIENT, "ESME_RSUBMITFAIL"),
    0x64: ("retry", R.TRANSIENT, "ESME_RX_T_APPN"),
    0x0A: ("retry", R.AUTH_FAILED, "ESME_RINVSRCADR"),
    0x48: ("retry", R.AUTH_FAILED, "ESME_RINVSRCTON"),
    0x49: ("retry", R.AUTH_FAILED, "ESME_RINVSRCNPI"),
    0x0B: ("failed", R.INVALID_ADDRESS, "ESME_RINVDSTADR"),
    0x50: ("failed", R.INVALID_ADDRESS, "ESME_RINVDSTTON"),
    0x51: ("failed", R.INVALID_ADDRESS, "ESME_RINVDSTNPI"),
    0x01: ("failed", R.CONTENT_REJECTED, "ESME_RINVMSGLEN"),
    0x43: ("failed", R.CONTENT_REJECTED, "ESME_RINVESMCLASS"),
    0x66: ("failed", R.CONTENT_REJECTED, "ESME_RX_R_APPN"),
    0xC0: ("failed", R.CONTENT_REJECTED, "ESME_RINVOPTPARSTREAM"),
    0xC1: ("failed", R.CONTENT_REJECTED, "ESME_ROPTPARNOTALLWD"),
    0xC2: ("failed", R.CONTENT_REJECTED, "ESME_RINVPARLEN"),
    0xC3: ("failed", R.CONTENT_REJECTED, "ESME_RMISSINGOPTPARAM"),
    0xC4: ("failed", R.CONTENT_REJECTED, "ESME_RINVOPTPARAMVAL"),
    0x104: ("failed", R.CONTENT_REJECTED, "ESME_RINVDCS"),
    0x101: ("failed", R.BLOCKED, "ESME_RPROHIBITED"),
    0x65: ("failed", R.UNKNOWN, "ESME_RX_P_APPN"),
}
# command_status of a refused bind -> reason, name
BIND_REFUSALS: Final[dict[int, tuple[FailureReason, str]]] = {
    0x0E: (R.AUTH_FAILED, "ESME_RINVPASWD"),
    0x0F: (R.AUTH_FAILED, "ESME_RINVSYSID"),
    0x0D: (R.AUTH_FAILED, "ESME_RBINDFAIL"),
    0x53: (R.AUTH_FAILED, "ESME_RINVSYSTYP"),
    0x05: (R.AUTH_FAILED, "ESME_RALYBND"),
    0x58: (R.THROTTLED, "ESME_RTHROTTLED"),
}


class PduError(Exception):
    """Bytes that are not the SMPP PDU they should be."""


def status_code(status: int) -> str:
    return f"0x{status:08X}"


def encode_pdu(command_id: int, sequence: int, body: bytes = b"", status: int = ESME_ROK) -> bytes:
    return HEADER.pack(HEADER.size + len(body), command_id, status, sequence) + body


def c_string(value: str, size: int, name: str, *, secret: bool = False) -> bytes:
    """A C-Octet String of at most `size` octets with its NUL (the spec's sizes include it).
    ValueError names the field (and, unless `secret`, the value)."""
    shown = "" if secret else f" {value!r}"
    if not value.isascii() or len(value) >= size or "\0" in value:
        raise ValueError(f"the SMPP {name}{shown} must be at most {size - 1} ASCII characters")
    return value.encode("ascii") + b"\0"


def bind_transceiver_body(system_id: str, password: str, system_type: str) -> bytes:
    return (c_string(system_id, 16, "system_id") + c_string(password, 9, "password", secret=True)
            + c_string(system_type, 13, "system_type") + bytes((INTERFACE_VERSION, 0, 0)) + b"\0")


@dataclass(frozen=True, slots=True)
class Address:
    ton: int
    npi: int
    digits: str   # the address as sent (no "+")


def submit_sm_body(source: Address, destination: Address, esm_class: int, data_coding: int,
                   short_message: bytes) -> bytes:
    """submit_sm (4.4.1): default service_type, immediate delivery, the SMSC's validity period,
    a receipt for the final outcome."""
    if len(short_message) > 254:
        raise ValueError("short_message is at most 254 octets")
    return b"".join((
        b"\0",
        bytes((source.ton, source.npi)), c_string(source.digits, 21, "source_addr"),
        bytes((destination.ton, destination.npi)), c_string(destination.digits, 21, "destination_addr"),
        bytes((esm_class, 0, 0)),          # esm_class, protocol_id, priority_flag
        b"\0\0",                           # schedule_delivery_time, validity_period
        bytes((REGISTERED_DELIVERY, 0, data_coding, 0, len(short_message))),
        short_message,
    ))


class _Cursor:
    """Reads a PDU body field by field; PduError when it runs out or a string has no NUL."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def octet(self) -> int:
        if self.at >= len(self.data):
            raise PduError("PDU body ends early")
        self.at += 1
        return self.data[self.at - 1]

    def take(self, size: int) -> bytes:
        if self.at + size > len(self.data):
            raise PduError("PDU body ends early")
        self.at += size
        return self.data[self.at - size:self.at]

    def c_string(self, size: int) -> str:
        end = self.data.find(b"\0", self.at, self.at + size)
        if end < 0:
            raise PduError(f"a C-Octet String longer than {size - 1} octets")
        value = self.data[self.at:end].decode("latin-1")
        self.at = end + 1
        return value

    def tlvs(self) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        while self.at < len(self.data):
            tag, length = struct.unpack(">HH", self.take(4))
            found.setdefault(tag, self.take(length))
        return found


@dataclass(frozen=True, slots=True)
class DeliverSm:
    """The fields of a deliver_sm (4.6.1) an ESME acts on."""

    source: Address
    destination: Address
    esm_class: int
    data_coding: int
    short_message: bytes
    tlvs: Mapping[int, bytes] = field(default_factory=dict)


def parse_deliver_sm(body: bytes) -> DeliverSm:
    cursor = _Cursor(body)
    cursor.c_string(6)                                          # service_type
    source = Address(cursor.octet(), cursor.octet(), cursor.c_string(21))
    destination = Address(cursor.octet(), cursor.octet(), cursor.c_string(21))
    esm_class = cursor.octet()
    cursor.take(2)                                              # protocol_id, priority_flag
    cursor.c_string(17)                                         # schedule_delivery_time
    cursor.c_string(17)                                         # validity_period
    cursor.take(2)                                              # registered_delivery, replace_if_present
    data_coding = cursor.octet()
    cursor.octet()                                              # sm_default_msg_id
    short_message = cursor.take(cursor.octet())
    return DeliverSm(source, destination, esm_class, data_coding, short_message, cursor.tlvs())


def message_id_of(body: bytes) -> str:
    """The message_id C-Octet String of a submit_sm_resp ("" when the SMSC left the body out)."""
    end = body.find(b"\0")
    return body[: end if end >= 0 else len(body)].decode("latin-1").strip()


async def read_pdu(reader: asyncio.StreamReader) -> tuple[int, int, int, bytes]:
    """(command_id, command_status, sequence_number, body) of the next PDU on the stream."""
    length, command_id, status, sequence = HEADER.unpack(await reader.readexactly(HEADER.size))
    if not HEADER.size <= length <= MAX_PDU:
        raise PduError(f"command_length {length} is not an SMPP PDU's")
    return command_id, status, sequence, await reader.readexactly(length - HEADER.size)


# ---- addresses and text ---------------------------------------------------------------------------

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_DIGITS = re.compile(r"[0-9]+")
_ALPHANUMERIC_SENDER = re.compile(r"[A-Za-z0-9 ._&'-]{1,11}")


def destination_address(to: str) -> Address:
    """An E.164 number as SMPP wants it: digits, TON 1 (international), NPI 1 (ISDN/E.164)."""
    if not _E164.fullmatch(to):
        raise ValueError(f"{to!r} is not an E.164 phone number (+ and 2 to 15 digits)")
    return Address(1, 1, to[1:])


def source_address(sender: str, ton: int | None = None, npi: int | None = None) -> Address:
    """The sender's TON/NPI by its form (Infobip's defaults), unless the settings override them:
    "+digits" 1/1, a short code (3 to 8 digits) 3/0, other digits 1/1, alphanumeric (<= 11) 5/0."""
    if sender.startswith("+"):
        address = destination_address(sender)
    elif _DIGITS.fullmatch(sender):
        address = Address(3, 0, sender) if len(sender) <= 8 else Address(1, 1, sender)
        c_string(sender, 21, "source_addr")
    elif not sender:
        address = Address(0, 0, "")          # the SMSC fills in the account's default sender
    elif _ALPHANUMERIC_SENDER.fullmatch(sender) and sender.isascii():
        address = Address(5, 0, sender)
    else:
        raise ValueError(f"sender {sender!r} is neither a phone number, a short code nor an alphanumeric "
                         "sender id of at most 11 letters and digits")
    return Address(address.ton if ton is None else ton, address.npi if npi is None else npi, address.digits)


@dataclass(frozen=True, slots=True)
class Part:
    esm_class: int
    data_coding: int
    short_message: bytes


def encode_parts(text: str, reference: int) -> list[Part]:
    """The submit_sm payloads of a text: one message when it fits, else parts cut by
    domain.sms.split, each behind a concatenation UDH (IEI 0x00, `reference` mod 256)."""
    if not text:
        raise ValueError("the SMS text is empty")
    pieces = sms_text.split(text)
    if len(pieces) > 255:
        raise ValueError(f"the text needs {len(pieces)} parts; a concatenated SMS has at most 255")
    gsm7 = sms_text.encoding_of(text) == "GSM-7"
    data_coding = 0x00 if gsm7 else 0x08
    payloads = [sms_text.gsm7_septets(piece) if gsm7 else piece.encode("utf-16-be") for piece in pieces]
    if len(payloads) == 1:
        return [Part(0x00, data_coding, payloads[0])]
    total = len(payloads)
    return [Part(ESM_UDHI, data_coding, bytes((0x05, 0x00, 0x03, reference % 256, total, seq)) + payload)
            for seq, payload in enumerate(payloads, start=1)]


_GSM7_DECODE: Final[dict[int, str]] = {code: char for char, code in sms_text.BASIC.items()}
_GSM7_EXTENSION_DECODE: Final[dict[int, str]] = {code: char for char, code in sms_text.EXTENSION.items()}


def decode_gsm7(septets: bytes) -> str:
    """Unpacked GSM 7-bit (one septet per octet). An SMSC sending octets above 0x7F with data_coding
    0 means Latin-1 (a common SMSC setting), so such a text is read as Latin-1."""
    if any(octet > 0x7F for octet in septets):
        return septets.decode("latin-1")
    out: list[str] = []
    escaped = False
    for octet in septets:
        if escaped:
            # TS 23.038 6.2.1.1: an undefined extension code shows the default-alphabet character
            out.append(_GSM7_EXTENSION_DECODE.get(octet) or _GSM7_DECODE.get(octet, " "))
            escaped = False
        elif octet == sms_text.ESCAPE:
            escaped = True
        else:
            out.append(_GSM7_DECODE[octet])
    return "".join(out)


def decode_text(data_coding: int, payload: bytes) -> str:
    """The text of an inbound short message by its data_coding (5.2.19)."""
    if data_coding == 0x08:
        return payload.decode("utf-16-be", "replace")
    if data_coding == 0x01:
        return payload.decode("ascii", "replace")
    if data_coding == 0x00 or 0xF0 <= data_coding <= 0xF3:
        return decode_gsm7(payload)
    return payload.decode("latin-1")


# ---- delivery receipts ----------------------------------------------------------------------------

_RECEIPT_FIELD = re.compile(r"(?<![a-z])(id|sub|dlvrd|submit date|done date|stat|err|text):", re.IGNORECASE)
MESSAGE_STATES: Final = {1: "ENROUTE", 2: "DELIVRD", 3: "EXPIRED", 4: "DELETED", 5: "UNDELIV", 6: "ACCEPTD",
                         7: "UNKNOWN", 8: "REJECTD"}
# receipt state -> (event kind, reason, permanent); None: no event (still under way)
RECEIPT_OUTCOMES: Final[dict[str, tuple[EventKind, FailureReason | None, bool | None] | None]] = {
    "DELIVRD": ("delivered", None, None),
    "ACCEPTD": ("delivered", None, None),   # read on the subscriber's behalf by customer service
    "EXPIRED": ("bounced", R.EXPIRED, True),
    "UNDELIV": ("bounced", R.UNKNOWN, True),
    "FAILED": ("bounced", R.UNKNOWN, True),
    "REJECTD": ("rejected", R.BLOCKED, True),
    "DELETED": ("rejected", R.UNKNOWN, True),
    "ENROUTE": None,
}
UNRECOGNISED_STATE: Final[tuple[EventKind, FailureReason, bool]] = ("deferred", R.UNKNOWN, False)


def parse_receipt_text(text: str) -> dict[str, str]:
    """The "key:value" fields of a receipt's text (Appendix B), keys lower-cased; "text" runs to
    the end (it quotes the message, which may itself contain "id:")."""
    fields: dict[str, str] = {}
    matches = list(_RECEIPT_FIELD.finditer(text))
    for index, match in enumerate(matches):
        name = match.group(1).lower()
        if name == "text":
            fields.setdefault(name, text[match.end():].strip())
            break
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        fields.setdefault(name, text[match.end():end].strip())
    return fields


@dataclass(frozen=True, slots=True)
class Receipt:
    smsc_message_id: str
    state: str
    error: str | None
    done_at: datetime | None
    recipient: str
    fields: Mapping[str, str]


def read_receipt(deliver: DeliverSm, zone: ZoneInfo) -> Receipt | None:
    """The receipt a deliver_sm carries (TLVs first, then the text); None without a message id."""
    # Receipt texts are ASCII whatever the data_coding says (reading them as GSM-7 would turn "_" into "§").
    text = (deliver.short_message or deliver.tlvs.get(TLV_MESSAGE_PAYLOAD, b"")).decode("latin-1")
    fields = parse_receipt_text(text)
    tlv_id = deliver.tlvs.get(TLV_RECEIPTED_MESSAGE_ID, b"").split(b"\0")[0].decode("latin-1").strip()
    smsc_id = tlv_id or fields.get("id", "")
    if not smsc_id:
        return None
    state_tlv = deliver.tlvs.get(TLV_MESSAGE_STATE, b"")
    state = MESSAGE_STATES.get(state_tlv[0], "") if len(state_tlv) == 1 else ""
    state = state or fields.get("stat", "").upper()
    error = fields.get("err") or _network_error(deliver.tlvs.get(TLV_NETWORK_ERROR_CODE))
    return Receipt(smsc_id, state, error, _receipt_time(fields.get("done date"), zone),
                   international(deliver.source), {k: v for k, v in fields.items() if k != "text"})


def _network_error(value: bytes | None) -> str | None:
    """network_error_code (5.3.2.31): network type octet + 2-octet error code."""
    if value is None or len(value) != 3:
        return None
    return f"{value[0]}:{int.from_bytes(value[1:], 'big')}"


def _receipt_time(value: str | None, zone: ZoneInfo) -> datetime | None:
    """YYMMDDhhmm (Appendix B) or YYMMDDhhmmss (common), in the SMSC's zone, as UTC."""
    if not value or not _DIGITS.fullmatch(value) or len(value) not in (10, 12):
        return None
    try:
        local = datetime.strptime(value, "%y%m%d%H%M%S" if len(value) == 12 else "%y%m%d%H%M")
    except ValueError:
        return None
    return local.replace(tzinfo=zone).astimezone(UTC)


def international(address: Address) -> str:
    """"+digits" for an international (TON 1) number; the address as sent otherwise."""
    if address.ton == 1 and _DIGITS.fullmatch(address.digits):
        return "+" + address.digits
    return address.digits


@dataclass(eq=False, slots=True)
class _Tracked:
    """One send of one of our messages: its parts' SMSC ids and which parts are delivered."""

    message_id: str
    total: int
    part_ids: list[str | None]
    delivered: set[int] = field(default_factory=set)
    done: bool = False

    @property
    def first_id(self) -> str | None:
        return self.part_ids[0] or None


class ReceiptTracker:
    """SMSC message id -> (our message, part); bounded, the oldest forgotten first. Turns part
    receipts into one event per message: delivered when every part is, failed when any part fails.
    A message stays known after its outcome (until it is the oldest beyond `capacity`), so a
    repeated receipt, or one for a part of an abandoned send, reports nothing."""

    def __init__(self, capacity: int, id_format: Literal["same", "decimal"] = "same") -> None:
        self.capacity = capacity
        self.id_format = id_format
        self._parts: OrderedDict[str, tuple[_Tracked, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._parts)

    @staticmethod
    def _key(smsc_id: str) -> str:
        return smsc_id.strip().lower().lstrip("0") or "0"

    def _receipt_key(self, smsc_id: str) -> str:
        if self.id_format == "decimal" and _DIGITS.fullmatch(smsc_id.strip()):
            return self._key(format(int(smsc_id), "x"))
        return self._key(smsc_id)

    def expect(self, tracked: _Tracked, index: int, smsc_id: str) -> None:
        tracked.part_ids[index] = smsc_id
        if not smsc_id:
            return
        self._parts[self._key(smsc_id)] = (tracked, index)
        while len(self._parts) > self.capacity:
            self._parts.popitem(last=False)

    @staticmethod
    def abandon(tracked: _Tracked) -> None:
        """The send failed part-way: its parts' receipts are not reported."""
        tracked.done = True

    def event(self, receipt: Receipt) -> DeliveryEvent | None:
        """The event a receipt means for our message (None: nothing to report yet)."""
        outcome = RECEIPT_OUTCOMES.get(receipt.state, UNRECOGNISED_STATE)
        if outcome is None:
            return None
        kind, reason, permanent = outcome
        hit = self._parts.get(self._receipt_key(receipt.smsc_message_id))
        if hit is None:
            return _receipt_event(receipt, kind, reason, permanent, None, None)
        tracked, index = hit
        if tracked.done:
            return None
        if kind == "delivered":
            tracked.delivered.add(index)
            if len(tracked.delivered) < tracked.total:
                return None
        if kind != "deferred":
            tracked.done = True
        return _receipt_event(receipt, kind, reason, permanent, tracked, index)


def _receipt_event(receipt: Receipt, kind: EventKind, reason: FailureReason | None, permanent: bool | None,
                   tracked: _Tracked | None, index: int | None) -> DeliveryEvent:
    raw: dict[str, Any] = {"smsc_message_id": receipt.smsc_message_id, "state": receipt.state, **receipt.fields}
    if tracked is not None and index is not None:
        raw.update(part=index + 1, parts=tracked.total)
    detail = f"stat:{receipt.state or '?'} err:{receipt.error or '-'}"
    if tracked is not None and tracked.total > 1 and kind != "delivered":
        detail += f" (part {(index or 0) + 1} of {tracked.total})"
    return DeliveryEvent(
        kind, KEY, receipt.done_at,
        message_id=tracked.message_id if tracked else None,
        provider_message_id=(tracked.first_id if tracked else None) or receipt.smsc_message_id,
        recipient=receipt.recipient or None, reason=reason, permanent=permanent,
        provider_code=receipt.error, detail=detail, raw=raw)


# ---- inbound messages -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Concatenation:
    reference: int
    total: int
    seq: int


def split_udh(payload: bytes) -> tuple[Concatenation | None, bytes]:
    """The concatenation element of a User Data Header (IEI 0x00 8-bit or 0x08 16-bit reference)
    and the payload after the header."""
    if not payload:
        return None, payload
    header_end = 1 + payload[0]
    header, rest = payload[1:header_end], payload[header_end:]
    found: Concatenation | None = None
    at = 0
    while at + 2 <= len(header):
        iei, length = header[at], header[at + 1]
        data = header[at + 2:at + 2 + length]
        if iei == 0x00 and length == 3 and len(data) == 3:
            found = Concatenation(data[0], data[1], data[2])
        elif iei == 0x08 and length == 4 and len(data) == 4:
            found = Concatenation(int.from_bytes(data[:2], "big"), data[2], data[3])
        at += 2 + length
    return found, rest


def _sar(tlvs: Mapping[int, bytes]) -> Concatenation | None:
    ref, total, seq = (tlvs.get(t) for t in (TLV_SAR_MSG_REF_NUM, TLV_SAR_TOTAL_SEGMENTS, TLV_SAR_SEGMENT_SEQNUM))
    if ref is None or total is None or seq is None or len(total) != 1 or len(seq) != 1:
        return None
    return Concatenation(int.from_bytes(ref, "big"), total[0], seq[0])


class Reassembly:
    """Parts of concatenated inbound messages until each message is whole; bounded (`capacity`
    unfinished messages, the oldest dropped first)."""

    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self._waiting: OrderedDict[tuple[str, str, int, int], dict[int, str]] = OrderedDict()

    def add(self, sender: str, recipient: str, concat: Concatenation, text: str) -> tuple[str, int] | None:
        """The whole text and its part count once the last part arrived, else None. A part whose
        numbers make no sense (seq 0 or above total) is taken as a message of its own."""
        if concat.total <= 1 or not 1 <= concat.seq <= concat.total:
            return text, 1
        key = (sender, recipient, concat.reference, concat.total)
        parts = self._waiting.setdefault(key, {})
        parts[concat.seq] = text
        if len(parts) < concat.total:
            while len(self._waiting) > self.capacity:
                self._waiting.popitem(last=False)
            return None
        del self._waiting[key]
        return "".join(parts[seq] for seq in sorted(parts)), concat.total


def inbound_text(deliver: DeliverSm) -> tuple[Concatenation | None, str]:
    payload = deliver.short_message or deliver.tlvs.get(TLV_MESSAGE_PAYLOAD, b"")
    concat: Concatenation | None = None
    if deliver.esm_class & ESM_UDHI:
        concat, payload = split_udh(payload)
    return concat or _sar(deliver.tlvs), decode_text(deliver.data_coding, payload)


# ---- settings -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SmppSettings:
    """Where and how to bind (see the module docstring for each setting)."""

    host: str
    system_id: str
    password: str = field(default="", repr=False)
    port: int = 2775
    system_type: str = ""
    source_addr: str | None = None
    source_ton: int | None = None
    source_npi: int | None = None
    window: int = 10
    max_per_second: float | None = None
    timeout: float = 30.0
    connect_timeout: float = 10.0
    enquire_link_interval: float = 30.0
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    receipt_time_zone: str = "UTC"
    receipt_id_format: Literal["same", "decimal"] = "same"
    event_buffer: int = 10_000
    max_tracked: int = 100_000

    def __post_init__(self) -> None:
        try:
            bind_transceiver_body(self.system_id, self.password, self.system_type)
            if self.source_addr is not None:
                source_address(self.source_addr, self.source_ton, self.source_npi)
        except ValueError as exc:
            raise ProviderConfigError(f"smpp: {exc}") from None
        if not 0 < self.port < 65536:
            raise ProviderConfigError(f"smpp: port {self.port} is not a TCP port")
        for name in ("window", "event_buffer", "max_tracked"):
            if getattr(self, name) < 1:
                raise ProviderConfigError(f"smpp: {name} must be at least 1")
        for name in ("timeout", "connect_timeout", "enquire_link_interval", "reconnect_min", "reconnect_max"):
            if getattr(self, name) <= 0:
                raise ProviderConfigError(f"smpp: {name} must be a positive number of seconds")
        if self.max_per_second is not None and self.max_per_second <= 0:
            raise ProviderConfigError("smpp: max_per_second must be positive (leave it out for no limit)")
        if self.reconnect_max < self.reconnect_min:
            raise ProviderConfigError("smpp: reconnect_max must not be below reconnect_min")
        for name in ("source_ton", "source_npi"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 255:
                raise ProviderConfigError(f"smpp: {name} must be an octet (0 to 255)")
        if self.receipt_id_format not in ("same", "decimal"):
            raise ProviderConfigError("smpp: receipt_id_format must be 'same' or 'decimal'")
        try:
            ZoneInfo(self.receipt_time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ProviderConfigError(f"smpp: receipt_time_zone {self.receipt_time_zone!r} is not an IANA "
                                      "time zone") from None


_INT_SETTINGS: Final = ("port", "window", "event_buffer", "max_tracked", "source_ton", "source_npi")
_FLOAT_SETTINGS: Final = ("max_per_second", "timeout", "connect_timeout", "enquire_link_interval",
                          "reconnect_min", "reconnect_max")
_STR_SETTINGS: Final = ("system_type", "source_addr", "receipt_time_zone", "receipt_id_format")


def make_provider(config: Mapping[str, Any], secrets: Mapping[str, str]) -> SmppProvider:
    """The provider for stored settings; ProviderConfigError names the setting to fix. Opens no
    connection (the bind starts with the first send or `events()`)."""
    only_known(config, {"host", "system_id", *_INT_SETTINGS, *_FLOAT_SETTINGS, *_STR_SETTINGS}, KEY)
    only_known(secrets, {"password"}, KEY)
    values: dict[str, Any] = {"host": required(config, "host", KEY), "system_id": required(config, "system_id", KEY),
                              "password": secrets.get("password") or ""}
    for name in _INT_SETTINGS:
        if config.get(name) is not None:
            values[name] = _number(config[name], name, int)
    for name in _FLOAT_SETTINGS:
        if config.get(name) is not None:
            values[name] = _number(config[name], name, float)
    for name in _STR_SETTINGS:
        value = optional(config, name, KEY)
        if value is not None:
            values[name] = value
    return SmppProvider(SmppSettings(**values))


def _number(value: Any, name: str, kind: type[int] | type[float]) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
        raise ProviderConfigError(f"smpp: {name} must be {'a whole number' if kind is int else 'a number'}, "
                                  f"not {value!r}")
    return kind(value)


# ---- the session ----------------------------------------------------------------------------------

class NotSent(Exception):
    """The request was not written: nothing reached the SMSC."""


class NoAnswer(Exception):
    """The request was written but no response came (connection lost, or none within the timeout)."""


OnResponse = Callable[[int, int, bytes], None]


@dataclass(eq=False, slots=True)
class _Pending:
    future: asyncio.Future[tuple[int, int, bytes]]
    on_response: OnResponse | None


class Session:
    """One bound SMPP connection: requests matched to responses by sequence number, the SMSC's
    requests handed to `on_request` (which answers them), an enquire_link every `keepalive`
    seconds (no answer within `answer_within` seconds closes the session)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_request: Callable[[Session, int, int, bytes], None], last_sequence: int = 0) -> None:
        self._reader = reader
        self._writer = writer
        self._on_request = on_request
        self._pending: dict[int, _Pending] = {}
        self._sequence = last_sequence
        self._tasks: list[asyncio.Task[None]] = []
        self.closed = asyncio.Event()
        self.close_reason = ""

    @property
    def is_closed(self) -> bool:
        return self.closed.is_set()

    def next_sequence(self) -> int:
        self._sequence = self._sequence % 0x7FFFFFFF + 1
        return self._sequence

    def start(self, keepalive: float, answer_within: float) -> None:
        self._tasks = [asyncio.create_task(self._read_loop()),
                       asyncio.create_task(self._keepalive(keepalive, answer_within))]

    async def request(self, command_id: int, body: bytes, answer_within: float,
                      on_response: OnResponse | None = None) -> tuple[int, int, bytes]:
        """Write a request and wait for its response: (command_id, command_status, body). A
        generic_nack is a response too. `on_response` runs in the reader as the response is read,
        before anything read after it (a receipt can follow its submit_sm_resp at once)."""
        if self.is_closed:
            raise NotSent(f"the connection to the SMSC is closed ({self.close_reason})")
        sequence = self.next_sequence()
        future: asyncio.Future[tuple[int, int, bytes]] = asyncio.get_running_loop().create_future()
        self._pending[sequence] = _Pending(future, on_response)
        try:
            self._writer.write(encode_pdu(command_id, sequence, body))
            await self._writer.drain()
            return await asyncio.wait_for(future, answer_within)
        except TimeoutError:
            raise NoAnswer(f"no response within {answer_within:g} s") from None
        except (ConnectionError, OSError) as exc:
            self.lose(f"writing failed: {exc}")
            raise NoAnswer(f"the connection failed while writing ({exc})") from None
        finally:
            self._pending.pop(sequence, None)

    def respond(self, command_id: int, sequence: int, body: bytes = b"", status: int = ESME_ROK) -> None:
        if not self.is_closed:
            self._writer.write(encode_pdu(command_id, sequence, body, status))

    def lose(self, reason: str, *, flush: bool = False) -> None:
        """Close the connection (after writing what is buffered when `flush`); every request still
        waiting gets NoAnswer."""
        if self.is_closed:
            return
        self.close_reason = reason
        self.closed.set()
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(NoAnswer(f"the connection to the SMSC was lost ({reason})"))
        if not flush:
            self._writer.transport.abort()
        self._writer.close()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    async def wait_closed(self) -> None:
        await self.closed.wait()
        if self._tasks:
            await asyncio.wait(self._tasks)
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    async def _read_loop(self) -> None:
        try:
            while True:
                command_id, status, sequence, body = await read_pdu(self._reader)
                if command_id & RESPONSE:
                    self._resolve(command_id, status, sequence, body)
                else:
                    self._on_request(self, command_id, sequence, body)
        except asyncio.IncompleteReadError:
            self.lose("the SMSC closed the connection")
        except (ConnectionError, OSError, PduError) as exc:
            self.lose(f"{type(exc).__name__}: {exc}")
        finally:
            self.lose("the reader stopped")   # a bug in a handler: the session must not look alive

    def _resolve(self, command_id: int, status: int, sequence: int, body: bytes) -> None:
        pending = self._pending.pop(sequence, None)
        if pending is None or pending.future.done():
            return   # answered after we stopped waiting (timeout), or an unsolicited generic_nack
        if pending.on_response is not None:
            pending.on_response(command_id, status, body)
        pending.future.set_result((command_id, status, body))

    async def _keepalive(self, interval: float, answer_within: float) -> None:
        while not self.is_closed:
            await asyncio.sleep(interval)
            try:
                await self.request(ENQUIRE_LINK, b"", answer_within)
            except (NotSent, NoAnswer) as exc:
                self.lose(f"enquire_link unanswered: {exc}")
                return


class BindRefused(Exception):
    def __init__(self, status: int) -> None:
        self.status = status
        reason, name = BIND_REFUSALS.get(status, (R.PROVIDER_DOWN, "refused"))
        self.reason = reason
        super().__init__(f"the SMSC refused the bind: {name} ({status_code(status)})"
                         + (": check system_id, password and system_type" if reason is R.AUTH_FAILED else ""))


async def open_session(settings: SmppSettings, on_request: Callable[[Session, int, int, bytes], None]) -> Session:
    """Connect and bind_transceiver; BindRefused, OSError or TimeoutError when it does not work."""
    reader, writer = await asyncio.open_connection(settings.host, settings.port)
    try:
        body = bind_transceiver_body(settings.system_id, settings.password, settings.system_type)
        writer.write(encode_pdu(BIND_TRANSCEIVER, 1, body))
        await writer.drain()
        while True:
            command_id, status, sequence, _body = await read_pdu(reader)
            if command_id in (BIND_TRANSCEIVER_RESP, GENERIC_NACK) and sequence == 1:
                break
        if status != ESME_ROK:
            raise BindRefused(status)
    except BaseException:
        writer.transport.abort()
        writer.close()
        raise
    return Session(reader, writer, on_request, last_sequence=1)


# ---- the provider ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Down:
    """Why there is no bound session right now."""

    reason: FailureReason
    detail: str
    provider_code: str | None = None


class Pacer:
    """Spaces submit_sm `1 / rate` seconds apart: the delay before the next one, given the time."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next = float("-inf")

    def delay(self, now: float) -> float:
        slot = max(now, self._next)
        self._next = slot + self.interval
        return slot - now


_CLOSED: Final = object()


class SmppProvider:
    """One transceiver bind per provider object, kept up by a supervisor task (reconnecting with
    backoff), shared by every send; receipts and inbound messages come out of `events()`."""

    key = KEY
    channel: Channel = "sms"

    def __init__(self, settings: SmppSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self._clock = clock or SystemClock()
        self._zone = ZoneInfo(settings.receipt_time_zone)
        self._tracker = ReceiptTracker(settings.max_tracked, settings.receipt_id_format)
        self._reassembly = Reassembly()
        self._pacer = Pacer(settings.max_per_second) if settings.max_per_second else None
        self._reference = random.randrange(256)
        self._window = asyncio.Semaphore(settings.window)
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._session: Session | None = None
        self._down: Down | None = None
        self._changed = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._closed = False
        self.binds = 0          # successful binds so far (reconnects show here)

    # -- sending

    async def send(self, message: OutboundMessage) -> SendResult:
        sms = _sms_of(message)
        try:
            destination = destination_address(message.to)
        except ValueError as exc:
            return SendResult.failed(message.id, R.INVALID_ADDRESS, str(exc))
        try:
            source = source_address(sms.sender or self.settings.source_addr or "", self.settings.source_ton,
                                    self.settings.source_npi)
        except ValueError as exc:
            return SendResult.retry(message.id, R.AUTH_FAILED, str(exc))
        try:
            parts = encode_parts(sms.text, self._reference)
        except ValueError as exc:
            return SendResult.failed(message.id, R.CONTENT_REJECTED, str(exc))
        if len(parts) > 1:
            self._reference = (self._reference + 1) % 256
        session = await self._bound_session()
        if isinstance(session, Down):
            return SendResult.retry(message.id, session.reason, session.detail, provider_code=session.provider_code)
        return await self._send_parts(session, message.id, source, destination, parts)

    async def _send_parts(self, session: Session, message_id: str, source: Address, destination: Address,
                          parts: list[Part]) -> SendResult:
        tracked = _Tracked(message_id, len(parts), [None] * len(parts))
        for index, part in enumerate(parts):
            body = submit_sm_body(source, destination, part.esm_class, part.data_coding, part.short_message)
            try:
                command_id, status, _body = await self._submit(session, body, partial(self._accepted, tracked, index))
            except (NotSent, NoAnswer) as exc:
                self._tracker.abandon(tracked)
                written = isinstance(exc, NoAnswer) or index > 0
                return SendResult.retry(message_id, R.PROVIDER_DOWN, _part_detail(str(exc), index, len(parts)),
                                        maybe_sent=written)
            if status != ESME_ROK or command_id != SUBMIT_SM_RESP:
                self._tracker.abandon(tracked)
                return _refusal(message_id, status, index, len(parts))
        detail = f"{len(parts)} parts" if len(parts) > 1 else ""
        return SendResult.accepted(message_id, tracked.first_id, detail=detail)

    def _accepted(self, tracked: _Tracked, index: int, command_id: int, status: int, body: bytes) -> None:
        if command_id == SUBMIT_SM_RESP and status == ESME_ROK:
            self._tracker.expect(tracked, index, message_id_of(body))

    async def _submit(self, session: Session, body: bytes, on_response: OnResponse) -> tuple[int, int, bytes]:
        if self._pacer is not None:
            wait = self._pacer.delay(asyncio.get_running_loop().time())
            if wait > 0:
                await asyncio.sleep(wait)
        async with self._window:
            return await session.request(SUBMIT_SM, body, self.settings.timeout, on_response)

    async def _bound_session(self) -> Session | Down:
        """The bound session; if there is none, wait (at most connect_timeout) for the supervisor's
        next attempt. A refused bind answers at once: waiting will not fix the credentials."""
        if self._closed:
            return Down(R.PROVIDER_DOWN, "the SMPP provider is closed")
        self._start()
        if self._session is not None and not self._session.is_closed:
            return self._session
        if self._down is not None and self._down.reason is R.AUTH_FAILED:
            return self._down
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), self.settings.connect_timeout + 1.0)
        if self._closed:
            return Down(R.PROVIDER_DOWN, "the SMPP provider is closed")
        if self._session is not None and not self._session.is_closed:
            return self._session
        return self._down or Down(R.PROVIDER_DOWN, f"not bound to the SMSC {self.settings.host}:"
                                                   f"{self.settings.port} within {self.settings.connect_timeout:g} s")

    # -- the bind

    def _start(self) -> None:
        if self._supervisor is None and not self._closed:
            self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    def _state_changed(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _supervise(self) -> None:
        delay = self.settings.reconnect_min
        while not self._closed:
            try:
                async with asyncio.timeout(self.settings.connect_timeout):
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow aclose()'s cancel
                    # when the bind completes at the same moment, leaving a bound session no one closes
                    session = await open_session(self.settings, self._on_request)
            except BindRefused as exc:
                self._down = Down(exc.reason, str(exc), status_code(exc.status))
            except (OSError, TimeoutError, asyncio.IncompleteReadError, PduError) as exc:
                self._down = Down(R.PROVIDER_DOWN, f"cannot bind to the SMSC {self.settings.host}:"
                                                   f"{self.settings.port}: {type(exc).__name__}: {exc}")
            else:
                delay = self.settings.reconnect_min
                await self._serve(session)
            self._state_changed()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.settings.reconnect_max)

    async def _serve(self, session: Session) -> None:
        if self._closed:  # aclose() ran while the bind was being answered
            session.lose("closed", flush=True)
            await session.wait_closed()
            return
        session.start(self.settings.enquire_link_interval, self.settings.timeout)
        self._session, self._down = session, None
        self.binds += 1
        self._state_changed()
        try:
            await session.wait_closed()
        finally:
            self._session = None
            self._down = Down(R.PROVIDER_DOWN, f"the SMSC connection dropped: {session.close_reason}")

    # -- what the SMSC sends us

    def _on_request(self, session: Session, command_id: int, sequence: int, body: bytes) -> None:
        if command_id == DELIVER_SM:
            session.respond(DELIVER_SM_RESP, sequence, b"\0", self._deliver(body))
        elif command_id == ENQUIRE_LINK:
            session.respond(ENQUIRE_LINK_RESP, sequence)
        elif command_id == UNBIND:
            session.respond(UNBIND_RESP, sequence)
            session.lose("the SMSC unbound", flush=True)
        elif command_id != ALERT_NOTIFICATION:   # alert_notification has no response
            session.respond(GENERIC_NACK, sequence, status=ESME_RINVCMDID)

    def _deliver(self, body: bytes) -> int:
        """Queue what a deliver_sm says; its deliver_sm_resp status."""
        if self._queue.qsize() >= self.settings.event_buffer:
            return ESME_RMSGQFUL
        try:
            deliver = parse_deliver_sm(body)
        except PduError:
            return ESME_RX_P_APPN
        item: DeliveryEvent | InboundMessage | None
        message_type = deliver.esm_class & ESM_TYPE_MASK
        if message_type in ESM_RECEIPT_TYPES:
            receipt = read_receipt(deliver, self._zone)
            item = self._tracker.event(receipt) if receipt is not None else None
        elif message_type == 0:
            item = self._inbound(deliver)
        else:
            item = None   # an SME acknowledgement: nothing we act on
        if item is not None:
            self._queue.put_nowait(item)
        return ESME_ROK

    def _inbound(self, deliver: DeliverSm) -> InboundMessage | None:
        concat, text = inbound_text(deliver)
        sender = international(deliver.source)
        recipient = international(deliver.destination)
        whole = self._reassembly.add(sender, recipient, concat, text) if concat else (text, 1)
        if whole is None:
            return None
        raw = {"data_coding": deliver.data_coding, "esm_class": deliver.esm_class,
               "source_addr_ton": deliver.source.ton, "source_addr_npi": deliver.source.npi, "parts": whole[1]}
        return InboundMessage("sms", KEY, sender, recipient or None, whole[0], None, self._clock.now(), raw)

    async def events(self) -> AsyncIterator[DeliveryEvent | InboundMessage]:
        """Receipts (as DeliveryEvents for our messages) and inbound messages, in arrival order,
        until `aclose()`. One consumer per provider object."""
        self._start()
        while True:
            item = await self._queue.get()
            if item is _CLOSED:
                return
            assert isinstance(item, DeliveryEvent | InboundMessage)
            yield item

    async def aclose(self) -> None:
        """Unbind (waiting at most `timeout` for unbind_resp), stop reconnecting, end `events()`."""
        if self._closed:
            return
        self._closed = True
        session = self._session
        if session is not None and not session.is_closed:
            with contextlib.suppress(NotSent, NoAnswer):
                await session.request(UNBIND, b"", min(self.settings.timeout, 5.0))
            session.lose("unbound", flush=True)
            await session.wait_closed()
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.wait([self._supervisor])
        self._state_changed()            # a send waiting for a bind answers now
        self._queue.put_nowait(_CLOSED)


def _sms_of(message: OutboundMessage) -> SmsContent:
    if message.channel != "sms" or message.sms is None:
        raise UnsupportedFeature(f"SMPP sends SMS; message {message.id} is a {message.channel} message "
                                 "without SMS content")
    return message.sms


def _part_detail(detail: str, index: int, total: int) -> str:
    if total == 1:
        return detail
    sent = f"; parts 1-{index} were accepted" if index else ""
    return f"part {index + 1} of {total}: {detail}{sent}"


def _refusal(message_id: str, status: int, index: int, total: int) -> SendResult:
    outcome, reason, name = SUBMIT_REFUSALS.get(status, ("failed", R.UNKNOWN, "refused"))
    detail = _part_detail(f"the SMSC answered {name} ({status_code(status)})", index, total)
    if outcome == "retry":
        return SendResult.retry(message_id, reason, detail, provider_code=status_code(status), maybe_sent=index > 0)
    return SendResult.failed(message_id, reason, detail, provider_code=status_code(status))
