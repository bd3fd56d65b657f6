"""Password hashes: Argon2id (argon2-cffi's RFC 9106 low-memory profile: 64 MiB, 3 passes,
4 lanes), encoded as the PHC string `$argon2id$v=19$m=…` that the metadata store keeps.

Hashing costs ~64 MiB and tens of milliseconds of CPU: callers run it in a worker thread.
"""

from __future__ import annotations

import functools

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# Longer passwords are refused before hashing (Argon2 itself takes any length).
PASSWORD_MAX_CHARS = 1024


@functools.cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()


def hash_password(password: str) -> str:
    """The PHC-encoded Argon2id hash of `password` (a new random salt each time). Blocks."""
    return _hasher().hash(password)


@functools.cache
def _dummy_hash() -> str:
    return hash_password("cloudfs: no such user or no password")


def verify_password(encoded: str | None, password: str) -> bool:
    """True if `password` matches `encoded`. With `encoded` None (no such user, or a user
    without a password) a dummy hash is verified instead, so that answer takes as long as a
    wrong password, and is False. Blocks."""
    try:
        ok = _hasher().verify(encoded or _dummy_hash(), password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return ok and encoded is not None
