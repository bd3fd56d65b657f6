"""The HTTP client of the protocol (layer 1): one method per route, retries of temporary failures
with backoff inside a total time budget, BLAKE3 check of every downloaded block.

This is the one place where transport errors and HTTP statuses become `cloudfs.errors`.
All methods await; none holds an LMDB transaction.
"""

from __future__ import annotations

import json
import logging
import os
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import httpx
import trio

from cloudfs import errors
from cloudfs.chunking import block_id_of
from cloudfs.protocol import Node, error_from_response
from cloudfs.transport import RawFetcher, UnsupportedResponse

log = logging.getLogger(__name__)


class RawResponse:
    """The little of httpx.Response that the callers use, for the raw transport."""

    def __init__(self, status_code: int, content: bytearray) -> None:
        self.status_code = status_code
        self.content = content

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return bytes(self.content).decode(errors="replace")


T = TypeVar("T")


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verifies server certificates (and host names) against `ca_file`, or the system CAs.

    Raises: TlsError if the CA file cannot be read."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise errors.TlsError(f"cannot load the CA file {ca_file}: {exc}") from exc


class ApiClient:
    """Talks to one server as one user and device.

    `retry_budget_s` bounds how long one call keeps retrying temporary failures (connection
    refused, timeouts, 5xx); after it, `TemporaryError` is raised. An https server's
    certificate is checked against the system CAs, or only `ca_file` (default: the
    CLOUDFS_CA_FILE environment variable) when given.
    """

    def __init__(
        self,
        server: str,
        token: str,
        device: str,
        retry_budget_s: float = 8.0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        ca_file: str | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.device = device
        self.retry_budget_s = retry_budget_s
        self.ssl_context = (
            tls_context(ca_file or os.environ.get("CLOUDFS_CA_FILE") or None)
            if self.server.startswith("https://")
            else None
        )
        self._client = httpx.AsyncClient(
            base_url=self.server,
            headers={"Authorization": f"Bearer {token}", "X-Cloudfs-Device": device},
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=16),
            verify=self.ssl_context or True,
        )
        # Requests bypass httpx (its body reading caps throughput), over TLS too; docs/client.md
        self._raw = RawFetcher.for_server(
            self.server,
            {"Authorization": f"Bearer {token}", "X-Cloudfs-Device": device},
            self.ssl_context,
        )
        self.bytes_downloaded = 0
        self.bytes_uploaded = 0
        self.requests = 0  # HTTP requests sent, except the change feed's (`cloudfs status`)
        self.mutations_in_flight = 0  # namespace changes sent and not yet answered (sync echo)

    async def aclose(self) -> None:
        if self._raw is not None:
            await self._raw.aclose()
        await self._client.aclose()

    # ---- transport ---------------------------------------------------------------------------
    async def _retrying(
        self, what: str, call: Callable[[], Awaitable[T]], budget_s: float | None = None
    ) -> T:
        budget = self.retry_budget_s if budget_s is None else budget_s
        deadline = trio.current_time() + budget
        delay = 0.05
        while True:
            try:
                return await call()
            except errors.TemporaryError as exc:
                now = trio.current_time()
                if now + delay > deadline:
                    raise
                log.info("%s failed (%s); retrying in %.2fs", what, exc, delay)
                await trio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | memoryview | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        if path != "/v1/changes":
            self.requests += 1
        mutation = method != "GET" and path.startswith("/v1/nodes/")
        self.mutations_in_flight += mutation
        try:
            if self._raw is not None:
                raw = await self._raw_request(method, path, json_body, content, params, headers)
                if raw is not None:
                    return self._checked(raw)
            resp = await self._client.request(
                method,
                path,
                json=json_body,
                content=content if content is None or type(content) is bytes else bytes(content),
                params=params,
                headers=headers,
            )
        except httpx.TransportError as exc:
            raise errors.TemporaryError(
                f"cannot reach {self.server}: {exc.__class__.__name__} {exc}"
            ) from exc
        finally:
            self.mutations_in_flight -= mutation
        return self._checked(resp)

    @staticmethod
    def _checked(resp: Any) -> Any:
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {"message": resp.text[:200]}
            raise error_from_response(resp.status_code, body)
        return resp

    async def _raw_request(
        self,
        method: str,
        path: str,
        json_body: Any,
        content: bytes | bytearray | memoryview | None,
        params: dict[str, Any] | None,
        headers: dict[str, str] | None,
    ) -> RawResponse | None:
        """The request over the raw transport (per-request cost ~0.6 ms here versus ~3 ms for
        httpx on trio), or None if its answer has no Content-Length (then httpx is used)."""
        assert self._raw is not None
        hdrs = dict(headers or {})
        body: bytes | None = None
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs["Content-Type"] = "application/json"
        elif content is not None:
            body = content if type(content) is bytes else bytes(content)
        target = path + ("?" + urlencode(params, quote_via=quote) if params else "")
        try:
            status, answer = await self._raw.request(method, target, body, hdrs)
        except UnsupportedResponse:
            log.info("answers without Content-Length; using httpx from now on")
            self._raw = None
            return None
        return RawResponse(status, answer)

    async def _json(
        self, method: str, path: str, budget_s: float | None = None, **kwargs: Any
    ) -> Any:
        async def call() -> Any:
            resp = await self._request(method, path, **kwargs)
            try:
                return resp.json()
            except ValueError as exc:
                raise errors.ProtocolError(f"{method} {path}: answer is not JSON") from exc

        return await self._retrying(f"{method} {path}", call, budget_s)

    # ---- service -----------------------------------------------------------------------------
    async def healthz(self) -> bool:
        await self._json("GET", "/healthz", budget_s=0)
        return True

    async def me(self, budget_s: float | None = None) -> dict[str, Any]:
        return await self._json("GET", "/v1/me", budget_s=budget_s)

    async def usage(self) -> dict[str, Any]:
        return await self._json("GET", "/v1/usage")

    # ---- namespace ---------------------------------------------------------------------------
    async def get_node(self, node_id: int, blocks: bool = False) -> Node:
        params = {"blocks": 1} if blocks else None
        return Node.from_json(await self._json("GET", f"/v1/nodes/{node_id}", params=params))

    async def children(
        self, node_id: int, after: str | None = None, limit: int = 1000
    ) -> tuple[list[Node], str | None]:
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        obj = await self._json("GET", f"/v1/nodes/{node_id}/children", params=params)
        return [Node.from_json(e) for e in obj["entries"]], obj.get("next")

    async def lookup(self, parent_id: int, name: str) -> Node:
        return Node.from_json(
            await self._json("GET", f"/v1/nodes/{parent_id}/lookup", params={"name": name})
        )

    async def create(
        self,
        parent_id: int,
        name: str,
        kind: str,
        mode: int | None = None,
        mtime_ns: int | None = None,
        target: str | None = None,
        size: int | None = None,
        blocks: list[tuple[str, int]] | None = None,
    ) -> Node:
        body: dict[str, Any] = {"name": name, "type": kind}
        for key, val in (
            ("mode", mode),
            ("mtime_ns", mtime_ns),
            ("target", target),
            ("size", size),
        ):
            if val is not None:
                body[key] = val
        if blocks is not None:
            body["blocks"] = [list(b) for b in blocks]
        return Node.from_json(
            await self._json("POST", f"/v1/nodes/{parent_id}/children", json_body=body)
        )

    async def commit(
        self,
        node_id: int,
        base_version: int,
        size: int,
        blocks: list[tuple[str, int]],
        mtime_ns: int | None = None,
        budget_s: float | None = None,
    ) -> Node:
        body: dict[str, Any] = {
            "base_version": base_version,
            "size": size,
            "blocks": [list(b) for b in blocks],
        }
        if mtime_ns is not None:
            body["mtime_ns"] = mtime_ns
        return Node.from_json(
            await self._json(
                "PUT", f"/v1/nodes/{node_id}/content", json_body=body, budget_s=budget_s
            )
        )

    async def patch(
        self, node_id: int, mode: int | None = None, mtime_ns: int | None = None
    ) -> Node:
        body: dict[str, Any] = {}
        if mode is not None:
            body["mode"] = mode
        if mtime_ns is not None:
            body["mtime_ns"] = mtime_ns
        return Node.from_json(await self._json("PATCH", f"/v1/nodes/{node_id}", json_body=body))

    async def move(
        self, node_id: int, parent_id: int, name: str, replace: bool
    ) -> tuple[Node, int | None]:
        obj = await self._json(
            "POST",
            f"/v1/nodes/{node_id}/move",
            json_body={"parent": parent_id, "name": name, "replace": replace},
        )
        replaced = obj.get("replaced")
        return Node.from_json(obj["node"]), None if replaced is None else int(replaced)

    async def delete(self, node_id: int) -> bool:
        return bool((await self._json("DELETE", f"/v1/nodes/{node_id}")).get("trashed"))

    async def changes(
        self, cursor: int | str, wait_s: float = 0, limit: int = 1000
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"cursor": cursor, "limit": limit}
        if wait_s:
            params["wait"] = wait_s
        return await self._json("GET", "/v1/changes", params=params)

    # ---- history and trash -------------------------------------------------------------------
    async def list_versions(self, node_id: int) -> list[dict[str, Any]]:
        """The file's versions, newest first, the current one included (protocol.md)."""
        return list((await self._json("GET", f"/v1/nodes/{node_id}/versions"))["versions"])

    async def get_version(self, node_id: int, version: int) -> dict[str, Any]:
        """One version object with its `blocks`."""
        return await self._json("GET", f"/v1/nodes/{node_id}/versions/{version}")

    async def restore_version(self, node_id: int, version: int) -> Node:
        """Make version `version`'s content a new current version; returns the node."""
        return Node.from_json(
            await self._json("POST", f"/v1/nodes/{node_id}/versions/{version}/restore")
        )

    async def list_trash(self) -> list[dict[str, Any]]:
        """Trashed nodes, each with `trashed_at_ns`, `original_parent` and `original_path`."""
        return list((await self._json("GET", "/v1/trash"))["entries"])

    async def restore_trash(
        self, node_id: int, parent_id: int | None = None, name: str | None = None
    ) -> Node:
        """Bring a trashed node back (default: its original parent and name).

        Raises: NameExistsError if the name is taken, NodeNotFoundError if the node is not in
        the trash or the parent is gone.
        """
        body: dict[str, Any] = {}
        if parent_id is not None:
            body["parent"] = parent_id
        if name is not None:
            body["name"] = name
        return Node.from_json(
            await self._json("POST", f"/v1/trash/{node_id}/restore", json_body=body)
        )

    # ---- blocks ------------------------------------------------------------------------------
    async def missing_blocks(self, block_ids: list[str]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(block_ids), 10_000):
            obj = await self._json(
                "POST", "/v1/blocks/missing", json_body={"block_ids": block_ids[i : i + 10_000]}
            )
            out.extend(obj["missing"])
        return out

    async def put_block(self, block_id: str, data: bytes | bytearray | memoryview) -> bool:
        """Upload one block (idempotent). Returns True if the server stored new bytes."""
        obj = await self._json(
            "PUT",
            f"/v1/blocks/{block_id}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        self.bytes_uploaded += len(data)
        return bool(obj.get("stored"))

    async def get_block(self, block_id: str) -> bytes | bytearray:
        """Download one block and check it hashes to its id.

        Raises:
            CorruptBlockError: the bytes do not hash to `block_id` (caller may refetch once).
            NodeNotFoundError: the block is not available to this user.
        """

        async def call() -> bytes | bytearray:
            if self._raw is not None:
                try:
                    return await self._raw.get(f"/v1/blocks/{block_id}")
                except UnsupportedResponse:
                    log.info("block answers have no Content-Length; using httpx for blocks")
                    self._raw = None
            resp = await self._request("GET", f"/v1/blocks/{block_id}")
            return resp.content

        data = await self._retrying(f"GET block {block_id[:12]}", call)
        self.bytes_downloaded += len(data)
        if await trio.to_thread.run_sync(block_id_of, data) != block_id:
            raise errors.CorruptBlockError(f"block {block_id} from the server failed verification")
        return data
