"""Durability of the mount (issue 3): close() and fsync() return after the server has the data;
kill -9 of the client loses nothing; edits made while the server is down wait in a durable queue
that survives a client crash; every save is a version in the file's history.

The server's state is read over HTTP (`ServerView`), never through the mount under test.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fuse.blackbox import MiB, ServerView, det_bytes, read_file, wait_for, write_file
from tests.fuse.conftest import cloudfs_cmd

pytestmark = pytest.mark.fuse


def test_closed_file_is_on_the_server(mount: Any) -> None:
    view = ServerView(mount.server, mount.user)
    data = det_bytes("closed", 3 * MiB + 99)
    os.makedirs(Path(mount.path) / "docs" / "2026")
    write_file(Path(mount.path) / "docs" / "2026" / "report.bin", data)
    # no fsync, no unmount: close() alone must have committed
    node = view.node("docs/2026/report.bin")
    assert node["type"] == "file", node
    full = view.get(f"/v1/nodes/{node['id']}?blocks=1")
    assert full["size"] == len(data), f"server size {full['size']}, wrote {len(data)}"
    assert full["version"] >= 1, full
    assert sum(n for _, n in full["blocks"]) == len(data)
    assert view.blocks_content(full["blocks"]) == data, "server blocks do not spell the content"
    assert full["committed_by"] == mount.device, (
        f"commit should name the device {mount.device!r}: {full['committed_by']!r}"
    )


def test_kill9_after_fsync_keeps_data(mount: Any) -> None:
    view = ServerView(mount.server, mount.user)
    path = Path(mount.path) / "journal.bin"
    write_file(path, b"v1 committed by close\n")
    data = det_bytes("fsync-kill", 2 * MiB + 3)
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        mount.kill9()  # the descriptor is still open: no flush, no release ever reaches the client
    finally:
        try:
            os.close(fd)
        except OSError:
            pass  # the mount is gone under it (ENOTCONN) - that is the point
    assert view.content("journal.bin") == data, "fsync returned but the server lacks the data"
    mount.start()
    assert read_file(path) == data, "content after kill -9 and remount"


def test_kill9_after_close_keeps_data(mount: Any) -> None:
    view = ServerView(mount.server, mount.user)
    files = {f"f{i}.bin": det_bytes(f"close-kill-{i}", 100_000 * (i + 1)) for i in range(5)}
    for name, data in files.items():
        write_file(Path(mount.path) / name, data)
    mount.kill9()
    for name, data in files.items():
        assert view.content(name) == data, f"{name}: close returned but the server lacks it"
    mount.start()
    for name, data in files.items():
        assert read_file(Path(mount.path) / name) == data, f"{name} after kill -9 and remount"


@pytest.mark.slow
def test_offline_edits_queued_survive_kill9_and_replay(mount: Any) -> None:
    """Server down at close(): close still succeeds within a bounded time (the edit is queued
    durably); the client is then killed; server and client restart; the queued edits reach the
    server. One file was opened before the server went down, the other (known, cached) after.
    """
    server = mount.server
    view = ServerView(server, mount.user)
    root = Path(mount.path)
    write_file(root / "opened-online.txt", b"online version 1\n")
    write_file(root / "opened-offline.txt", b"online version 2\n")
    ids = {n: view.node(n)["id"] for n in ("opened-online.txt", "opened-offline.txt")}
    edits = {n: det_bytes(n, 1 * MiB + len(n)) for n in ids}
    f1 = open(root / "opened-online.txt", "r+b")  # noqa: SIM115
    f2 = None
    server.stop()
    try:
        t0 = time.monotonic()
        f1.write(edits["opened-online.txt"])
        f1.close()
        close_s = time.monotonic() - t0
        assert close_s < 60, f"close() with the server down took {close_s:.1f}s (must be bounded)"
        f2 = open(root / "opened-offline.txt", "r+b")  # noqa: SIM115
        f2.write(edits["opened-offline.txt"])
        f2.close()
        st = subprocess.run(cloudfs_cmd("status", str(root)), capture_output=True, text=True,
                            timeout=60)  # fmt: skip
        assert st.returncode == 0, f"cloudfs status failed offline: {st.stdout}{st.stderr}"
        assert re.search(r"(?i)pending[^\n]*\b2\b", st.stdout), (
            f"cloudfs status should show the 2 queued commits:\n{st.stdout}"
        )
    finally:
        for f in (f1, f2):
            if f is not None and not f.closed:
                try:
                    f.close()
                except OSError:
                    pass
        mount.kill9()  # crash with the edits only in the local queue
        server.start()  # same data dir, new port; Mount.start() uses the new URL
    for name, node_id in ids.items():
        assert view.get(f"/v1/nodes/{node_id}")["size"] != len(edits[name]), "server was down?"
    mount.start()
    for name, node_id in ids.items():
        wait_for(
            lambda node_id=node_id, name=name: (
                view.get(f"/v1/nodes/{node_id}")["size"] == len(edits[name])
            ),
            30,
            f"the queued edit of {name} to reach the server after restart",
        )
        assert view.content(name) == edits[name], f"{name}: replayed content differs"
        assert read_file(root / name) == edits[name]


def test_three_saves_are_three_versions(mount: Any) -> None:
    view = ServerView(mount.server, mount.user)
    path = Path(mount.path) / "essay.txt"
    saves = [det_bytes(f"essay-{i}", 50_000 + i * 1000) for i in range(3)]
    for data in saves:
        with open(path, "wb") as f:  # O_TRUNC rewrite, as many programs save
            f.write(data)
    node = view.node("essay.txt")
    versions = view.versions(node["id"])
    assert len(versions) >= 3, f"expected >= 3 versions after 3 saves, got {versions}"
    nums = [v["version"] for v in versions]
    assert nums == sorted(nums, reverse=True), f"versions not newest first: {nums}"
    assert versions[0]["version"] == node["version"]
    # the three newest versions hold the three saves, newest first
    for v, data in zip(versions[:3], reversed(saves), strict=True):
        assert v["size"] == len(data), f"version {v['version']}: size {v['size']} != {len(data)}"
        assert view.version_content(node["id"], v["version"]) == data, (
            f"version {v['version']} content differs"
        )
        assert v["device"] == mount.device, v


def test_editor_saves_keep_history(mount: Any) -> None:
    """write temp + rename over: the file keeps one history (the move takes it over)."""
    view = ServerView(mount.server, mount.user)
    root = Path(mount.path)
    saves = [f"draft {i}\n".encode() * (i + 1) for i in range(3)]
    for i, data in enumerate(saves):
        write_file(root / f".notes.txt.swp{i}", data, fsync=True)
        os.rename(root / f".notes.txt.swp{i}", root / "notes.txt")
    assert view.names() == ["notes.txt"]
    node = view.node("notes.txt")
    versions = view.versions(node["id"])
    assert len(versions) >= 3, f"editor-style saves lost history: {versions}"
    assert [view.version_content(node["id"], v["version"]) for v in versions[:3]] == saves[::-1]


def test_kill9_during_unsynced_write_leaves_a_consistent_file(mount: Any) -> None:
    """kill -9 in the middle of rewriting a file (no fsync, no close): after restart the file is
    the old version or the old one overlaid by a prefix of what was written, never torn inside a
    write, and the server holds exactly what the mount shows."""
    view = ServerView(mount.server, mount.user)
    path = Path(mount.path) / "db.bin"
    old = det_bytes("old", 16 * MiB)
    write_file(path, old)
    new = det_bytes("new", 16 * MiB)
    fd = os.open(path, os.O_WRONLY)
    try:
        for i in range(6):
            os.pwrite(fd, new[i * MiB : (i + 1) * MiB], i * MiB)
        mount.kill9()
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    mount.start()
    got = read_file(path)
    allowed = [new[: k * MiB] + old[k * MiB :] for k in range(7)]
    mib = [i for i in range(16) if got[i * MiB : (i + 1) * MiB] != old[i * MiB : (i + 1) * MiB]]
    assert got in allowed, (
        f"after kill -9 the file is neither the old version nor old + a written prefix "
        f"(size {len(got)}, MiB ranges differing from the old version: {mib})"
    )
    wait_for(lambda: view.content("db.bin") == got, 15, "the server to hold what the mount shows")


BLOCK_PUT = re.compile(rb'"PUT /v1/blocks/[0-9a-f]{64} HTTP/1\.[01]" 20[01] ')


def test_sequential_writer_uploads_before_close(mount: Any) -> None:
    """Finished chunks of a file being written go to the server while it is still open, so
    close() only waits for the tail (seen in the server's access log, not timed). The server is
    paused (SIGSTOP) while the first uploads are in flight and the writer goes on, as happens
    whenever a writer is faster than the network."""
    server = mount.server
    log = server.log_path
    since = log.stat().st_size
    data = det_bytes("stream", 48 * MiB)
    step = 4 * MiB
    with open(Path(mount.path) / "stream.bin", "wb", buffering=0) as f:
        f.write(data[: 2 * step])  # enough for the client to start sealing and uploading
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(0.5)  # the first uploads are now waiting on the paused server
            for i in range(2 * step, len(data), step):
                f.write(data[i : i + step])
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        wait_for(
            lambda: len(BLOCK_PUT.findall(log.read_bytes()[since:])) >= 20,
            10,
            "block uploads while the file is still open (48 MiB written, ~1 MiB chunks)",
        )
    assert ServerView(server, mount.user).content("stream.bin") == data
