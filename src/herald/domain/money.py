"""Money as integer minor units of an ISO 4217 currency. Amounts from platforms arrive as
decimal strings ("19.99"); they are converted exactly (Decimal, never float), with the
currency's own number of decimals (JPY 0, USD 2, KWD 3)."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from functools import lru_cache

from babel.numbers import get_currency_precision

from herald.domain.contacts import InvalidValue


@lru_cache(maxsize=512)
def decimals(currency: str) -> int:
    return int(get_currency_precision(currency.upper()))


def normalize_currency(raw: str) -> str:
    code = (raw or "").strip().upper()
    if len(code) != 3 or not code.isalpha():
        raise InvalidValue(f"currency {raw!r} is not an ISO 4217 code such as 'USD' or 'EUR'")
    return code


def to_minor(amount: str | int | float | Decimal | None, currency: str) -> int:
    """'19.99' USD -> 1999; '1500' JPY -> 1500; None or '' -> 0. Rounds half-even beyond the
    currency's precision (some platforms send '19.990')."""
    if amount is None or amount == "":
        return 0
    try:
        value = Decimal(str(amount).strip())
    except InvalidOperation:
        raise InvalidValue(f"amount {amount!r} is not a number") from None
    if not value.is_finite():
        raise InvalidValue(f"amount {amount!r} is not a finite number")
    scaled = (value * (10 ** decimals(currency))).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    return int(scaled)


def from_minor(minor: int, currency: str) -> Decimal:
    return Decimal(minor).scaleb(-decimals(currency))
