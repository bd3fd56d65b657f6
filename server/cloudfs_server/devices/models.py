"""Wire models of the device routes (`/v1/devices…`): request and answer bodies as msgspec
Structs, the source of their OpenAPI schemas (see http/models.py for the conventions)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import UNSET, Meta, UnsetType

from cloudfs_server.devices.registry import MAX_LEASE_S, MIN_LEASE_S
from cloudfs_server.errors import BadRequestError
from cloudfs_server.http.models import BlockId, Request, check_block_ids
from cloudfs_server.model import DEVICE_MAX_BYTES

# Block ids per call (join, blocks, holders): larger sets are sent in several calls.
BATCH_MAX = 10_000
BlockIds = Annotated[
    list[BlockId],
    Meta(max_length=BATCH_MAX, description=f"at most {BATCH_MAX}; send more in several calls"),
]
Session = Annotated[str, Meta(max_length=256, description="the `session` returned by join")]
Holders = Annotated[list[int], Meta(description="ascending device ids")]


class JoinRequest(Request):
    device_name: (
        Annotated[
            str,
            Meta(
                min_length=1,
                max_length=DEVICE_MAX_BYTES,
                description=f"default: the X-Cloudfs-Device header; <= {DEVICE_MAX_BYTES} bytes",
            ),
        ]
        | UnsetType
    ) = UNSET
    blocks: BlockIds = []
    lease_s: Annotated[int, Meta(ge=MIN_LEASE_S, le=MAX_LEASE_S)] | None = None

    def __post_init__(self) -> None:
        check_block_ids(self.blocks)
        if self.device_name is not UNSET:
            raw = self.device_name.encode("utf-8", "surrogateescape")
            if len(raw) > DEVICE_MAX_BYTES:
                raise BadRequestError(f"'device_name' is longer than {DEVICE_MAX_BYTES} bytes")
            if "\x00" in self.device_name:  # PostgreSQL text cannot hold it
                raise BadRequestError("'device_name' must not contain NUL")


class SessionRequest(Request):
    session: Session


class ChangeBlocksRequest(Request):
    session: Session
    add: BlockIds = []
    remove: BlockIds = []

    def __post_init__(self) -> None:
        check_block_ids(self.add)
        check_block_ids(self.remove)


class RequestBlockRequest(Request):
    session: Session
    block_id: BlockId

    def __post_init__(self) -> None:
        check_block_ids([self.block_id])


class HoldersRequest(Request):
    block_ids: BlockIds

    def __post_init__(self) -> None:
        check_block_ids(self.block_ids)


class Joined(msgspec.Struct):
    device_id: int
    lease_s: int
    session: str
    blocks: int


class Device(msgspec.Struct):
    device_id: int
    device_name: str
    joined_ns: int
    last_seen_ns: int
    lease_s: int
    expires_in_s: float
    blocks: int


class Devices(msgspec.Struct):
    devices: list[Device]


class BlocksChanged(msgspec.Struct):
    added: int
    removed: int
    blocks: int


class Heartbeat(msgspec.Struct):
    device_id: int
    lease_s: int
    last_seen_ns: int
    blocks: int


class Left(msgspec.Struct):
    left: bool


class HoldersOut(msgspec.Struct):
    holders: Holders


class HoldersOfBlocks(msgspec.Struct):
    holders: dict[BlockId, Holders]


class HoldersOfBlock(msgspec.Struct):
    block_id: BlockId
    holders: Holders
