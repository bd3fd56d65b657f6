"""The import rules of docs/architecture.md ("Client layers"), checked rather than hoped for.

- the server never imports trio, lmdb, pyfuse3 or the client, except the client's pure layer-0
  modules listed in SHARED_PURE (no I/O, no trio), which both sides use;
- the client never imports the server (nor aiohttp, which is the server's framework);
- pyfuse3 is imported only by the kernel adapter and the entry points.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "src" / "cloudfs"
SERVER = ROOT / "server" / "cloudfs_server"

# Pure client modules the server may import too (standard library + sortedcontainers only).
SHARED_PURE = {"cloudfs.peers", "cloudfs.sizes", "cloudfs.durations"}

# Modules (file stems) of the client allowed to import pyfuse3: the adapter and entry points.
PYFUSE3_ALLOWED = {"fuse_ops", "adapter", "mount", "cli", "kernel"}


def full_imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def imports_of(path: Path, allowed: set[str] = frozenset()) -> set[str]:
    """Top-level package names imported by `path`, ignoring the fully named `allowed` modules."""
    return {name.split(".")[0] for name in full_imports_of(path) if name not in allowed}


def modules(package: Path) -> list[Path]:
    found = sorted(package.rglob("*.py"))
    assert found, f"expected Python modules under {package}"
    return found


def test_server_imports_no_client_side_libraries() -> None:
    forbidden = {"trio", "lmdb", "pyfuse3", "cloudfs", "httpx"}
    bad = {
        str(p.relative_to(ROOT)): sorted(imports_of(p, SHARED_PURE) & forbidden)
        for p in modules(SERVER)
    }
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"server modules import client-side libraries: {bad}"


def test_client_never_imports_the_server() -> None:
    forbidden = {"cloudfs_server", "aiohttp"}
    bad = {str(p.relative_to(ROOT)): sorted(imports_of(p) & forbidden) for p in modules(CLIENT)}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"client modules import the server side: {bad}"


def test_pyfuse3_only_in_the_kernel_adapter_and_entry_points() -> None:
    bad = [
        str(p.relative_to(ROOT))
        for p in modules(CLIENT)
        if "pyfuse3" in imports_of(p) and p.stem not in PYFUSE3_ALLOWED
    ]
    assert not bad, f"pyfuse3 imported outside the adapter/entry points: {bad}"


def test_shared_pure_modules_stay_pure() -> None:
    allowed_roots = {
        "__future__",
        "bisect",
        "collections",
        "typing",
        "heapq",
        "dataclasses",
        "sortedcontainers",
        "itertools",
        "functools",
        "re",
        "math",
    }
    for name in SHARED_PURE:
        path = ROOT / "src" / Path(*name.split(".")).with_suffix(".py")
        extra = imports_of(path) - allowed_roots
        assert not extra, f"{name} is shared with the server and must stay pure, imports {extra}"
