"""What the client uploads (issue 3, "Writes and commit on close"), measured through
`cloudfs status --json` of a real mount: a small edit to a big file, an append, and an insertion
at the front cost uploads proportional to the change, not to the file; a sequential writer's
data is cut into blocks (and uploaded) while it writes, before close()."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fuse.blackbox import MiB, ServerView, det_bytes, read_file, write_file
from tests.support import User

BIN = Path(sys.executable).parent
AVG = 64 * 1024  # --chunk-size: average chunk; the maximum is 4x
MAX_CHUNK = 4 * AVG

pytestmark = pytest.mark.fuse


def status(mount: Any) -> dict[str, Any]:
    out = subprocess.run(
        [str(BIN / "cloudfs"), "status", str(mount.path), "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def uploaded(mount: Any) -> int:
    return int(status(mount)["uploaded_bytes"])


@pytest.fixture
def small_chunks(mount_factory: Any, alice: User) -> Any:
    return mount_factory(alice, device="chunky", extra_args=("--chunk-size", "64K"))


def test_edit_append_insert_upload_only_the_change(small_chunks: Any, alice: User) -> None:
    m = small_chunks
    path = Path(m.path) / "big.bin"
    data = det_bytes("big", 16 * MiB)
    write_file(path, data)
    first = uploaded(m)
    assert len(data) <= first < len(data) + 2 * MAX_CHUNK, f"first upload {first}"

    with open(path, "r+b") as f:  # 10 bytes in the middle
        f.seek(8 * MiB)
        f.write(b"0123456789")
    edited = data[: 8 * MiB] + b"0123456789" + data[8 * MiB + 10 :]
    delta = uploaded(m) - first
    assert 0 < delta <= 3 * MAX_CHUNK, f"a 10-byte edit uploaded {delta} bytes"

    before = uploaded(m)
    with open(path, "ab") as f:
        f.write(det_bytes("tail", 1 * MiB))
    edited += det_bytes("tail", 1 * MiB)
    delta = uploaded(m) - before
    assert 1 * MiB <= delta <= 1 * MiB + 2 * MAX_CHUNK, f"a 1 MiB append uploaded {delta} bytes"

    before = uploaded(m)
    inserted = det_bytes("front", 100_000) + edited
    write_file(path, inserted)  # rewrite with an insertion at the front (O_TRUNC)
    delta = uploaded(m) - before
    assert delta <= 100_000 + 3 * MAX_CHUNK, f"a 100 kB insertion uploaded {delta} bytes"

    view = ServerView(m.server, alice)
    assert view.content("big.bin") == inserted
    assert read_file(path) == inserted


def test_sequential_writer_is_cut_into_blocks_before_close(small_chunks: Any) -> None:
    m = small_chunks
    path = Path(m.path) / "stream.bin"
    parts = [det_bytes(f"s{i}", 1 * MiB) for i in range(24)]
    with open(path, "wb") as f:
        for part in parts:
            f.write(part)
        f.flush()
        mid = status(m)  # before close: what sealing has cut, stored and (partly) uploaded
        sealed = mid["uploaded_bytes"] + mid["cache"]["dirty_bytes"]
        staged = sum(d["staged_bytes"] for d in mid["dirty_files"])
    assert staged < 8 * MiB, f"{staged} bytes still staged before close (sealing did not run)"
    assert sealed >= 16 * MiB, f"only {sealed} bytes were cut into blocks before close"
    assert read_file(path) == b"".join(parts)
