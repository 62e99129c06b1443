"""SMS segments (domain/sms.py): table tests with known counts, and properties of `split` checked
on the encoded form (septets with their escapes, UTF-16 with its surrogate pairs)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from herald.domain.sms import (
    BASIC,
    ESCAPE,
    EXTENSION,
    PART_LIMIT,
    SINGLE_LIMIT,
    SmsSegments,
    char_units,
    encoding_of,
    gsm7_septets,
    segments,
    split,
    units,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("", SmsSegments("GSM-7", 0, 1, 160)),
    ("a" * 160, SmsSegments("GSM-7", 160, 1, 160)),
    ("a" * 161, SmsSegments("GSM-7", 161, 2, 153)),
    ("a" * 153 * 2, SmsSegments("GSM-7", 306, 2, 153)),
    ("a" * (153 * 2 + 1), SmsSegments("GSM-7", 307, 3, 153)),
    ("€" * 80, SmsSegments("GSM-7", 160, 1, 160)),            # extension characters are 2 septets
    ("€" * 81, SmsSegments("GSM-7", 162, 2, 153)),
    ("{[~]}|^\\\f€", SmsSegments("GSM-7", 20, 1, 160)),
    ("é€" * 35, SmsSegments("GSM-7", 105, 1, 160)),           # é is in the basic table
    ("é€" * 35 + "ê", SmsSegments("UCS-2", 71, 2, 67)),       # one ê makes all of it UCS-2
    ("ê" * 70, SmsSegments("UCS-2", 70, 1, 70)),
    ("ê" * 71, SmsSegments("UCS-2", 71, 2, 67)),
    ("😀" * 35, SmsSegments("UCS-2", 70, 1, 70)),              # outside the BMP: 2 units each
    ("😀" * 36, SmsSegments("UCS-2", 72, 2, 67)),
    ("Ça ΔΦΓΛΩΠΨΣΘΞ ÆæßÉ ¡¿ §¤ Ññ", SmsSegments("GSM-7", 27, 1, 160)),
    ("ça", SmsSegments("UCS-2", 2, 1, 70)),                   # only the capital Ç is GSM-7
    ("δ", SmsSegments("UCS-2", 1, 1, 70)),                    # Greek lower case is not
    ("\x1b", SmsSegments("UCS-2", 1, 1, 70)),                 # a literal ESC is not a character
    ("\u2019", SmsSegments("UCS-2", 1, 1, 70)),               # a typographic apostrophe
])
def test_known_counts(text: str, expected: SmsSegments) -> None:
    assert segments(text) == expected
    assert len(split(text)) == expected.segments


def test_an_escape_sequence_is_never_cut_so_the_count_can_exceed_naive_division() -> None:
    text = "a" * 152 + "€" + "a" * 152     # 306 septets: 2 parts by division
    parts = split(text)
    assert [units(p, "GSM-7") for p in parts] == [152, 153, 1]
    assert parts[1].startswith("€")
    assert segments(text).segments == 3


def test_a_surrogate_pair_is_never_cut_so_the_count_can_exceed_naive_division() -> None:
    text = "a" * 66 + "😀" + "a" * 66       # 134 UTF-16 units: 2 parts by division
    parts = split(text)
    assert [units(p, "UCS-2") for p in parts] == [66, 67, 1]
    assert parts[1].startswith("😀")
    assert segments(text) == SmsSegments("UCS-2", 134, 3, 67)


def test_long_gsm_and_ucs2_texts_split_into_full_parts() -> None:
    assert [len(p) for p in split("x" * 400)] == [153, 153, 94]
    assert [len(p) for p in split("ж" * 300)] == [67, 67, 67, 67, 32]


def test_septets_are_the_default_alphabet_with_escapes() -> None:
    assert gsm7_septets("@A€{") == bytes([0x00, 0x41, ESCAPE, 0x65, ESCAPE, 0x28])
    assert gsm7_septets("Ç\nÉ§à") == bytes([0x09, 0x0A, 0x1F, 0x5F, 0x7F])
    with pytest.raises(ValueError, match=r"'ê' \(U\+00EA\) at position 1"):
        gsm7_septets("aê")


def test_the_tables_are_complete() -> None:
    assert len(BASIC) == 127 and sorted(BASIC.values()) == [c for c in range(128) if c != ESCAPE]
    assert len(EXTENSION) == 10


# ---- properties -------------------------------------------------------------------------------------

GSM_BASIC = st.sampled_from(sorted(BASIC))
GSM_EXTENSION = st.sampled_from(sorted(EXTENSION))
OTHER_BMP = st.characters(min_codepoint=0x80, max_codepoint=0xFFFF, exclude_categories=["Cs"])
ASTRAL = st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF)
GSM_TEXT = st.text(st.one_of(GSM_BASIC, GSM_EXTENSION), max_size=700)
ANY_TEXT = st.text(st.one_of(GSM_BASIC, GSM_EXTENSION, OTHER_BMP, ASTRAL), max_size=400)
TEXTS = st.one_of(GSM_TEXT, ANY_TEXT)


def _limit(text: str, parts: list[str]) -> int:
    encoding = encoding_of(text)
    return SINGLE_LIMIT[encoding] if len(parts) == 1 else PART_LIMIT[encoding]


@settings(max_examples=300, deadline=None)
@given(TEXTS)
def test_parts_join_to_the_text_and_their_number_is_the_segment_count(text: str) -> None:
    parts = split(text)
    assert "".join(parts) == text
    counted = segments(text)
    assert counted.segments == len(parts)
    assert counted.units == sum(units(p, counted.encoding) for p in parts)
    assert counted.per_segment == _limit(text, parts)


@settings(max_examples=300, deadline=None)
@given(TEXTS)
def test_no_part_exceeds_its_limit_and_each_full_part_is_full(text: str) -> None:
    parts = split(text)
    encoding, limit = encoding_of(text), _limit(text, parts)
    for part, following in zip(parts, [*parts[1:], None], strict=True):
        assert units(part, encoding) <= limit
        if following is not None:   # greedy: the next character did not fit
            assert following and units(part, encoding) + char_units(following[0], encoding) > limit


@settings(max_examples=300, deadline=None)
@given(GSM_TEXT)
def test_no_gsm_part_ends_with_a_lone_escape(text: str) -> None:
    parts = split(text)
    for part in parts:
        septets = gsm7_septets(part)
        assert len(septets) <= _limit(text, parts)
        assert not septets.endswith(bytes([ESCAPE]))
    assert len(gsm7_septets(text)) == segments(text).units


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT.filter(lambda t: encoding_of(t) == "UCS-2"))
def test_no_ucs2_part_ends_with_a_high_surrogate_or_starts_with_a_low_one(text: str) -> None:
    parts = split(text)
    for part in parts:
        encoded = part.encode("utf-16-be")
        code_units = [int.from_bytes(encoded[i:i + 2], "big") for i in range(0, len(encoded), 2)]
        assert len(code_units) <= _limit(text, parts)
        assert not code_units or not 0xD800 <= code_units[-1] <= 0xDBFF
        assert not code_units or not 0xDC00 <= code_units[0] <= 0xDFFF
