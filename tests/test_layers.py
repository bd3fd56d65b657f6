"""The import rules of ../shared/STYLE.md, checked rather than hoped for.

- the server never imports trio, lmdb, pyfuse3 or the client;
- the client never imports the server (nor aiohttp, which is the server's framework);
- pyfuse3 is imported only by the kernel adapter and the entry points.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "src" / "cloudfs"
SERVER = ROOT / "server" / "cloudfs_server"

# Modules (file stems) of the client allowed to import pyfuse3: the adapter and entry points.
PYFUSE3_ALLOWED = {"fuse_ops", "adapter", "mount", "cli", "kernel"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def modules(package: Path) -> list[Path]:
    found = sorted(package.rglob("*.py"))
    assert found, f"expected Python modules under {package}"
    return found


def test_server_imports_no_client_side_libraries() -> None:
    forbidden = {"trio", "lmdb", "pyfuse3", "cloudfs", "httpx"}
    bad = {str(p.relative_to(ROOT)): sorted(imports_of(p) & forbidden) for p in modules(SERVER)}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"server modules import client-side libraries: {bad}"


def test_client_never_imports_the_server() -> None:
    forbidden = {"cloudfs_server", "aiohttp"}
    bad = {str(p.relative_to(ROOT)): sorted(imports_of(p) & forbidden) for p in modules(CLIENT)}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"client modules import the server side: {bad}"


def test_pyfuse3_only_in_the_kernel_adapter_and_entry_points() -> None:
    bad = [str(p.relative_to(ROOT)) for p in modules(CLIENT)
           if "pyfuse3" in imports_of(p) and p.stem not in PYFUSE3_ALLOWED]
    assert not bad, f"pyfuse3 imported outside the adapter/entry points: {bad}"
