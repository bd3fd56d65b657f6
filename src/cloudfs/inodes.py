"""The inode table (layer 2): kernel inode numbers ↔ server node ids, lookup counts, open counts,
and deferred removal (an inode lives until the kernel forgot it and nothing has it open).

st_ino is the server node id (stable across rename and remount). The kernel's root inode is 1,
so the user's root node id and node id 1 swap places (a bijection).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cloudfs import errors
from cloudfs.protocol import Node

ROOT_INODE = 1


@dataclass
class Inode:
    """What the mount knows about one node while the kernel holds it."""

    ino: int
    node: Node
    lookups: int = 0
    opens: int = 0
    fetched_at_s: float = field(default_factory=time.monotonic)
    unlinked: bool = False  # removed or replaced (by us or the server); kept until forget
    blocks: tuple[tuple[str, int], ...] | None = None  # last known block list of `node.version`
    page_cache_version: int | None = None  # version whose pages the kernel may keep

    @property
    def node_id(self) -> int:
        return self.node.node_id


class InodeTable:
    """Inodes by kernel number. Not awaiting anything; all methods are synchronous."""

    def __init__(self, root_id: int) -> None:
        self.root_id = root_id
        self._by_ino: dict[int, Inode] = {}

    def ino_of(self, node_id: int) -> int:
        if node_id == self.root_id:
            return ROOT_INODE
        if node_id == ROOT_INODE:
            return self.root_id
        return node_id

    def node_id_of(self, ino: int) -> int:
        return self.ino_of(ino)  # the mapping is its own inverse

    def get(self, ino: int) -> Inode:
        """Raises NodeNotFoundError if the kernel names an inode we no longer hold."""
        inode = self._by_ino.get(ino)
        if inode is None:
            raise errors.NodeNotFoundError(f"inode {ino} is not known")
        return inode

    def find(self, ino: int) -> Inode | None:
        return self._by_ino.get(ino)

    def by_node(self, node_id: int) -> Inode | None:
        return self._by_ino.get(self.ino_of(node_id))

    def learn(self, node: Node, lookups: int = 0) -> Inode:
        """Record fresh metadata for `node` (adding `lookups` to its count)."""
        ino = self.ino_of(node.node_id)
        inode = self._by_ino.get(ino)
        if inode is None:
            inode = Inode(ino=ino, node=node)
            self._by_ino[ino] = inode
        else:
            if node.version != inode.node.version:
                inode.blocks = None
            inode.node = node
            inode.fetched_at_s = time.monotonic()
            inode.unlinked = False
        if node.blocks is not None:
            inode.blocks = node.blocks
        inode.lookups += lookups
        return inode

    def forget(self, ino: int, count: int) -> bool:
        """Drop `count` lookups; returns True if the inode was removed from the table."""
        inode = self._by_ino.get(ino)
        if inode is None:
            return False
        inode.lookups = max(0, inode.lookups - count)
        return self.maybe_drop(inode)

    def maybe_drop(self, inode: Inode, busy: bool = False) -> bool:
        if inode.ino == ROOT_INODE or inode.lookups > 0 or inode.opens > 0 or busy:
            return False
        self._by_ino.pop(inode.ino, None)
        return True

    def __len__(self) -> int:
        return len(self._by_ino)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._by_ino.values()))
