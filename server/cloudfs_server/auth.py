"""Bearer tokens: 32 random bytes, URL-safe base64; only their SHA-256 is ever stored."""

from __future__ import annotations

import hashlib
import secrets

from cloudfs_server.errors import UnauthorizedError


def new_token() -> str:
    return secrets.token_urlsafe(32)


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
