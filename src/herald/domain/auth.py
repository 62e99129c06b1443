"""Who is calling: an API key scoped to a workspace, or to one store of it."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

KEY_PREFIX = "hsk_"  # "Herald secret key": lets secret scanners and humans recognise it
KEY_BYTES = 32
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True, slots=True)
class Principal:
    api_key_id: str
    workspace_id: str
    store_id: str | None  # None: the whole workspace

    def can_see_store(self, store_id: str | None) -> bool:
        return self.store_id is None or self.store_id == store_id


def generate_api_key() -> str:
    """The type prefix, then 32 random bytes in base62 (43 chars; no '-' or '_' to break a
    double-click selection)."""
    n = int.from_bytes(secrets.token_bytes(KEY_BYTES), "big")
    chars = []
    for _ in range(43):
        n, r = divmod(n, 62)
        chars.append(_B62[r])
    return KEY_PREFIX + "".join(chars)


def hash_api_key(key: str) -> str:
    """Only this is stored. A full 256-bit random key needs no slow hash: it cannot be guessed."""
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_api_key(value: str) -> bool:
    return value.startswith(KEY_PREFIX) and len(value) == len(KEY_PREFIX) + 43


def display_prefix(key: str) -> str:
    return key[: len(KEY_PREFIX) + 8]
