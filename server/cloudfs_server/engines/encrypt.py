"""The encryption-at-rest layer: AES-256-GCM per block with the server's key file; the block id
stays the BLAKE3 of the plaintext, so dedup works unchanged.

Stored form: version byte 0x01, 12-byte nonce, ciphertext + 16-byte tag; the associated data is
the block id, so a stored object moved under another id fails its tag.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cloudfs_server.engines.blockstore import BlockStore
from cloudfs_server.engines.layer import BlockDecodeError, TransformLayer
from cloudfs_server.errors import StoreConfigError

VERSION = b"\x01"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
# Key derivation contexts (BLAKE3 derive_key mode): sub-keys never equal the AES key.
NONCE_CONTEXT = "cloudfs 2026-12 block encryption nonce"
CHECK_CONTEXT = "cloudfs 2026-12 block encryption key check"


def load_key(path: Path) -> bytes:
    """32 bytes from a key file: raw, or 64 hex digits, or base64 (whitespace ignored).

    Raises: StoreConfigError naming the problem.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise StoreConfigError(
            f"cannot read the encryption key file {path}: {exc.strerror}"
        ) from exc
    if len(raw) == KEY_BYTES:
        return raw
    text = raw.strip()
    candidates: list[bytes] = []
    try:
        candidates.append(bytes.fromhex(text.decode("ascii")))
    except (ValueError, UnicodeDecodeError):
        pass
    try:
        candidates.append(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error):
        pass
    for key in candidates:
        if len(key) == KEY_BYTES:
            return key
    raise StoreConfigError(
        f"the encryption key file {path} must hold 32 bytes (raw, 64 hex digits or base64); "
        "make one with `head -c 32 /dev/urandom > FILE`"
    )


def key_check(key: bytes) -> str:
    """A one-way fingerprint of the key, stored in the format marker to detect a wrong key."""
    return blake3.blake3(key, derive_key_context=CHECK_CONTEXT).hexdigest()[:32]


class EncryptLayer(TransformLayer):
    def __init__(self, inner: BlockStore, key: bytes) -> None:
        super().__init__(inner)
        if len(key) != KEY_BYTES:
            raise StoreConfigError("the encryption key must be 32 bytes")
        self._aead = AESGCM(key)
        self._nonce_key = blake3.blake3(key, derive_key_context=NONCE_CONTEXT).digest()
        self.key_check = key_check(key)
        self.label = f"aes-256-gcm({inner.label})"

    def encode(self, block_id: str, data: bytes) -> bytes:
        # Synthetic nonce: a keyed hash of the exact bytes encrypted. The same input gives the
        # same nonce and ciphertext (idempotent PUTs, byte-identical mirror copies, no counter
        # state, no random-nonce birthday bound); a different input gives a different nonce
        # with overwhelming probability, so a nonce is never reused with another plaintext.
        # It reveals only that two stored blocks are equal, which their ids already say.
        nonce = blake3.blake3(data, key=self._nonce_key).digest(length=NONCE_BYTES)
        return VERSION + nonce + self._aead.encrypt(nonce, data, block_id.encode())

    def decode(self, block_id: str, stored: bytes) -> bytes:
        if stored[:1] != VERSION or len(stored) < 1 + NONCE_BYTES + TAG_BYTES:
            raise BlockDecodeError("not an encrypted block of this format")
        nonce = stored[1 : 1 + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, stored[1 + NONCE_BYTES :], block_id.encode())
        except InvalidTag as exc:
            raise BlockDecodeError("does not decrypt with this key (wrong key or damaged)") from exc
