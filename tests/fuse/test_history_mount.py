"""`cloudfs versions / restore / trash / undelete` on paths inside a real mount: the file is named
by its mount path (st_ino = node id), the server comes from the running mount, and the mount shows
a restored version and an undeleted file by itself (live sync)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fuse.blackbox import ServerView, read_file, wait_for, write_file
from tests.fuse.conftest import Mount, cloudfs_cmd
from tests.support import ServerProcess, User

pytestmark = pytest.mark.fuse


def cloudfs(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CLOUDFS_TOKEN"}
    return subprocess.run(cloudfs_cmd(*args), capture_output=True, text=True, timeout=60, env=env)


def test_history_of_a_file_in_a_mount(
    server: ServerProcess, alice: User, mount_factory: Callable[..., Mount]
) -> None:
    m = mount_factory(alice, device="laptop")
    view = ServerView(server, alice)
    token = f"--token={alice.token}"
    (m.path / "docs").mkdir()
    path = m.path / "docs" / "a.txt"
    texts = [b"one\n", b"two two\n", b"three three three\n"]
    for text in texts:
        write_file(path, text)  # each close commits a version (after the empty one of create)
    os.rename(path, m.path / "docs" / "renamed.txt")  # the node keeps its id and history
    path = m.path / "docs" / "renamed.txt"

    out = cloudfs("versions", str(path), token)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:]]
    assert [(r[0], r[1], r[5:]) for r in rows] == [
        ("4", "18", ["laptop", "(current)"]),
        ("3", "8", ["laptop"]),
        ("2", "4", ["laptop"]),
        ("1", "0", ["laptop"]),
    ]

    out = cloudfs("restore", str(path), "--version", "2", token)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{path}: restored version 2 as the new version 5 (4 B)"
    node_id = os.stat(path).st_ino
    assert view.content_of(node_id) == texts[0]
    wait_for(lambda: read_file(path) == texts[0], 10, "the mount to show the restored version")

    out = cloudfs("restore", str(path), "--version", "7", token)
    assert out.returncode == 1 and out.stderr.strip() == (
        f"cloudfs: error: {path} has no version 7 (it has 5, 4, 3, 2, 1)"
    )
    out = cloudfs("versions", str(m.path / "docs"), token)
    assert out.stderr.strip() == (
        f"cloudfs: error: {m.path / 'docs'} is a directory; only files have versions"
    )
    out = cloudfs("versions", str(m.path / "docs" / "missing.txt"), token)
    assert out.returncode == 1
    assert out.stderr.strip() == f"cloudfs: error: {m.path / 'docs' / 'missing.txt'}: no such file"

    # delete in the mount, find it in the trash, undelete into a folder given as a mount path
    os.unlink(path)
    out = cloudfs("trash", "--server", server.url, token)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:]]
    assert [r[:2] for r in rows] == [[str(node_id), "/docs/renamed.txt"]]
    (m.path / "back").mkdir()
    out = cloudfs("undelete", str(node_id), "--to", str(m.path / "back"), token)
    assert out.returncode == 0, out.stderr
    back = m.path / "back" / "renamed.txt"
    assert out.stdout.strip() == f"restored /docs/renamed.txt (id {node_id}) to {back}"
    wait_for(lambda: back.exists(), 10, "the undeleted file to appear in the mount")
    assert read_file(back) == texts[0]
    assert os.stat(back).st_ino == node_id
    out = cloudfs("versions", str(back), token)
    assert out.returncode == 0, out.stderr
    assert [line.split()[0] for line in out.stdout.splitlines()[1:]] == ["5", "4", "3", "2", "1"]


def test_undelete_to_the_original_place_when_the_name_is_free(
    server: ServerProcess, alice: User, mount_factory: Callable[..., Mount], tmp_path: Path
) -> None:
    m = mount_factory(alice, device="laptop")
    token = f"--token={alice.token}"
    path = m.path / "notes.txt"
    write_file(path, b"keep me")
    node_id = os.stat(path).st_ino
    os.unlink(path)
    write_file(path, b"a new file in its place")

    out = cloudfs("undelete", str(node_id), "--server", server.url, token)
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "cloudfs: error: /notes.txt exists again; restore it elsewhere with "
        f"`cloudfs undelete {node_id} --to PATH`"
    )
    os.unlink(path)
    out = cloudfs("undelete", str(node_id), "--server", server.url, token)
    assert out.returncode == 0, out.stderr
    wait_for(lambda: path.exists() and read_file(path) == b"keep me", 10, "notes.txt to come back")
