"""Concurrent edits (issue 3, "Conflict"): two devices of one account editing one file both keep
their content, the later one as `NAME (conflicted copy from DEVICE YYYY-MM-DD HHMMSS).EXT`;
two descriptors on the same mount are one lineage and never conflict.

Live sync between mounts is a later issue, so mount B is started after the file exists and the
outcome is checked over HTTP and through a fresh mount, never through B's live view.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fuse.blackbox import ServerView, det_bytes, read_file, write_file
from tests.support import User

pytestmark = pytest.mark.fuse

COPY_RE = re.compile(
    r"^(?P<stem>.+) \(conflicted copy from (?P<device>.+) (?P<stamp>\d{4}-\d{2}-\d{2} \d{6})\)"
    r"(?P<ext>\..*)?$"
)


def _conflicted(names: list[str]) -> list[re.Match[str]]:
    return [m for m in (COPY_RE.match(n) for n in names) if m]


def _check_stamp(stamp: str) -> None:
    when = dt.datetime.strptime(stamp, "%Y-%m-%d %H%M%S")
    now_utc = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    now_local = dt.datetime.now()
    assert min(abs(when - now_utc), abs(when - now_local)) < dt.timedelta(minutes=10), (
        f"conflicted-copy time {stamp!r} is not about now ({now_local:%Y-%m-%d %H%M%S} local)"
    )


def test_two_devices_edit_one_file(mount_factory: Callable[..., Any], alice: User) -> None:
    a = mount_factory(alice, device="a")
    write_file(Path(a.path) / "notes.txt", b"base version\n")
    b = mount_factory(alice, device="b")
    assert read_file(Path(b.path) / "notes.txt") == b"base version\n", "B must see the base"
    text_a = b"edited on device a\n" + det_bytes("a", 20_000)
    text_b = b"edited on device b\n" + det_bytes("b", 30_000)
    fa = open(Path(a.path) / "notes.txt", "r+b")  # noqa: SIM115 - both must be open at once
    fb = open(Path(b.path) / "notes.txt", "r+b")  # noqa: SIM115
    try:
        fa.truncate(0)
        fa.write(text_a)
        fb.truncate(0)
        fb.write(text_b)
        fa.close()  # A commits first: its content takes the name
        fb.close()  # B's base moved: B's content must become a conflicted copy, not an error
    finally:
        fa.close()
        fb.close()

    view = ServerView(a.server, alice)
    names = view.names()
    assert "notes.txt" in names, f"original name gone: {names}"
    assert view.content("notes.txt") == text_a, "the original name must keep A's (first) commit"
    copies = _conflicted(names)
    assert len(copies) == 1, f"expected exactly one conflicted copy, server lists {names}"
    m = copies[0]
    assert (m["stem"], m["device"], m["ext"]) == ("notes", "b", ".txt"), (
        f"conflicted copy should be 'notes (conflicted copy from b …).txt': {m.group(0)!r}"
    )
    _check_stamp(m["stamp"])
    assert view.content(m.group(0)) == text_b, "the conflicted copy must hold B's content"
    assert len(names) == 2, f"unexpected extra files: {names}"

    # a fresh mount shows both
    c = mount_factory(alice, device="c")
    assert sorted(os.listdir(c.path)) == sorted(names)
    assert read_file(Path(c.path) / "notes.txt") == text_a
    assert read_file(Path(c.path) / m.group(0)) == text_b
    # and B, once remounted, too
    b.remount()
    assert read_file(Path(b.path) / "notes.txt") == text_a
    assert read_file(Path(b.path) / m.group(0)) == text_b


def test_status_shows_conflict(mount_factory: Callable[..., Any], alice: User) -> None:
    from tests.fuse.conftest import cloudfs_cmd

    a = mount_factory(alice, device="a")
    write_file(Path(a.path) / "plan.md", b"v0")
    b = mount_factory(alice, device="b")
    with open(Path(b.path) / "plan.md", "r+b") as fb:
        fb.write(b"from b")
        write_file(Path(a.path) / "plan.md", b"from a")  # A commits while B has it open
    view = ServerView(a.server, alice)
    copies = _conflicted(view.names())
    assert [m["device"] for m in copies] == ["b"], f"expected one copy from b: {view.names()}"
    r = subprocess.run(
        cloudfs_cmd("status", str(b.path)), capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, f"cloudfs status failed: {r.stdout}{r.stderr}"
    assert "conflict" in r.stdout.lower() and "plan" in r.stdout, (
        f"cloudfs status should list the recent conflict on plan.md:\n{r.stdout}"
    )


def test_extensionless_and_multidot_names(mount_factory: Callable[..., Any], alice: User) -> None:
    a = mount_factory(alice, device="laptop")
    write_file(Path(a.path) / "Makefile", b"all:\n")
    write_file(Path(a.path) / "backup.tar.gz", b"gz0")
    b = mount_factory(alice, device="desktop")
    for name in ("Makefile", "backup.tar.gz"):
        with open(Path(b.path) / name, "ab") as fb:
            fb.write(b" b")
            with open(Path(a.path) / name, "ab") as fa:
                fa.write(b" a")
    view = ServerView(a.server, alice)
    names = view.names()
    copies = {m["stem"] + (m["ext"] or ""): m for m in _conflicted(names)}
    assert len(copies) == 2, f"expected two conflicted copies: {names}"
    mk = [m for m in _conflicted(names) if m.group(0).startswith("Makefile (")]
    assert len(mk) == 1 and mk[0]["ext"] is None and mk[0]["device"] == "desktop", (
        f"'Makefile (conflicted copy from desktop …)' expected: {names}"
    )
    gz = [m for m in _conflicted(names) if m.group(0).startswith("backup")]
    # EXT is the last suffix or the whole ".tar.gz"; both keep the file openable by its type
    assert len(gz) == 1 and gz[0].group(0) in (
        f"backup.tar (conflicted copy from desktop {gz[0]['stamp']}).gz",
        f"backup (conflicted copy from desktop {gz[0]['stamp']}).tar.gz",
    ), f"backup copy: {names}"
    assert view.content("Makefile") == b"all:\n a"
    assert view.content(mk[0].group(0)) == b"all:\n b"
    assert view.content(gz[0].group(0)) == b"gz0 b"


def test_two_descriptors_same_mount_never_conflict(mount: Any) -> None:
    view = ServerView(mount.server, mount.user)
    path = Path(mount.path) / "shared.txt"
    write_file(path, b"0123456789" * 10)
    f1 = open(path, "r+b")  # noqa: SIM115
    f2 = open(path, "r+b")  # noqa: SIM115
    try:
        f1.write(b"AAAA")
        f1.close()  # commits while f2 is still open on the old base
        f2.seek(50)
        f2.write(b"BBBB")
        f2.flush()
        os.fsync(f2.fileno())
        f2.seek(90)
        f2.write(b"CCCC")
        f2.close()
    finally:
        f1.close()
        f2.close()
    expected = bytearray(b"0123456789" * 10)
    expected[0:4] = b"AAAA"
    expected[50:54] = b"BBBB"
    expected[90:94] = b"CCCC"
    names = view.names()
    assert names == ["shared.txt"], f"a conflict with itself: {names}"
    assert view.content("shared.txt") == bytes(expected)
    assert read_file(path) == bytes(expected)


def test_edit_survives_delete_on_other_device(
    mount_factory: Callable[..., Any], alice: User
) -> None:
    a = mount_factory(alice, device="a")
    write_file(Path(a.path) / "todo.txt", b"v0")
    b = mount_factory(alice, device="b")
    edit = b"edited on b while a deleted it\n" + det_bytes("del", 5000)
    with open(Path(b.path) / "todo.txt", "r+b") as fb:
        fb.write(edit)
        fb.flush()
        os.unlink(Path(a.path) / "todo.txt")  # A deletes while B still has it open
    view = ServerView(a.server, alice)
    names = view.names()
    holders = [n for n in names if view.content(n) == edit]
    assert holders, f"B's edit was lost after A deleted the file: the server lists {names}"


def test_rename_on_one_device_edit_on_other(mount_factory: Callable[..., Any], alice: User) -> None:
    a = mount_factory(alice, device="a")
    write_file(Path(a.path) / "draft.txt", b"v0")
    b = mount_factory(alice, device="b")
    with open(Path(b.path) / "draft.txt", "r+b") as fb:
        fb.write(b"v1 from b")
        fb.flush()
        os.rename(Path(a.path) / "draft.txt", Path(a.path) / "final.txt")
    view = ServerView(a.server, alice)
    names = view.names()
    contents = {n: view.content(n) for n in names}
    assert b"v1 from b" in contents.values(), f"B's edit lost after A's rename: {contents}"
    assert "final.txt" in names, f"A's rename lost: {names}"


def test_both_devices_create_the_same_new_name(
    mount_factory: Callable[..., Any], alice: User
) -> None:
    a = mount_factory(alice, device="a")
    b = mount_factory(alice, device="b")
    fa = open(Path(a.path) / "new.txt", "wb")  # noqa: SIM115
    fb = open(Path(b.path) / "new.txt", "wb")  # noqa: SIM115
    try:
        fa.write(b"created on a")
        fb.write(b"created on b")
        fa.close()
        fb.close()
    finally:
        fa.close()
        fb.close()
    view = ServerView(a.server, alice)
    names = view.names()
    contents = sorted(view.content(n) for n in names)
    assert contents == [b"created on a", b"created on b"], (
        f"both new files must survive (one as a conflicted copy): {names} -> {contents}"
    )
    assert "new.txt" in names, names
