"""The S3 block engine (AWS S3, MinIO, Ceph RGW, ...) through aiobotocore: one object per block at
`PREFIX/blocks/ab/cd/<64 hex>`, markers at `PREFIX/cloudfs/<name>`, quarantined blocks at
`PREFIX/corrupt/<64 hex>`. Every botocore/aiohttp failure is translated here, once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import blake3
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from cloudfs_server.engines.blockstore import BlockStore, StagedBlock, receive
from cloudfs_server.engines.layer import run_in_thread
from cloudfs_server.errors import NotFoundError, StoreUnavailableError
from cloudfs_server.model import BLOCK_ID_RE, validate_block_id

log = logging.getLogger(__name__)

NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
# Answers of a healthy store that mean "slow down / try later" (everything >= 500 too).
THROTTLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ServiceUnavailable",
}
RETRY_AFTER_S = 5


def _hexdigest(data: bytes) -> str:
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest()


class S3BlockStore(BlockStore):
    """Blocks as S3 objects. Credentials come from botocore's default chain (environment
    variables, `~/.aws/credentials` and `config`, instance roles); never from the URL."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        path_style: bool = False,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.region = region
        self.path_style = path_style
        self.label = f"s3://{bucket}/{self.prefix}" + (
            f" at {endpoint_url}" if endpoint_url else ""
        )
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    # ---- error translation (the engine boundary) -----------------------------------------
    @contextlib.contextmanager
    def _translate(self, what: str, block_id: str | None = None) -> Iterator[None]:
        try:
            yield
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if block_id is not None and (code in NOT_FOUND_CODES or status == 404):
                raise NotFoundError(f"block {block_id} is not stored") from exc
            if status >= 500 or code in THROTTLE_CODES:
                raise StoreUnavailableError(
                    f"the object store is unavailable ({what}: {code or status}); retry later",
                    RETRY_AFTER_S,
                ) from exc
            # Permanent refusals (AccessDenied, NoSuchBucket, ...) need the operator, but the
            # request had no effect and will work once the store is fixed: still 503.
            raise StoreUnavailableError(
                f"the object store refused {what}: {code or status} {err.get('Message', '')}",
                RETRY_AFTER_S,
            ) from exc
        except NoCredentialsError as exc:
            raise StoreUnavailableError(
                f"no AWS credentials found for {what}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or ~/.aws/credentials",
                RETRY_AFTER_S,
            ) from exc
        except (BotoCoreError, OSError, TimeoutError) as exc:
            # Connection refused/reset, timeouts, DNS, missing credentials.
            raise StoreUnavailableError(
                f"the object store is unreachable ({what}: {type(exc).__name__}); retry later",
                RETRY_AFTER_S,
            ) from exc

    def key_of(self, block_id: str) -> str:
        validate_block_id(block_id)
        return f"{self.prefix}blocks/{block_id[:2]}/{block_id[2:4]}/{block_id}"

    # ---- lifecycle -----------------------------------------------------------------------
    async def open(self) -> None:
        config = Config(
            connect_timeout=5,
            read_timeout=30,
            # Standard retries (throttling, 5xx, connection errors) with backoff; the number of
            # attempts is AWS_MAX_ATTEMPTS / `max_attempts` in ~/.aws/config (default 3).
            retries={"mode": "standard"},
            max_pool_connections=32,
            s3={"addressing_style": "path" if self.path_style else "auto"},
        )
        stack = contextlib.AsyncExitStack()
        with self._translate("connect"):
            self._client = await stack.enter_async_context(
                get_session().create_client(
                    "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config
                )
            )
        self._stack = stack
        try:
            await self._ensure_bucket()
        except BaseException:
            await self.close()
            raise

    async def _ensure_bucket(self) -> None:
        try:
            with self._translate("HEAD bucket", block_id=""):
                await self._client.head_bucket(Bucket=self.bucket)
            return
        except NotFoundError:
            pass
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        region = self._client.meta.region_name
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        with self._translate("create bucket"):
            try:
                await self._client.create_bucket(**kwargs)
            except ClientError as exc:  # created meanwhile by another server: fine
                if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                    raise
        log.info("created the missing bucket %s (%s)", self.bucket, self.label)

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    # ---- upload --------------------------------------------------------------------------
    async def stage(
        self, block_id: str, body: AsyncIterator[bytes], max_bytes: int, known: bool = False
    ) -> StagedBlock:
        # Verified in memory before anything reaches the bucket: a mismatch stores nothing.
        self.key_of(block_id)
        data = await receive(block_id, body, max_bytes)
        return StagedBlock(block_id, len(data), chunks=[data])

    async def publish(self, staged: StagedBlock) -> None:
        # Always a PUT (never "skip if present"): equal work whoever stored the block before.
        await self.put_stored(staged.block_id, b"".join(staged.chunks))
        staged.chunks = []

    async def discard(self, staged: StagedBlock) -> None:
        staged.chunks = []

    async def put_stored(self, block_id: str, data: bytes) -> None:
        key = self.key_of(block_id)
        with self._translate("PUT"):
            await self._client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentLength=len(data),
                ContentType="application/octet-stream",
            )

    # ---- read ----------------------------------------------------------------------------
    async def local_path(self, block_id: str) -> Path | None:
        return None  # the GET route then calls read(), which raises NotFoundError if absent

    async def _get(self, block_id: str, key: str, byte_range: str | None = None) -> bytes:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if byte_range is not None:
            kwargs["Range"] = byte_range
        with self._translate("GET", block_id):
            resp = await self._client.get_object(**kwargs)
            async with resp["Body"] as stream:
                data: bytes = await stream.read()
        return data

    async def read(self, block_id: str, offset: int, length: int) -> bytes:
        key = self.key_of(block_id)
        if length <= 0:
            await self._head(block_id, key)
            return b""
        return await self._get(block_id, key, f"bytes={offset}-{offset + length - 1}")

    async def get_stored(self, block_id: str) -> bytes:
        return await self._get(block_id, self.key_of(block_id))

    async def _head(self, block_id: str, key: str) -> int:
        with self._translate("HEAD", block_id):
            resp = await self._client.head_object(Bucket=self.bucket, Key=key)
        return int(resp["ContentLength"])

    # ---- maintenance ---------------------------------------------------------------------
    async def delete(self, block_id: str) -> bool:
        key = self.key_of(block_id)
        try:
            await self._head(block_id, key)
        except NotFoundError:
            return False
        with self._translate("DELETE"):
            await self._client.delete_object(Bucket=self.bucket, Key=key)
        return True

    async def verify(self, block_id: str, size: int) -> str | None:
        try:
            data = await self.get_stored(block_id)
        except NotFoundError:
            return "missing"
        if len(data) != size:
            return f"corrupt: {len(data)} bytes, expected {size}"
        actual = await run_in_thread(_hexdigest, data)
        if actual != block_id:
            return f"corrupt: rehashes to {actual}"
        return None

    async def quarantine(self, block_id: str) -> str:
        key = self.key_of(block_id)
        aside = f"{self.prefix}corrupt/{block_id}"
        with self._translate("quarantine"):
            await self._client.copy_object(
                Bucket=self.bucket, Key=aside, CopySource={"Bucket": self.bucket, "Key": key}
            )
            await self._client.delete_object(Bucket=self.bucket, Key=key)
        return f"s3://{self.bucket}/{aside}"

    async def _list(self) -> AsyncIterator[tuple[str, int]]:
        paginator = self._client.get_paginator("list_objects_v2")
        with self._translate("LIST"):
            async for page in paginator.paginate(
                Bucket=self.bucket, Prefix=f"{self.prefix}blocks/"
            ):
                for obj in page.get("Contents", []):
                    name = obj["Key"].rsplit("/", 1)[-1]
                    if BLOCK_ID_RE.fullmatch(name):
                        yield name, int(obj["Size"])

    async def list_ids(self) -> list[str]:
        return [name async for name, _ in self._list()]

    async def stored_sizes(self) -> dict[str, int]:
        return {name: size async for name, size in self._list()}

    async def clean_temp(self, older_than_s: float) -> int:
        return 0  # single PUTs only: S3 keeps no partial objects

    def _marker_key(self, name: str) -> str:
        if not name.isidentifier():
            raise ValueError(f"bad marker name {name!r}")
        return f"{self.prefix}cloudfs/{name}"

    async def get_marker(self, name: str) -> bytes | None:
        try:
            return await self._get("", self._marker_key(name))
        except NotFoundError:
            return None

    async def put_marker(self, name: str, data: bytes) -> None:
        with self._translate("PUT marker"):
            await self._client.put_object(Bucket=self.bucket, Key=self._marker_key(name), Body=data)
