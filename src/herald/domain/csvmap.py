"""CSV import rules, pure: which column means what (auto-detected from the header, overridable
with `column=field`), how a file's encoding and delimiter are recognised, and how cell values
(consent flags, tags, dates, countries, money) are read. No IO: services/imports.py streams the
file and writes the rows.

Fields of a contacts import: email, phone, first_name, last_name, country, language, timezone,
tags, external (the store's own customer id), external.<namespace>, email_marketing,
sms_marketing, whatsapp_marketing, attributes.<key>. Fields of an orders import: order_id,
number, email, phone, customer_id, first_name, last_name, currency, total, subtotal, discount,
shipping, tax, refunded, placed_at, cancelled_at, financial_status, fulfillment_status,
shipping_country, discount_codes, email_marketing, line_title, line_quantity, line_price,
line_sku. `ignore` drops a column.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from functools import lru_cache

import pycountry

from herald.domain.contacts import InvalidValue

KINDS = ("contacts", "orders")
IGNORE = "ignore"
ATTRIBUTES = "attributes"

CONTACT_FIELDS = ("email", "phone", "first_name", "last_name", "country", "language", "timezone", "tags",
                  "external", "email_marketing", "sms_marketing", "whatsapp_marketing")
ORDER_FIELDS = ("order_id", "number", "email", "phone", "customer_id", "first_name", "last_name", "currency",
                "total", "subtotal", "discount", "shipping", "tax", "refunded", "placed_at", "cancelled_at",
                "financial_status", "fulfillment_status", "shipping_country", "discount_codes", "email_marketing",
                "line_title", "line_quantity", "line_price", "line_sku")
CONSENT_FIELDS = {"email_marketing": "email", "sms_marketing": "sms", "whatsapp_marketing": "whatsapp"}

# Header synonyms, compared after _key() (lower case, separators as single spaces). Earlier
# names win when two columns claim one field (e.g. "Phone" over "Default Address Phone").
_COMMON: dict[str, tuple[str, ...]] = {
    "email": ("email", "e mail", "email address", "e mail address", "emailaddress", "mail", "customer email",
              "email addr"),
    "phone": ("phone", "phone number", "mobile", "mobile phone", "mobile number", "cell", "cell phone",
              "cellphone", "telephone", "tel", "sms", "sms phone", "customer phone", "default address phone",
              "billing phone"),
    "first_name": ("first name", "firstname", "given name", "first", "fname", "forename", "billing first name"),
    "last_name": ("last name", "lastname", "surname", "family name", "last", "lname", "billing last name"),
    "email_marketing": ("accepts email marketing", "accepts marketing", "email marketing", "email marketing consent",
                        "email consent", "email opt in", "email optin", "marketing opt in", "marketing optin",
                        "newsletter", "subscribed", "opt in", "optin"),
}
SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "contacts": {
        **_COMMON,
        "country": ("country", "country code", "default address country code", "default address country",
                    "address country", "country iso"),
        "language": ("language", "locale", "lang", "preferred language", "preferred locale"),
        "timezone": ("timezone", "time zone", "tz"),
        "tags": ("tags", "tag", "labels", "segments"),
        "external": ("customer id", "external id", "id", "customer", "user id", "userid", "customer number",
                     "customer no", "contact id"),
        "sms_marketing": ("accepts sms marketing", "sms marketing", "sms marketing consent", "sms consent",
                          "sms opt in", "sms optin", "text marketing"),
        "whatsapp_marketing": ("accepts whatsapp marketing", "whatsapp marketing", "whatsapp consent",
                               "whatsapp opt in", "whatsapp optin"),
    },
    "orders": {
        **_COMMON,
        "order_id": ("order id", "id", "orderid", "order external id", "external id"),
        "number": ("name", "order number", "order name", "number", "order no", "order"),
        "customer_id": ("customer id", "customer", "user id", "userid", "customer number"),
        "currency": ("currency", "currency code", "order currency"),
        "total": ("total", "total price", "order total", "total amount", "grand total", "amount", "order amount"),
        "subtotal": ("subtotal", "sub total", "subtotal price", "items total"),
        "discount": ("discount amount", "discount", "total discounts", "discounts", "discount total"),
        "shipping": ("shipping", "shipping amount", "shipping price", "shipping total", "shipping cost"),
        "tax": ("taxes", "tax", "total tax", "tax amount", "tax total"),
        "refunded": ("refunded amount", "total refunded", "refunded", "refund amount"),
        "placed_at": ("created at", "placed at", "order date", "processed at", "date", "created", "ordered at",
                      "date created", "purchase date"),
        "cancelled_at": ("cancelled at", "canceled at", "cancelled", "canceled", "date cancelled"),
        "financial_status": ("financial status", "payment status", "status", "order status"),
        "fulfillment_status": ("fulfillment status", "fulfilment status", "shipping status", "delivery status"),
        "shipping_country": ("shipping country code", "shipping country", "ship country", "ship to country",
                             "country", "country code"),
        "discount_codes": ("discount code", "discount codes", "coupon", "coupon code", "coupons", "promo code"),
        "line_title": ("lineitem name", "line item name", "line title", "item name", "product name", "product",
                       "item", "line name"),
        "line_quantity": ("lineitem quantity", "line item quantity", "line quantity", "quantity", "qty",
                          "item quantity"),
        "line_price": ("lineitem price", "line item price", "line price", "unit price", "item price", "price"),
        "line_sku": ("lineitem sku", "line item sku", "line sku", "sku", "item sku"),
    },
}
_SEPARATORS = re.compile(r"[\s_\-./:]+")
_SLUG = re.compile(r"[^a-z0-9]+")


def _key(header: str) -> str:
    return _SEPARATORS.sub(" ", header.strip().strip("\ufeff").lower()).strip()


def attribute_key(header: str) -> str:
    """'Loyalty Tier' -> 'loyalty_tier': the attribute a column becomes with `COLUMN=attributes`."""
    return _SLUG.sub("_", header.strip().lower()).strip("_") or "column"


@dataclass(frozen=True, slots=True)
class Column:
    index: int
    name: str  # as in the header
    field: str


def fields_of(kind: str) -> tuple[str, ...]:
    return CONTACT_FIELDS if kind == "contacts" else ORDER_FIELDS


def check_field(kind: str, field: str) -> str:
    """A field name a user wrote in `--map`, checked; raises InvalidValue saying what is allowed."""
    field = field.strip()
    if field in ("", "-", IGNORE):
        return IGNORE
    if kind == "contacts":
        if (field.startswith("attributes.") and len(field) > len("attributes.")) or field == ATTRIBUTES:
            return field
        if field.startswith("external.") and re.fullmatch(r"external\.[a-z0-9][a-z0-9_.:-]{0,63}", field):
            return field
    if field in fields_of(kind):
        return field
    extra = ", attributes.<key>, external.<namespace>" if kind == "contacts" else ""
    raise InvalidValue(f"unknown {kind} field {field!r}; use one of {', '.join(fields_of(kind))}{extra} or ignore")


def build_mapping(kind: str, header: list[str], overrides: dict[str, str] | None = None) -> list[Column]:
    """Map header columns to fields: synonyms first, then `overrides` ({column: field}), where a
    column is named as in the header (case and separators ignored) and `*` means every column
    left unmapped (`*=attributes` keeps them all as attributes). Raises InvalidValue."""
    table = SYNONYMS[kind]
    rank = {name: (field, i) for field, names in table.items() for i, name in enumerate(names)}
    chosen: dict[int, str] = {}
    best: dict[str, tuple[int, int]] = {}  # field -> (synonym rank, column index)
    for index, name in enumerate(header):
        key = _key(name)
        if kind == "contacts" and key.startswith("attributes "):
            chosen[index] = "attributes." + attribute_key(name.strip()[len("attributes."):])
            continue
        hit = rank.get(key)
        if hit is None:
            continue
        field, order = hit
        if field not in best or (order, index) < best[field]:
            best[field] = (order, index)
    for field, (_order, index) in best.items():
        chosen[index] = field
    star: str | None = None
    for column, target in (overrides or {}).items():
        field = check_field(kind, target)
        if column.strip() == "*":
            star = field
            continue
        index = _find_column(header, column)
        for other, taken in list(chosen.items()):  # one column per singular field
            if taken == field and field not in (IGNORE, ATTRIBUTES) and other != index:
                del chosen[other]
        chosen[index] = field
    if star is not None and star != IGNORE:
        for index in range(len(header)):
            chosen.setdefault(index, star)
    columns = []
    for index, field in sorted(chosen.items()):
        if field == IGNORE:
            continue
        if field == ATTRIBUTES:
            field = "attributes." + attribute_key(header[index])
        columns.append(Column(index, header[index].strip().strip("\ufeff"), field))
    return columns


def _find_column(header: list[str], column: str) -> int:
    exact = [i for i, name in enumerate(header) if name.strip().strip("\ufeff") == column.strip()]
    loose = [i for i, name in enumerate(header) if _key(name) == _key(column)]
    found = exact or loose
    if not found:
        shown = ", ".join(repr(h.strip()) for h in header[:30])
        raise InvalidValue(f"--map names column {column!r}, which is not in the header ({shown})")
    return found[0]


def require_fields(kind: str, columns: list[Column], header: list[str]) -> None:
    """A mapping that cannot import anything is refused before the import starts."""
    fields = {c.field for c in columns}
    shown = ", ".join(repr(h.strip()) for h in header[:30])
    if kind == "contacts":
        if not fields & {"email", "phone", "external"} and not any(f.startswith("external.") for f in fields):
            raise InvalidValue(f"no column holds an email, a phone or a customer id (header: {shown}); "
                               "name one with --map COLUMN=email (or phone, external)")
        return
    missing = [f for f in ("placed_at",) if f not in fields]
    if "order_id" not in fields and "number" not in fields:
        missing.insert(0, "order_id")
    if missing:
        raise InvalidValue(f"no column for {' and '.join(missing)} (header: {shown}); "
                           f"name it with --map COLUMN={missing[0]}")


# ---- file format ------------------------------------------------------------------------------
BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def bom_encoding(head: bytes) -> str | None:
    for bom, name in BOMS:
        if head.startswith(bom):
            return name
    return None


def guess_bomless_utf16(head: bytes) -> str | None:
    """UTF-16 without a BOM shows as NUL bytes in every other position of ASCII text."""
    sample = head[:4096 - len(head[:4096]) % 2]
    if len(sample) < 8:
        return None
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    half = len(sample) // 2
    if odd > half * 0.6 and even < half * 0.05:
        return "utf-16-le"
    if even > half * 0.6 and odd < half * 0.05:
        return "utf-16-be"
    return None


def codec_of(encoding: str, head: bytes) -> tuple[str, int]:
    """(codec that decodes the text after the BOM, BOM length in bytes) for a stored encoding name."""
    name = codecs.lookup(encoding).name
    if name in ("utf-8-sig", "utf-8"):
        return "utf-8", len(codecs.BOM_UTF8) if head.startswith(codecs.BOM_UTF8) else 0
    for family, le_bom, be_bom in (("utf-16", codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE),
                                   ("utf-32", codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        if name == family:
            if head.startswith(le_bom):
                return family + "-le", len(le_bom)
            if head.startswith(be_bom):
                return family + "-be", len(be_bom)
            return family + "-le", 0
    return name, 0


def ascii_compatible(codec: str) -> bool:
    """True when a newline is the single byte 0x0A and never part of another character, so the
    file can be split into lines as bytes (fast) rather than as decoded text."""
    try:
        return "\n\r,;\t\"".encode(codec) == b"\n\r,;\t\"" and codecs.lookup(codec).name not in (
            "utf-7", "hz", "iso2022-jp", "iso2022-kr")
    except (LookupError, UnicodeError):
        return False


DELIMITERS = (",", ";", "\t", "|")


def sniff_delimiter(header_line: str) -> str:
    """The delimiter used in the header line: the most frequent of , ; TAB | outside quotes."""
    outside = re.sub(r'"[^"]*"', "", header_line)
    counts = [(outside.count(d), -i, d) for i, d in enumerate(DELIMITERS)]
    count, _, delimiter = max(counts)
    return delimiter if count else ","


# ---- values -----------------------------------------------------------------------------------
_TRUE = frozenset({"yes", "y", "true", "t", "1", "on", "subscribed", "granted", "opted in", "opt in", "optin",
                   "accepted", "x", "checked"})
_FALSE = frozenset({"no", "n", "false", "f", "0", "off", "unsubscribed", "withdrawn", "opted out", "opt out",
                    "optout", "declined", "not subscribed", "never subscribed", "cleaned", "unchecked"})


@lru_cache(maxsize=256)
def parse_consent(raw: str) -> bool | None:
    """yes/no, true/false, 1/0 (and the usual ESP words) -> True/False; empty -> None."""
    text = raw.strip().lower().replace("_", " ")
    if not text:
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidValue(f"consent {raw!r} is not yes/no, true/false or 1/0")


_TAG_SPLIT = re.compile(r"[,;]")


def split_tags(raw: str) -> list[str]:
    """'vip, wholesale;newsletter' -> ['vip', 'wholesale', 'newsletter'] (empty parts dropped)."""
    return [t.strip() for t in _TAG_SPLIT.split(raw) if t.strip()]


def clean_id(raw: str) -> str:
    """Spreadsheet exports guard long numeric ids with a leading apostrophe ("'7012345678")."""
    text = raw.strip()
    return text[1:].strip() if text.startswith("'") else text


@lru_cache(maxsize=4096)
def country_code(raw: str) -> str:
    """An ISO 3166-1 alpha-2 code from a code, an alpha-3 code or an English country name."""
    text = raw.strip()
    if len(text) == 2:
        return text.upper()  # checked by domain.contacts.normalize_country
    try:
        found = pycountry.countries.lookup(text)
    except LookupError:
        raise InvalidValue(f"country {raw!r} is not an ISO 3166-1 code or a country name") from None
    return str(found.alpha_2)


_SHOPIFY_TIME = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)\s*(?:([+-]\d{2}):?(\d{2})|(Z|UTC))?$")
_SLASHED = re.compile(r"^(\d{4})/(\d{1,2})/(\d{1,2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?$")


def parse_datetime(raw: str, zone: tzinfo = UTC) -> datetime:
    """ISO 8601 and the forms stores export ('2024-01-31 10:22:11 -0500', '2024/01/31 10:22').
    A time without an offset is in `zone` (the store's time zone). Returns aware UTC."""
    text = raw.strip()
    try:
        value = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        value = _loose_datetime(text, raw)
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    if not 1970 <= value.year <= 2200:
        raise InvalidValue(f"date {raw!r} is out of range (1970-2200)")
    return value.astimezone(UTC)


def _loose_datetime(text: str, raw: str) -> datetime:
    match = _SHOPIFY_TIME.match(text)
    if match:
        day, time, hours, minutes, utc = match.groups()
        offset = f"{hours}:{minutes}" if hours else ("+00:00" if utc else "")
        try:
            return datetime.fromisoformat(f"{day}T{time}{offset}")
        except ValueError:
            pass
    match = _SLASHED.match(text)
    if match:
        year, month, day_, hour, minute, second = (int(p) if p else 0 for p in match.groups())
        try:
            return datetime(year, month, day_, hour, minute, second)
        except ValueError:
            pass
    raise InvalidValue(f"date {raw!r} is not a date; use ISO 8601, e.g. 2024-01-31 or 2024-01-31T10:22:00Z")


def parse_quantity(raw: str) -> int:
    text = raw.strip()
    try:
        value = int(float(text)) if text else 1
    except ValueError:
        raise InvalidValue(f"quantity {raw!r} is not a whole number") from None
    if value < 0 or value > 1_000_000:
        raise InvalidValue(f"quantity {raw!r} is out of range")
    return value


_AMOUNT_NOISE = re.compile(r"[\s$€£¥₹]|[A-Z]{3}$|^[A-Z]{3}")


def clean_amount(raw: str) -> str:
    """'$1,234.50' -> '1234.50'; a lone comma as the decimal mark ('19,99') -> '19.99'."""
    text = _AMOUNT_NOISE.sub("", raw.strip())
    if "," in text and "." in text:
        text = text.replace(",", "") if text.rfind(".") > text.rfind(",") else text.replace(".", "").replace(",", ".")
    elif text.count(",") == 1 and len(text) - text.index(",") - 1 != 3:
        text = text.replace(",", ".")
    elif "," in text:
        text = text.replace(",", "")
    return text
