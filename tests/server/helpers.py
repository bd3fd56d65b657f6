"""Small helpers for server tests: block ids, a JSON client over `ServerProcess.request`."""

from __future__ import annotations

from typing import Any

import blake3

from tests.support import ServerProcess, User


def bid(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


class Api:
    """One user's view of a real server: thin wrappers that return (status, body)."""

    def __init__(self, server: ServerProcess, user: User, device: str = "test") -> None:
        self.server = server
        self.user = user
        self.device = device
        self._root: int | None = None

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        hdrs = {"X-Cloudfs-Device": self.device, **(headers or {})}
        hdrs["Authorization"] = f"Bearer {self.user.token}"
        return self.server.request(method, path, None, body=body, data=data, headers=hdrs)

    @property
    def root(self) -> int:
        if self._root is None:
            status, me = self.call("GET", "/v1/me")
            assert status == 200, me
            self._root = me["root"]
        return self._root

    def put_block(self, data: bytes) -> str:
        block_id = bid(data)
        status, body = self.call("PUT", f"/v1/blocks/{block_id}", data=data)
        assert status in (200, 201), body
        return block_id

    def mkdir(self, parent: int, name: str) -> dict[str, Any]:
        status, node = self.call(
            "POST", f"/v1/nodes/{parent}/children", {"name": name, "type": "dir"}
        )
        assert status == 201, node
        return node

    def create_file(
        self, parent: int, name: str, content: bytes = b"", chunk: int = 4
    ) -> dict[str, Any]:
        blocks = self.upload(content, chunk)
        status, node = self.call(
            "POST",
            f"/v1/nodes/{parent}/children",
            {"name": name, "type": "file", "size": len(content), "blocks": blocks},
        )
        assert status == 201, node
        return node

    def upload(self, content: bytes, chunk: int = 4) -> list[list[Any]]:
        parts = [content[i : i + chunk] for i in range(0, len(content), chunk)]
        return [[self.put_block(p), len(p)] for p in parts]

    def commit(self, node_id: int, base: int, content: bytes, chunk: int = 4) -> tuple[int, Any]:
        blocks = self.upload(content, chunk)
        return self.call(
            "PUT",
            f"/v1/nodes/{node_id}/content",
            {"base_version": base, "size": len(content), "blocks": blocks},
        )

    def read(self, node_id: int) -> bytes:
        status, node = self.call("GET", f"/v1/nodes/{node_id}?blocks=1")
        assert status == 200, node
        out = b""
        for block_id, _length in node["blocks"]:
            status, data = self.call("GET", f"/v1/blocks/{block_id}")
            assert status == 200, data
            assert isinstance(data, bytes)
            out += data
        return out
