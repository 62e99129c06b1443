"""Secrets at rest (webhook secrets, API credentials): Fernet tokens under a key derived from
the master key (HKDF-SHA256), so the database alone never reveals a secret. Never log the
plaintext; log at most `fingerprint()`."""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class VaultError(Exception):
    """A stored secret cannot be decrypted (wrong HERALD_SECRET_KEY, or the row was altered)."""


@lru_cache(maxsize=8)
def _fernet(master_key: bytes) -> Fernet:
    kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"herald secrets at rest v1")
    derived = kdf.derive(master_key)
    return Fernet(base64.urlsafe_b64encode(derived))


def seal(master_key: bytes, plaintext: str) -> str:
    return _fernet(master_key).encrypt(plaintext.encode()).decode()


def unseal(master_key: bytes, token: str) -> str:
    try:
        return _fernet(master_key).decrypt(token.encode()).decode()
    except InvalidToken:
        raise VaultError("a stored secret cannot be decrypted: is HERALD_SECRET_KEY the key it was "
                         "stored with?") from None


def fingerprint(secret: str) -> str:
    """A short, non-reversible label to tell secrets apart in output (never the secret)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:8]
