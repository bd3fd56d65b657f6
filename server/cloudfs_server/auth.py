"""Bearer tokens: `cfs_` + 32 random bytes in URL-safe base64; only their SHA-256 is stored.

The prefix makes a leaked token recognisable to secret scanners and keeps a token from starting
with `-`, which command lines would take for an option (`cloudfs mount --token TOKEN`).
"""

from __future__ import annotations

import hashlib
import secrets

from cloudfs_server.errors import UnauthorizedError

TOKEN_PREFIX = "cfs_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """Hex SHA-256 of the token: what the metadata store keeps and looks up."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def bearer_token(header: str | None) -> str:
    """The token from an `Authorization: Bearer <token>` header.

    Raises: UnauthorizedError if the header is missing or not a bearer token.
    """
    if not header:
        raise UnauthorizedError("missing Authorization: Bearer <token> header")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise UnauthorizedError("the Authorization header must be 'Bearer <token>'")
    return token
