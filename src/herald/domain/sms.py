"""SMS encoding and segments: which alphabet a text needs, how many parts (segments) it is sent
and billed as, and where those parts are cut. Pure; no IO.

Rules (3GPP TS 23.038 section 6.2.1 "GSM 7 bit Default Alphabet" and 6.2.1.1 "GSM 7 bit default
alphabet extension table"; 3GPP TS 23.040 section 9.2.3.24.1 concatenated short messages; Twilio's
"What the Heck is a Segment?" and its segment calculator agree):
  * A text made only of the GSM 7-bit default alphabet is sent as GSM-7: one septet per character,
    two for the extension-table characters, which are sent as ESC (0x1B) + the character:
    form feed ^ { } \\ [ ~ ] | €. Any other character makes the WHOLE message UCS-2 (UTF-16 code
    units: one per BMP character, two - a surrogate pair - for one outside the BMP, e.g. an emoji).
  * One message carries 140 octets: 160 septets or 70 UTF-16 units. A longer text is concatenated:
    each part loses 6 octets to the User Data Header, leaving 153 septets or 67 units per part.
  * A part never ends in the middle of an escape sequence or a surrogate pair (handsets would show
    garbage): such a character moves whole to the next part, so a text can need more parts than
    ceil(units / 153) suggests.

`split(text)` gives the parts a sender (SMPP with a UDH) sends; `segments(text)` the counts the
template editor, the content review and the price book use. An empty text is one (empty) message.
`gsm7_septets(text)` gives the unpacked septets (one per octet, SMPP data_coding 0) of a GSM-7 text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Encoding = Literal["GSM-7", "UCS-2"]

ESCAPE: Final = 0x1B

# The default alphabet, septet value = index; 0x1B is the escape to the extension table, not a
# character (a literal U+001B in a text is not GSM-7).
_BASIC_TABLE: Final = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
BASIC: Final[dict[str, int]] = {char: code for code, char in enumerate(_BASIC_TABLE) if code != ESCAPE}
EXTENSION: Final[dict[str, int]] = {
    "\f": 0x0A, "^": 0x14, "{": 0x28, "}": 0x29, "\\": 0x2F, "[": 0x3C, "~": 0x3D, "]": 0x3E, "|": 0x40, "€": 0x65,
}

SINGLE_LIMIT: Final[dict[Encoding, int]] = {"GSM-7": 160, "UCS-2": 70}
PART_LIMIT: Final[dict[Encoding, int]] = {"GSM-7": 153, "UCS-2": 67}


@dataclass(frozen=True, slots=True)
class SmsSegments:
    """How a text is sent: its encoding, its length in that encoding's units (septets for GSM-7,
    UTF-16 code units for UCS-2), the number of parts, and the units each part may hold (160/70
    when it fits one message, 153/67 when concatenated)."""

    encoding: Encoding
    units: int
    segments: int
    per_segment: int


def is_gsm7(text: str) -> bool:
    """True when every character is in the GSM default alphabet or its extension table."""
    return all(char in BASIC or char in EXTENSION for char in text)


def encoding_of(text: str) -> Encoding:
    return "GSM-7" if is_gsm7(text) else "UCS-2"


def char_units(char: str, encoding: Encoding) -> int:
    """Units one character takes: 2 septets for an extension character, 2 UTF-16 units outside the BMP."""
    if encoding == "GSM-7":
        return 2 if char in EXTENSION else 1
    return 2 if ord(char) > 0xFFFF else 1


def units(text: str, encoding: Encoding | None = None) -> int:
    """The text's length in septets (GSM-7) or UTF-16 code units (UCS-2)."""
    chosen = encoding or encoding_of(text)
    return sum(char_units(char, chosen) for char in text)


def split(text: str) -> list[str]:
    """The parts the text is sent as: the text itself when it fits one message, else parts of at
    most 153 septets / 67 UTF-16 units, cut only between characters (never inside an escape
    sequence or a surrogate pair). "".join(split(text)) == text."""
    encoding = encoding_of(text)
    if units(text, encoding) <= SINGLE_LIMIT[encoding]:
        return [text]
    limit = PART_LIMIT[encoding]
    parts: list[str] = []
    start = used = 0
    for index, char in enumerate(text):
        size = char_units(char, encoding)
        if used + size > limit:
            parts.append(text[start:index])
            start, used = index, 0
        used += size
    parts.append(text[start:])
    return parts


def segments(text: str) -> SmsSegments:
    """Encoding, length and number of parts of the text (see `split`)."""
    encoding = encoding_of(text)
    length = units(text, encoding)
    if length <= SINGLE_LIMIT[encoding]:
        return SmsSegments(encoding, length, 1, SINGLE_LIMIT[encoding])
    return SmsSegments(encoding, length, len(split(text)), PART_LIMIT[encoding])


def gsm7_septets(text: str) -> bytes:
    """The text in the GSM 7-bit default alphabet, one septet per octet (unpacked), extension
    characters as ESC + code. ValueError names the first character GSM-7 cannot carry."""
    out = bytearray()
    for position, char in enumerate(text):
        code = BASIC.get(char)
        if code is not None:
            out.append(code)
            continue
        code = EXTENSION.get(char)
        if code is None:
            raise ValueError(f"character {char!r} (U+{ord(char):04X}) at position {position} is not in the GSM "
                             "7-bit alphabet: send the text as UCS-2")
        out += bytes((ESCAPE, code))
    return bytes(out)
