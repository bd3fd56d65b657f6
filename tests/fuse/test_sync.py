"""Live sync between mounts (issue 4), black-box: real server process, real FUSE mounts of one
account with separate cache dirs and device names. Every observation is made with the ordinary
`os` calls a user's program would make, polling until the new state shows, within 1 s of the
change returning on the other mount (or the API)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fuse.blackbox import ServerView, det_bytes, read_file, write_file
from tests.fuse.conftest import Mount, cloudfs_cmd
from tests.support import ServerProcess, User, server_cmd

VISIBLE_S = 1.0  # issue 4: a change is visible on every other mount within a second


def within(
    pred: Callable[[], Any], what: str, timeout_s: float = VISIBLE_S, since: float | None = None
) -> float:
    """Poll `pred` (OSError counts as "not yet") until truthy, at most `timeout_s` after `since`
    (the moment the change returned; default now). Returns the seconds from `since`."""
    t0 = time.monotonic() if since is None else since
    last: Any = None
    while True:
        try:
            last = pred()
        except OSError as exc:
            last = exc
        else:
            if last:
                return time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"not visible within {timeout_s} s: {what} (last: {last!r})")
        time.sleep(0.005)


def status(m: Mount) -> dict[str, Any]:
    out = subprocess.run(
        cloudfs_cmd("status", "--json", str(m.path)), capture_output=True, text=True, timeout=10
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def mode_of(path: Path) -> int:
    return os.stat(path).st_mode & 0o7777


def wait_live(*mounts: Mount) -> None:
    for m in mounts:
        within(lambda m=m: status(m)["sync"]["live"], f"{m.device}: change feed live", 10.0)


def api(server: ServerProcess, user: User) -> Callable[..., Any]:
    def call(method: str, path: str, body: object = None) -> Any:
        code, obj = server.request(method, path, user, body=body)
        assert code < 300, (method, path, code, obj)
        return obj

    return call


def test_two_mounts_see_each_kind_of_change(
    mount_factory: Callable[..., Mount], alice: User, server: ServerProcess
) -> None:
    a = mount_factory(alice, device="laptop")
    b = mount_factory(alice, device="desktop")
    wait_live(a, b)
    A, B = a.path, b.path
    lat: dict[str, float] = {}
    os.mkdir(A / "docs")
    lat["mkdir"] = within(lambda: (B / "docs").is_dir(), "mkdir docs")
    assert os.listdir(B / "docs") == []  # B has listed it: later names must appear in it

    write_file(A / "docs" / "a.txt", b"one")
    lat["create"] = within(lambda: read_file(B / "docs" / "a.txt") == b"one", "create a.txt")
    before = os.stat(B / "docs" / "a.txt")

    write_file(A / "docs" / "a.txt", b"second version")
    lat["modify"] = within(
        lambda: (
            os.stat(B / "docs" / "a.txt").st_size == 14
            and read_file(B / "docs" / "a.txt") == b"second version"
        ),
        "modify a.txt (size and content)",
    )
    assert os.stat(B / "docs" / "a.txt").st_mtime_ns >= before.st_mtime_ns

    os.chmod(A / "docs" / "a.txt", 0o600)
    lat["chmod"] = within(lambda: mode_of(B / "docs" / "a.txt") == 0o600, "chmod 600")

    os.utime(A / "docs" / "a.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    lat["utime"] = within(
        lambda: os.stat(B / "docs" / "a.txt").st_mtime_ns == 1_600_000_000_123_456_789, "utime"
    )

    os.rename(A / "docs" / "a.txt", A / "docs" / "b.txt")
    lat["rename"] = within(
        lambda: (
            sorted(os.listdir(B / "docs")) == ["b.txt"]
            and not os.path.exists(B / "docs" / "a.txt")
            and read_file(B / "docs" / "b.txt") == b"second version"
        ),
        "rename a.txt -> b.txt",
    )

    os.mkdir(A / "archive")
    within(lambda: os.listdir(B / "archive") == [], "mkdir archive")
    os.rename(A / "docs" / "b.txt", A / "archive" / "b.txt")
    lat["move"] = within(
        lambda: os.listdir(B / "docs") == [] and os.listdir(B / "archive") == ["b.txt"],
        "move docs/b.txt -> archive/b.txt",
    )

    write_file(A / "archive" / "other.txt", b"replacement")
    within(lambda: (B / "archive" / "other.txt").exists(), "create other.txt")
    os.replace(A / "archive" / "other.txt", A / "archive" / "b.txt")  # rename over
    lat["replace"] = within(
        lambda: (
            os.listdir(B / "archive") == ["b.txt"]
            and read_file(B / "archive" / "b.txt") == b"replacement"
        ),
        "rename other.txt over b.txt",
    )

    os.unlink(A / "archive" / "b.txt")
    lat["delete"] = within(
        lambda: os.listdir(B / "archive") == [] and not (B / "archive" / "b.txt").exists(),
        "delete b.txt",
    )
    os.rmdir(A / "archive")
    lat["rmdir"] = within(lambda: "archive" not in os.listdir(B), "rmdir archive")

    # through the API (another device with no mount): restore from the trash, version restore
    call = api(server, alice)
    trashed = [e for e in call("GET", "/v1/trash")["entries"] if e["name"] == "b.txt"]
    assert trashed, "b.txt should be in the trash"
    docs_id = call("GET", f"/v1/nodes/{call('GET', '/v1/me')['root']}/lookup?name=docs")["id"]
    call("POST", f"/v1/trash/{trashed[0]['id']}/restore", {"parent": docs_id, "name": "back.txt"})
    lat["restore"] = within(
        lambda: (
            os.listdir(B / "docs") == ["back.txt"]
            and read_file(B / "docs" / "back.txt") == b"replacement"
            and os.listdir(A / "docs") == ["back.txt"]
        ),
        "trash restore into docs/back.txt on both mounts",
    )
    versions = call("GET", f"/v1/nodes/{trashed[0]['id']}/versions")["versions"]
    oldest = min(v["version"] for v in versions)
    call("POST", f"/v1/nodes/{trashed[0]['id']}/versions/{oldest}/restore")
    expected = ServerView(server, alice).content("docs/back.txt")
    lat["version restore"] = within(
        lambda: (
            read_file(B / "docs" / "back.txt") == expected
            and read_file(A / "docs" / "back.txt") == expected
        ),
        "version restore on both mounts",
    )
    print("visible after (ms):", {k: round(v * 1000, 1) for k, v in lat.items()})

    # the writer's own changes came back through the feed without invalidating anything
    st_a, st_b = status(a)["sync"], status(b)["sync"]
    assert st_a["echoes"] > 10 and st_b["applied"] > 10, (st_a, st_b)
    assert st_a["applied"] <= 2, f"laptop applied its own changes: {st_a}"  # only the API ones


def test_listed_tree_is_served_without_server_calls(
    mount_factory: Callable[..., Mount], alice: User, server: ServerProcess
) -> None:
    """`ls -lR` of a tree listed before makes no server call, on the mount that wrote it (its own
    changes came back through the feed and dropped nothing) and on another mount."""
    a = mount_factory(alice, device="writer")
    b = mount_factory(alice, device="reader")
    wait_live(a, b)
    for d in range(3):
        os.makedirs(a.path / f"d{d}" / "sub")
        for f in range(5):
            write_file(a.path / f"d{d}" / f"f{f}", b"x" * f)
            write_file(a.path / f"d{d}" / "sub" / f"g{f}", b"y" * f)
    os.chmod(a.path / "d1" / "f1", 0o600)
    latest = api(server, alice)("GET", "/v1/changes?cursor=latest")["cursor"]
    within(
        lambda: status(a)["sync"]["cursor"] == status(b)["sync"]["cursor"] == latest,
        "both mounts applied every change",
        5.0,
    )

    def ls_lr(m: Mount) -> str:
        out = subprocess.run(["ls", "-lR", str(m.path)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout.replace(str(m.path), "MNT")

    first = ls_lr(a)
    assert ls_lr(b) == first
    assert first.count(" f4\n") == 3 and first.count(" g4\n") == 3 and "-rw------- " in first
    before = {m.device: status(m)["requests"] for m in (a, b)}
    time.sleep(1.2)  # past the kernel's 1 s attribute and entry timeouts: LMDB answers now
    for _ in range(2):
        assert ls_lr(a) == first and ls_lr(b) == first
    st_a, st_b = status(a), status(b)
    made = {m: st["requests"] - before[m] for m, st in (("writer", st_a), ("reader", st_b))}
    assert made == {"writer": 0, "reader": 0}, f"ls -lR of a listed tree asked the server: {made}"
    assert st_a["sync"]["applied"] == 0, f"the writer applied its own changes: {st_a['sync']}"
    assert st_a["sync"]["echoes"] >= 40 and st_b["sync"]["applied"] >= 40
    human = subprocess.run(cloudfs_cmd("status", str(a.path)), capture_output=True, text=True)
    assert "live sync: live at change" in human.stdout, human.stdout
    # ... and a change is still seen (the listing is kept current, not frozen)
    write_file(a.path / "d2" / "sub" / "new", b"new")
    within(lambda: "new" in os.listdir(b.path / "d2" / "sub"), "new name in a cached listing")


def test_five_mounts(mount_factory: Callable[..., Mount], alice: User) -> None:
    mounts = [mount_factory(alice, device=f"dev{i}") for i in range(5)]
    for m in mounts:
        assert os.listdir(m.path) == []
    worst: dict[str, float] = {}

    def on_all(what: str, pred: Callable[[Mount], Any], since: float) -> None:
        worst[what] = max(
            within(lambda m=m: pred(m), f"{what} on {m.device}", since=since) for m in mounts
        )

    for w, writer in enumerate(mounts):
        name, data = f"from{w}.txt", det_bytes(w, 3000 + w)
        write_file(writer.path / name, data)
        on_all(
            f"create by dev{w}",
            lambda m, n=name, d=data: read_file(m.path / n) == d,
            time.monotonic(),
        )
    write_file(mounts[2].path / "from0.txt", b"rewritten by dev2")
    on_all(
        "modify",
        lambda m: read_file(m.path / "from0.txt") == b"rewritten by dev2",
        time.monotonic(),
    )
    os.unlink(mounts[4].path / "from1.txt")
    on_all("delete", lambda m: "from1.txt" not in os.listdir(m.path), time.monotonic())
    os.rename(mounts[1].path / "from3.txt", mounts[1].path / "renamed.txt")
    on_all(
        "rename",
        lambda m: (
            sorted(os.listdir(m.path)) == ["from0.txt", "from2.txt", "from4.txt", "renamed.txt"]
        ),
        time.monotonic(),
    )
    print("slowest of 5 mounts (ms):", {k: round(v * 1000, 1) for k, v in worst.items()})


def test_reader_reopens_and_sees_new_content_blocks_stay_warm(
    mount_factory: Callable[..., Mount], alice: User
) -> None:
    a = mount_factory(alice, device="editor")
    b = mount_factory(alice, device="viewer")
    wait_live(a, b)
    big = det_bytes("big", 6 << 20)
    write_file(a.path / "big.bin", big)
    within(lambda: os.path.getsize(b.path / "big.bin") == len(big), "big.bin on viewer")
    held = open(b.path / "big.bin", "rb")  # noqa: SIM115 - kept open across the change
    try:
        assert held.read() == big
        d0 = status(b)["downloaded_bytes"]
        changed = big + b"appended tail"
        write_file(a.path / "big.bin", changed)
        within(lambda: os.path.getsize(b.path / "big.bin") == len(changed), "new size")
        # a new open (the old descriptor is still open) returns the new content
        within(lambda: read_file(b.path / "big.bin") == changed, "new content on reopen")
        fetched = status(b)["downloaded_bytes"] - d0
        assert fetched < len(big) // 2, f"re-read fetched {fetched} bytes: cached blocks dropped"
    finally:
        held.close()
    assert read_file(b.path / "big.bin") == changed


def test_open_writer_is_not_overwritten(
    mount_factory: Callable[..., Mount], alice: User, server: ServerProcess
) -> None:
    a = mount_factory(alice, device="alpha")
    b = mount_factory(alice, device="beta")
    wait_live(a, b)
    write_file(a.path / "shared.txt", b"base")
    within(lambda: read_file(b.path / "shared.txt") == b"base", "base on beta")
    with open(b.path / "shared.txt", "r+b") as f:
        f.write(b"BETA EDIT")
        f.flush()
        # (no subprocess while f is open: a fork's close of the inherited descriptor is a
        # close(2) for FUSE, whose flush would commit beta's edit early)
        write_file(a.path / "shared.txt", b"alpha edit")
        write_file(a.path / "marker", b"")  # changes apply in order: marker seen => edit seen
        within(lambda: (b.path / "marker").exists(), "beta heard of alpha's commit")
        f.seek(0)
        assert f.read() == b"BETA EDIT", "the writer's content changed under it"
    view = ServerView(server, alice)
    within(
        lambda: len(os.listdir(a.path)) == 3,
        f"conflicted copy on alpha {view.names('')} {view.content('shared.txt')!r}",
    )
    listing = sorted(os.listdir(a.path))
    listing.remove("marker")
    copy = [n for n in listing if "conflicted copy from beta" in n]
    assert copy, listing
    assert read_file(a.path / "shared.txt") == b"alpha edit"
    assert read_file(a.path / copy[0]) == b"BETA EDIT"
    within(lambda: sorted(os.listdir(b.path)) == sorted([*listing, "marker"]), "names on beta")
    assert read_file(b.path / "shared.txt") == b"alpha edit"


def test_stopped_mount_catches_up_then_compacted_log_rescans(
    mount_factory: Callable[..., Mount], alice: User, server: ServerProcess
) -> None:
    a = mount_factory(alice, device="always-on")
    b = mount_factory(alice, device="sometimes")
    wait_live(a, b)
    os.makedirs(a.path / "d" / "e")
    write_file(a.path / "d" / "keep.txt", b"keep")
    write_file(a.path / "d" / "gone.txt", b"gone")
    write_file(a.path / "d" / "edit.txt", b"v1")
    within(
        lambda: sorted(os.listdir(b.path / "d")) == ["e", "edit.txt", "gone.txt", "keep.txt"],
        "initial tree on b",
    )
    assert read_file(b.path / "d" / "edit.txt") == b"v1"

    def offline_changes(tag: str) -> None:
        if tag == "1":
            os.unlink(a.path / "d" / "gone.txt")
        write_file(a.path / "d" / f"new{tag}.txt", tag.encode())
        write_file(a.path / "d" / "edit.txt", f"v{tag}-edited".encode())
        os.rename(a.path / "d" / "keep.txt", a.path / "d" / "e" / f"kept{tag}.txt")
        write_file(a.path / "d" / "keep.txt", b"keep again")
        os.chmod(a.path / "d" / "keep.txt", 0o640)

    def expect_current(tag: str) -> None:
        assert sorted(os.listdir(b.path / "d")) == ["e", "edit.txt", "keep.txt", f"new{tag}.txt"]
        assert read_file(b.path / "d" / "edit.txt") == f"v{tag}-edited".encode()
        assert f"kept{tag}.txt" in os.listdir(b.path / "d" / "e")
        assert mode_of(b.path / "d" / "keep.txt") == 0o640
        assert not (b.path / "d" / "gone.txt").exists()

    # 1. stopped while changes happen; catches up from its saved cursor
    b.stop()
    offline_changes("1")
    b.start()
    t0 = time.monotonic()
    within(lambda: status(b)["sync"]["live"], "b live again", 10.0)
    expect_current("1")
    log = b.log_path.read_text()
    assert "catching up from cursor" in log, log[-2000:]
    print(f"caught up and listed in {(time.monotonic() - t0) * 1000:.0f} ms after start")
    assert status(b)["sync"]["rescans"] == 0

    # 2. killed (kill -9) while changes happen; catches up from the cursor it had saved
    b.kill9()
    os.unlink(a.path / "d" / "new1.txt")
    offline_changes("2")
    b.start()
    within(lambda: read_file(b.path / "d" / "edit.txt") == b"v2-edited", "b after kill -9", 10.0)
    expect_current("2")

    # 3. stopped, and the server compacts its log past b's cursor: b must rescan
    b.stop()
    os.unlink(a.path / "d" / "new2.txt")
    offline_changes("3")
    out = subprocess.run(
        server_cmd("compact-log", "--data", str(server.data_dir), "--keep", "0"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0 and "dropped" in out.stdout, (out.stdout, out.stderr)
    b.start()
    within(lambda: status(b)["sync"]["rescans"] == 1, "b rescanned", 10.0)
    within(lambda: status(b)["sync"]["live"], "b live after rescan", 10.0)
    expect_current("3")
    assert "compacted past cursor" in b.log_path.read_text()
    write_file(a.path / "d" / "after.txt", b"after")
    within(lambda: "after.txt" in os.listdir(b.path / "d"), "live again after the rescan")
