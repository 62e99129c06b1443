"""Contact identity rules: how emails, phone numbers, countries, languages and zones are
normalised. A contact is found by any of its identities; each is unique per workspace."""

from __future__ import annotations

import re
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import phonenumbers
import pycountry
from email_validator import EmailNotValidError, validate_email


class IdentityKind(StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    EXTERNAL = "external"  # an id in another system, namespaced (e.g. "shopify", "crm")


class InvalidValue(ValueError):
    """A value a user supplied that cannot be used; the message says what to fix."""


def normalize_email(raw: str) -> str:
    """Syntax-check an address (no DNS) and return it with the domain lower-cased (IDNA-aware).

    The local part keeps its case: RFC 5321 says it may be significant, and lowering it would
    merge people who are distinct to their mail server. Identity matching is on this value.
    """
    try:
        result = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidValue(str(exc)) from exc
    return str(result.normalized)


def normalize_phone(raw: str, default_region: str | None = None) -> str:
    """Return the number in E.164. A number without a leading + needs the contact's country."""
    text = raw.strip()
    region = None if text.startswith("+") else (default_region or None)
    if region is None and not text.startswith("+"):
        raise InvalidValue(
            f"phone {raw!r} has no country code; write it as +<country code><number> "
            "or give the contact's country"
        )
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidValue(f"phone {raw!r} is not a phone number: {exc}") from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidValue(f"phone {raw!r} is not a valid number for its country")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_country(raw: str) -> str:
    code = raw.strip().upper()
    if len(code) != 2 or pycountry.countries.get(alpha_2=code) is None:
        raise InvalidValue(f"country {raw!r} is not an ISO 3166-1 alpha-2 code such as 'US' or 'BR'")
    return code


_LANGUAGE = re.compile(r"^[a-zA-Z]{2,3}(-[a-zA-Z0-9]{2,8})*$")


def normalize_language(raw: str) -> str:
    """A BCP 47 tag whose primary language is ISO 639; returned as e.g. 'pt-BR'."""
    text = raw.strip().replace("_", "-")
    if not _LANGUAGE.match(text):
        raise InvalidValue(f"language {raw!r} is not a BCP 47 tag such as 'en' or 'pt-BR'")
    primary, *rest = text.split("-")
    if pycountry.languages.get(alpha_2=primary.lower()) is None and (
        pycountry.languages.get(alpha_3=primary.lower()) is None
    ):
        raise InvalidValue(f"language {raw!r}: {primary!r} is not an ISO 639 language code")
    parts = [primary.lower()] + [p.upper() if len(p) == 2 else p for p in rest]
    return "-".join(parts)


_ZONES: frozenset[str] | None = None


def normalize_timezone(raw: str) -> str:
    global _ZONES
    if _ZONES is None:
        _ZONES = frozenset(available_timezones())
    name = raw.strip()
    if name not in _ZONES:
        raise InvalidValue(f"time zone {raw!r} is not an IANA zone name such as 'America/Sao_Paulo'")
    try:
        ZoneInfo(name)
    except ZoneInfoNotFoundError as exc:  # pragma: no cover - listed but unloadable
        raise InvalidValue(f"time zone {raw!r} cannot be loaded") from exc
    return name


_NAMESPACE = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")


def normalize_external_id(namespace: str, value: str) -> tuple[str, str]:
    if not _NAMESPACE.match(namespace):
        raise InvalidValue(
            f"external id namespace {namespace!r} must be 1-64 characters of a-z, 0-9, '_', '.', ':' or '-'"
        )
    text = str(value).strip()
    if not text or len(text) > 255:
        raise InvalidValue(f"external id for {namespace!r} must be 1-255 characters")
    return namespace, text
