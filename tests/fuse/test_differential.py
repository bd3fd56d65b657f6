"""Differential test: the same random syscalls on the mount and on a local directory must give the
same results and the same errno (CONTRIBUTING.md, "Tests"). Tiny files, tiny chunks and a small name
pool so that collisions (rename over, rmdir of a full folder, writes through descriptors of
renamed or unlinked files) and chunk boundaries happen often.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.fuse.blackbox import fresh_dir, standalone_mount

pytestmark = pytest.mark.fuse

FILES = ["a", "b", "d/a", "d/c", "d/f/z"]
DIRS = ["d", "e", "d/f"]
PATHS = FILES + DIRS
OPEN_FLAGS = [os.O_RDWR, os.O_RDWR | os.O_APPEND, os.O_RDWR | os.O_TRUNC, os.O_RDONLY]
MAX_FDS = 4


def outcome(fn: Callable[[], Any]) -> Any:
    try:
        return ("ok", fn())
    except OSError as exc:
        return ("errno", exc.errno)


def snapshot(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames:
            out[os.path.normpath(os.path.join(rel, name))] = "dir"
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                out[os.path.normpath(os.path.join(rel, name))] = f.read()
    return out


class MountVsLocal(RuleBasedStateMachine):
    roots: tuple[Path, Path]  # set per run: (mount folder, local folder)

    def __init__(self) -> None:
        super().__init__()
        mnt, local = self.roots
        for r in (mnt, local):
            if r.exists():
                shutil.rmtree(r)
            r.mkdir()
        self.fds: list[tuple[int, int, str]] = []

    def both(self, op: Callable[[Path], Any], what: str) -> Any:
        mnt, local = self.roots
        got = outcome(lambda: op(mnt))
        want = outcome(lambda: op(local))
        assert got == want, f"{what}: mount gave {got!r}, a local folder gives {want!r}"
        return got

    def teardown(self) -> None:
        for fm, fl, _ in self.fds:
            for fd in (fm, fl):
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.fds = []

    @rule(path=st.sampled_from(FILES), data=st.binary(max_size=300), offset=st.integers(0, 600))
    def write(self, path: str, data: bytes, offset: int) -> None:
        def op(r: Path) -> int:
            fd = os.open(r / path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                return os.pwrite(fd, data, offset)
            finally:
                os.close(fd)

        self.both(op, f"write {len(data)} bytes at {offset} to {path}")

    @rule(path=st.sampled_from(FILES), size=st.integers(0, 900))
    def truncate(self, path: str, size: int) -> None:
        self.both(lambda r: os.truncate(r / path, size), f"truncate {path} to {size}")

    @rule(path=st.sampled_from(PATHS))
    def read(self, path: str) -> None:
        def op(r: Path) -> bytes:
            with open(r / path, "rb") as f:
                return f.read()

        self.both(op, f"read {path}")

    @rule(path=st.sampled_from(PATHS))
    def stat(self, path: str) -> None:
        def op(r: Path) -> tuple[bool, int]:
            st_ = os.stat(r / path)
            return (os.path.isdir(r / path), 0 if os.path.isdir(r / path) else st_.st_size)

        self.both(op, f"stat {path}")

    @rule(path=st.sampled_from(FILES))
    def unlink(self, path: str) -> None:
        self.both(lambda r: os.unlink(r / path), f"unlink {path}")

    @rule(path=st.sampled_from(DIRS))
    def mkdir(self, path: str) -> None:
        self.both(lambda r: os.mkdir(r / path), f"mkdir {path}")

    @rule(path=st.sampled_from(DIRS))
    def rmdir(self, path: str) -> None:
        self.both(lambda r: os.rmdir(r / path), f"rmdir {path}")

    @rule(src=st.sampled_from(PATHS), dst=st.sampled_from(PATHS))
    def rename(self, src: str, dst: str) -> None:
        self.both(lambda r: os.rename(r / src, r / dst), f"rename {src} -> {dst}")

    @rule(path=st.sampled_from(["", *DIRS]))
    def listdir(self, path: str) -> None:
        self.both(lambda r: sorted(os.listdir(r / path)), f"listdir {path or '.'}")

    @precondition(lambda self: len(self.fds) < MAX_FDS)
    @rule(path=st.sampled_from(FILES), flags=st.sampled_from(OPEN_FLAGS))
    def open_fd(self, path: str, flags: int) -> None:
        mnt, local = self.roots
        got = outcome(lambda: os.open(mnt / path, flags))
        want = outcome(lambda: os.open(local / path, flags))
        if got[0] == "ok" and want[0] == "ok":
            self.fds.append((got[1], want[1], path))
            return
        for kind, fd in (got, want):
            if kind == "ok":
                os.close(fd)
        assert got == want, f"open {path} flags {flags:#o}: mount {got!r}, local {want!r}"

    @precondition(lambda self: self.fds)
    @rule(i=st.integers(0, MAX_FDS - 1), data=st.binary(max_size=200), offset=st.integers(0, 500))
    def fd_write(self, i: int, data: bytes, offset: int) -> None:
        fm, fl, path = self.fds[i % len(self.fds)]
        got = outcome(lambda: os.pwrite(fm, data, offset))
        want = outcome(lambda: os.pwrite(fl, data, offset))
        assert got == want, f"pwrite on a descriptor of {path}: mount {got!r}, local {want!r}"

    @precondition(lambda self: self.fds)
    @rule(i=st.integers(0, MAX_FDS - 1))
    def fd_read(self, i: int) -> None:
        fm, fl, path = self.fds[i % len(self.fds)]
        got = outcome(lambda: (os.fstat(fm).st_size, os.pread(fm, 2000, 0)))
        want = outcome(lambda: (os.fstat(fl).st_size, os.pread(fl, 2000, 0)))
        assert got == want, f"fstat+pread on a descriptor of {path}: mount {got!r}, local {want!r}"

    @precondition(lambda self: self.fds)
    @rule(i=st.integers(0, MAX_FDS - 1))
    def fd_close(self, i: int) -> None:
        fm, fl, path = self.fds.pop(i % len(self.fds))
        got, want = outcome(lambda: os.close(fm)), outcome(lambda: os.close(fl))
        assert got == want, f"close of a descriptor of {path}: mount {got!r}, local {want!r}"

    @invariant()
    def same_tree(self) -> None:
        mnt, local = self.roots
        got, want = snapshot(mnt), snapshot(local)
        assert got == want, f"trees differ:\nmount {got!r}\nlocal {want!r}"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # tiny content-defined chunks (avg 256 B, min 64, max 1 KiB), so these small files span
    # several chunks and every write crosses chunk boundaries
    base = tmp_path_factory.mktemp("differential")
    with standalone_mount(base, extra_args=("--chunk-size", "256")) as m:
        yield m


def test_mount_behaves_like_a_local_folder(shared: Any, tmp_path: Path) -> None:
    base = fresh_dir(shared, "differential")
    MountVsLocal.roots = (base / "run", tmp_path / "run")
    run_state_machine_as_test(
        MountVsLocal,
        settings=settings(
            max_examples=25,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        ),
    )
