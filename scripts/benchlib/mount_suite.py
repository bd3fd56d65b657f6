"""Mount suite (issue 3): the cloudfs FUSE mount next to tmpfs and `rclone mount --vfs-cache-mode
full` of a local directory, in the same run: sequential write (until close and until stored), cold
and warm sequential reads, random 4 KiB reads, 10,000 small files, `ls -lR`, untar, the client's
peak RSS while copying a large file, and bytes uploaded after an insert at the front / an append.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from benchlib.common import (
    DataSource,
    GiB,
    MiB,
    Rows,
    hash_file,
    header,
    keep_logs,
    log,
    measure,
    table,
    write_section,
)
from benchlib.filesystems import CloudfsFs, Fs, RcloneFs, TmpfsFs, start_all, tree_rss


class Sizes:
    def __init__(self, quick: bool) -> None:
        self.big = 128 * MiB if quick else 1 * GiB
        self.huge = 256 * MiB if quick else 4 * GiB
        self.mid = 32 * MiB if quick else 256 * MiB
        self.small_dirs, self.small_per_dir = (10, 50) if quick else (100, 100)
        self.tree_files = 300 if quick else 2000
        self.untar_cap_s = 30 if quick else 90
        self.random_warm = 2000 if quick else 20_000
        self.random_cold = 50 if quick else 300
        self.small_cap_s = 30 if quick else 240

    @property
    def n_small(self) -> int:
        return self.small_dirs * self.small_per_dir


def human(n: int) -> str:
    return f"{n // GiB} GiB" if n >= GiB and n % GiB == 0 else f"{n // MiB} MiB"


class Sources:
    """Input files on their own tmpfs, so reading them costs (almost) nothing."""

    def __init__(self, base: Path, sizes: Sizes) -> None:
        self.dir = base / "src"
        self.sizes = sizes
        self.hashes: dict[str, str] = {}
        self.tree_files = 0
        self.tree_bytes = 0

    def create(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        total = self.sizes.big + self.sizes.huge + self.sizes.mid + 512 * MiB
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={total}", "tmpfs", str(self.dir)],
            check=True,
            capture_output=True,
            text=True,
        )
        for name, size in (
            ("big.bin", self.sizes.big),
            ("huge.bin", self.sizes.huge),
            ("mid.bin", self.sizes.mid),
        ):
            log(f"mount suite: generating {name} ({human(size)})")
            self.hashes[name] = DataSource().write_file(self.dir / name, size)
        self.make_tree()

    def make_tree(self) -> None:
        """A tar of real source files: packages from the project's own .venv site-packages."""
        site = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
        site = site / "site-packages"
        files: list[Path] = []
        for top in sorted(p for p in site.iterdir() if p.is_dir()):
            if top.name.endswith((".dist-info", ".egg-info")) or top.name.startswith("_"):
                continue
            for p in sorted(top.rglob("*")):
                if "__pycache__" in p.parts or not p.is_file() or p.is_symlink():
                    continue
                files.append(p)
                if len(files) >= self.sizes.tree_files:
                    break
            if len(files) >= self.sizes.tree_files:
                break
        with tarfile.open(self.dir / "tree.tar", "w") as tar:
            for p in files:
                tar.add(p, arcname=str(p.relative_to(site)))
        self.tree_files = len(files)
        self.tree_bytes = sum(p.stat().st_size for p in files)

    def remove(self) -> None:
        if os.path.ismount(self.dir):
            subprocess.run(["umount", str(self.dir)], capture_output=True)


# ---------------------------------------------------------------- measurements


def copy_file(src: Path, dst: Path, chunk: int = MiB) -> None:
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        while True:
            n = fin.readinto(buf)
            if not n:
                break
            done = 0
            while done < n:
                done += fout.write(view[done:n])


def read_file(path: Path, chunk: int = MiB) -> int:
    buf = bytearray(chunk)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            total += n
    return total


def random_reads(path: Path, size: int, count: int, seed: int) -> float:
    rng = random.Random(seed)
    offsets = [rng.randrange(size // 4096) * 4096 for _ in range(count)]
    fd = os.open(path, os.O_RDONLY)
    try:
        start = time.perf_counter()
        for off in offsets:
            if len(os.pread(fd, 4096, off)) != 4096:
                raise OSError(f"short read at {off}")
        return count / (time.perf_counter() - start)
    finally:
        os.close(fd)


class RssSampler:
    """Peak RSS (and peak anonymous RSS, i.e. without file-backed pages such as an LMDB map) of a
    process tree, sampled every `every_s`."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        self.pid = pid
        self.every_s = every_s
        self.peak = 0
        self.peak_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every_s)

    def sample(self) -> None:
        rss, anon = tree_rss(self.pid, anon=True)
        self.peak = max(self.peak, rss)
        self.peak_anon = max(self.peak_anon, anon)

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def guarded(
    fs: Fs, rows: Rows, label: str, unit: str, run: int, fn: Callable[[], float], hib: bool = True
) -> float | None:
    """measure() that never writes into a dead mount's directory: the mount is checked before
    (restarted if it died earlier) and after (a crash during the measurement fails it)."""
    row = rows.get(label, unit, hib)
    if not fs.alive():
        try:
            log(f"  {fs.name} is not mounted any more; restarting it")
            fs.restart()
        except Exception as exc:  # harness boundary
            row.fail(fs.name, f"mount gone and could not be restarted: {exc}"[:160])
            return None
    value = measure(rows, label, unit, fs.name, run, fn, hib)
    if not fs.alive():
        if value is not None:
            row.values[fs.name][-1] = float("nan")
        row.fail(fs.name, "the client died during this measurement (see the mount log)")
        log(f"  {label} [{fs.name}]: the mount died during the measurement")
        return None
    return value


def one_run(fs: Fs, run: int, src: Sources, sizes: Sizes, rows: Rows) -> None:
    rel = f"r{run}"
    base = fs.path / rel
    if not fs.alive():
        log(f"  {fs.name} is not mounted any more; restarting it")
        fs.restart()
    base.mkdir(parents=True, exist_ok=True)
    big = base / "big.bin"
    bl = human(sizes.big)

    def m(label: str, unit: str, fn: Callable[[], float], hib: bool = True) -> float | None:
        return guarded(fs, rows, label, unit, run, fn, hib)

    # 1. sequential write, until close() returns, then until the backend has it
    t0 = [0.0]

    def seq_write() -> float:
        t0[0] = time.perf_counter()
        copy_file(src.dir / "big.bin", big)
        return sizes.big / (time.perf_counter() - t0[0]) / 1e6

    def seq_stored() -> float:
        fs.wait_stored(f"{rel}/big.bin", sizes.big)
        return sizes.big / (time.perf_counter() - t0[0]) / 1e6

    if m(f"sequential write {bl}, until close() returns", "MB/s", seq_write) is not None:
        m(f"sequential write {bl}, until stored (server / remote has it)", "MB/s", seq_stored)

    # 2. cold and warm sequential read (content checked after the timed reads)
    def seq_read() -> float:
        start = time.perf_counter()
        n = read_file(big)
        elapsed = time.perf_counter() - start
        if n != sizes.big:
            raise OSError(f"read {n} bytes, expected {sizes.big}")
        return n / elapsed / 1e6

    def cold_read() -> float:
        fs.cold()
        return seq_read()

    def warm_read_checked() -> float:
        rate = seq_read()
        digest, n = hash_file(big)
        if digest != src.hashes["big.bin"] or n != sizes.big:
            raise OSError("content read back differs from what was written")
        return rate

    m(f"sequential read {bl}, cold (fresh client cache, page cache dropped)", "MB/s", cold_read)
    m(f"sequential read {bl}, warm (read again)", "MB/s", warm_read_checked)

    # 3. random 4 KiB reads
    m(
        "random 4 KiB reads, warm file",
        "IOPS",
        lambda: random_reads(big, sizes.big, sizes.random_warm, run),
    )

    def cold_random() -> float:
        fs.cold()
        return random_reads(big, sizes.big, sizes.random_cold, run + 100)

    m("random 4 KiB reads, cold (fresh client cache)", "IOPS", cold_random)
    try:
        big.unlink()
    except OSError as exc:
        log(f"  could not remove {big}: {exc}")

    if run > 0:
        return  # the metadata-heavy workloads below run once (see the notes)

    # 4. small files
    small = base / "small"
    gen = DataSource()
    contents = [gen.block(4096, i)[: 512 + (i * 997) % 7680] for i in range(sizes.n_small)]
    created = [0]

    n_small = f"{sizes.n_small:,}"
    small_label = f"create+write+close {n_small} small files (0.5-8 KiB, 100 per dir)"

    def small_files() -> float:
        start = time.perf_counter()
        deadline = start + sizes.small_cap_s
        i = 0
        for d in range(sizes.small_dirs):
            sub = small / f"d{d:03d}"
            sub.mkdir(parents=True)
            for f in range(sizes.small_per_dir):
                with open(sub / f"f{f:03d}.txt", "wb") as fh:
                    fh.write(contents[i])
                i += 1
            created[0] = i
            if time.perf_counter() > deadline and i < sizes.n_small:
                # a rate over thousands of files is still a measurement; the cell says so
                rows.get(small_label, "files/s").notes[fs.name] = (
                    f"(time cap: {i:,} of {sizes.n_small:,} files in {sizes.small_cap_s} s)"
                )
                break
        return i / (time.perf_counter() - start)

    t0 = time.perf_counter()
    m(small_label, "files/s", small_files)

    def small_stored() -> float:
        fs.wait_all_stored()
        last = created[0] - 1
        fs.wait_stored(
            f"{rel}/small/d{last // sizes.small_per_dir:03d}/f{last % sizes.small_per_dir:03d}.txt",
            len(contents[last]),
        )
        return created[0] / (time.perf_counter() - t0)

    if created[0]:
        m(f"create+write+close {n_small} small files, until all stored", "files/s", small_stored)

    # 5. ls -lR, cold (remounted, page cache dropped) and warm
    entries = created[0] + -(-created[0] // sizes.small_per_dir)  # files + their directories

    def ls_lr(remount: bool) -> float:
        if remount:
            fs.remount()
        start = time.perf_counter()
        out = subprocess.run(["ls", "-lR", str(small)], capture_output=True, text=True, timeout=600)
        elapsed = time.perf_counter() - start
        if out.returncode != 0:
            raise OSError(f"ls -lR exited {out.returncode}: {out.stderr[:200]}")
        listed = sum(1 for line in out.stdout.splitlines() if line[:1] in ("-", "d"))
        if listed != entries:
            raise OSError(f"ls -lR listed {listed} entries, expected {entries}")
        return entries / elapsed

    ls_labels = (
        f"ls -lR of the {n_small}-file tree, cold (after remount)",
        f"ls -lR of the {n_small}-file tree, warm",
    )
    if 0 < created[0] < sizes.n_small:
        for label in ls_labels:
            rows.get(label, "entries/s").notes[fs.name] = f"(tree of {created[0]:,} files only)"
    if created[0]:
        m(
            ls_labels[0],
            "entries/s",
            lambda: ls_lr(True),
        )
        m(ls_labels[1], "entries/s", lambda: ls_lr(False))

    # 6. untar a source tree
    untar_label = f"untar a source tree ({src.tree_files:,} files, {src.tree_bytes / MiB:.0f} MiB)"

    def untar() -> float:
        dest = base / "untar"
        dest.mkdir()
        start = time.perf_counter()
        proc = subprocess.Popen(
            ["tar", "-xf", str(src.dir / "tree.tar"), "-C", str(dest)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _, err = proc.communicate(timeout=sizes.untar_cap_s)
        except subprocess.TimeoutExpired:
            proc.terminate()  # our own child, by PID
            _, err = proc.communicate()
        elapsed = time.perf_counter() - start
        found = sum(len(files) for _, _, files in os.walk(dest))
        if proc.returncode != 0 and found < src.tree_files:
            if elapsed < sizes.untar_cap_s:
                raise OSError(f"tar exited {proc.returncode}: {err[:200]}")
            rows.get(untar_label, "files/s").notes[fs.name] = (
                f"(time cap: {found:,} of {src.tree_files:,} files in {sizes.untar_cap_s} s)"
            )
            return found / elapsed
        if found != src.tree_files:
            raise OSError(f"untar left {found} files, expected {src.tree_files}")
        return src.tree_files / elapsed

    m(
        untar_label,
        "files/s",
        untar,
    )


def once_per_suite(fs: Fs, src: Sources, sizes: Sizes, rows: Rows) -> None:
    """The heavy, near-deterministic ones: one run each."""
    name = fs.name
    base = fs.path / "once"
    if not fs.alive():
        log(f"  {fs.name} is not mounted any more; restarting it")
        fs.restart()
    base.mkdir(parents=True, exist_ok=True)
    hl = human(sizes.huge)

    def m(label: str, unit: str, fn: Callable[[], float], hib: bool = True) -> float | None:
        return guarded(fs, rows, label, unit, 0, fn, hib)

    # peak RSS of the client while copying a big file
    peak: list[float] = []

    def copy_huge() -> float:
        pid = fs.client_pid()
        start = time.perf_counter()
        if pid is None:
            subprocess.run(["cp", str(src.dir / "huge.bin"), str(base / "huge.bin")], check=True)
            elapsed = time.perf_counter() - start
        else:
            with RssSampler(pid) as sampler:
                subprocess.run(
                    ["cp", str(src.dir / "huge.bin"), str(base / "huge.bin")], check=True
                )
                elapsed = time.perf_counter() - start
            peak.append(sampler.peak / MiB)
            peak.append(sampler.peak_anon / MiB)
        return sizes.huge / elapsed / 1e6

    pid = fs.client_pid()
    if pid is not None:
        rows.get(f"client RSS before the {hl} copy", "MiB", False).add(name, 0, tree_rss(pid) / MiB)
    m(f"cp of a {hl} file, until cp exits", "MB/s", copy_huge)
    if peak:
        rows.get(f"peak RSS of the client while copying a {hl} file", "MiB", False).add(
            name, 0, peak[0]
        )
        rows.get(f"peak anonymous RSS of the client while copying a {hl} file", "MiB", False).add(
            name, 0, peak[1]
        )
    try:
        (base / "huge.bin").unlink()
    except OSError as exc:
        log(f"  could not remove huge.bin: {exc}")

    # bytes uploaded (and newly stored) for an insert at the front and an append
    if fs.uploaded_bytes() is None:
        return
    ml = human(sizes.mid)
    mid = base / "mid.bin"
    marks: list[tuple[int, int | None]] = []

    def mark() -> None:
        fs.wait_all_stored()
        marks.append((fs.uploaded_bytes() or 0, fs.stored_bytes()))

    def insert_front() -> None:
        fresh = DataSource().block(MiB, 0)
        with open(mid, "r+b", buffering=0) as out, open(src.dir / "mid.bin", "rb") as fin:
            out.write(fresh)
            while chunk := fin.read(MiB):
                out.write(chunk)
        fs.wait_stored("once/mid.bin", sizes.mid + MiB)

    def append() -> None:
        with open(mid, "ab", buffering=0) as out:
            out.write(DataSource().block(MiB, 0))
        fs.wait_stored("once/mid.bin", sizes.mid + 2 * MiB)

    edits = [
        (f"1 MiB inserted at the front of a {ml} file", insert_front),
        (f"1 MiB appended to the {ml} file", append),
    ]
    try:
        copy_file(src.dir / "mid.bin", mid)
        fs.wait_stored("once/mid.bin", sizes.mid)
        mark()
    except Exception as exc:  # harness boundary
        for what, _ in edits:
            rows.get(f"bytes uploaded: {what} (ideal: 1 MiB)", "MiB", False).fail(
                name, f"setup failed: {exc}"[:160]
            )
        return
    for what, edit in edits:
        up_label = f"bytes uploaded: {what} (ideal: 1 MiB)"

        def edit_and_count(edit: Callable[[], None] = edit) -> float:
            edit()
            mark()
            return (marks[-1][0] - marks[-2][0]) / MiB

        if m(up_label, "MiB", edit_and_count, False) is None:
            return
        before, after = marks[-2][1], marks[-1][1]
        if before is not None and after is not None:
            rows.get(f"new bytes stored on the server: {what}", "MiB", False).add(
                name, 0, (after - before) / MiB
            )


# ---------------------------------------------------------------- the suite


def run(runs: int, quick: bool) -> bool:
    sizes = Sizes(quick)
    base = Path(tempfile.mkdtemp(prefix="cloudfs-bench-mount-", dir="/var/tmp"))
    src = Sources(base, sizes)
    cloudfs = CloudfsFs(base / "cloudfs", cache_size="16G")
    tmpfs = TmpfsFs(base / "tmpfs", size=f"{sizes.big + sizes.huge + 2 * GiB}")
    rclone = RcloneFs(base / "rclone")
    fss: list[Fs] = [cloudfs, tmpfs, rclone]
    rows = Rows()
    error = ""
    started: dict[str, str] = {}
    suite_errors: list[str] = []
    try:
        src.create()
        started = start_all(fss)
        live = [fs for fs in fss if fs.name not in started]
        for run_no in range(runs):
            log(f"mount suite: run {run_no + 1}/{runs}")
            order = live[run_no % len(live) :] + live[: run_no % len(live)] if live else []
            for fs in order:
                log(f"mount suite: {fs.name}")
                try:
                    one_run(fs, run_no, src, sizes, rows)
                except Exception as exc:  # e.g. a mount that cannot be restarted: go on
                    log(f"mount suite: {fs.name} run {run_no + 1} stopped: {exc}")
                    suite_errors.append(f"{fs.name}, run {run_no + 1}: {exc}"[:200])
        for fs in live:
            log(f"mount suite: {fs.name}, once-per-suite measurements")
            try:
                once_per_suite(fs, src, sizes, rows)
            except Exception as exc:  # harness boundary
                log(f"mount suite: {fs.name} once-per-suite stopped: {exc}")
                suite_errors.append(f"{fs.name}, once-per-suite: {exc}"[:200])
    except Exception as exc:  # the suite could not complete: say so in the document
        error = f"{type(exc).__name__}: {exc}"
        log(f"mount suite FAILED: {error}")
    finally:
        for fs in fss:
            try:
                fs.stop()
            except Exception as exc:  # keep cleaning up the others
                log(f"mount suite: stopping {fs.name}: {exc}")
        src.remove()
        kept = keep_logs(base, "mount")
        if kept:
            log(f"mount suite: logs kept in {kept}")
        shutil.rmtree(base, ignore_errors=True)
    for fs_name, msg in started.items():
        for row in rows:
            row.fail(fs_name, "could not start (see above)")
        if not list(rows):
            error = error or f"{fs_name} could not start: {msg}"
    if suite_errors:
        error = "; ".join(([error] if error else []) + suite_errors)
    write_doc(rows, runs, quick, sizes, src, error, started)
    return not error and not started


def write_doc(
    rows: Rows,
    runs: int,
    quick: bool,
    sizes: Sizes,
    src: Sources,
    error: str,
    not_started: dict[str, str],
) -> None:
    name = "mount-quick" if quick else "mount"
    title = "## Mount (issue 3): cloudfs FUSE mount vs tmpfs and rclone mount" + (
        " — quick smoke run" if quick else ""
    )
    parts = [
        title,
        "",
        header(
            runs,
            "Baselines in the same run: tmpfs, and `rclone mount "
            "--vfs-cache-mode full` (defaults: 5 s write-back) of a local "
            "directory on the same disk as the cloudfs server's data.",
        ),
        "",
    ]
    if error:
        parts += [f"**The suite did not complete: {error}**", ""]
    for fs_name, msg in not_started.items():
        parts += [f"**{fs_name} could not be started: {msg}**", ""]
    parts.append(table(rows, "cloudfs", [("tmpfs", "tmpfs"), ("rclone", "rclone")], "cloudfs"))
    parts += [
        "",
        NOTES.format(
            big=human(sizes.big),
            huge=human(sizes.huge),
            mid=human(sizes.mid),
            warm=sizes.random_warm,
            cold=sizes.random_cold,
            cap=sizes.small_cap_s,
            untar_cap=sizes.untar_cap_s,
        ),
    ]
    write_section(name, "\n".join(parts))


NOTES = """Notes:
- Writes copy from a file on a separate tmpfs with 1 MiB `write()` calls. "until stored": cloudfs =
  the server answers the file's node with the full size over HTTP (close() already waits for the
  commit); rclone = its backing directory has the full file and its rc `vfs/stats` shows no upload
  queued or in progress; tmpfs = close.
- Cold: cloudfs is remounted with a fresh, empty cache dir; rclone is remounted with its VFS cache
  deleted; then `sync; echo 3 > /proc/sys/vm/drop_caches`. tmpfs cannot be made cold (its data is
  the page cache). Reads use 1 MiB `readinto` into one buffer; the warm read is followed (untimed)
  by a BLAKE3 check of the whole content against what was written.
- Random reads: {warm} warm and {cold} cold `pread`s of 4 KiB at random aligned offsets of the {big}
  file.
- Small files: content unique per file. Time cap {cap} s: a slower filesystem is stopped there
  and its rate over the files written so far is shown with a "time cap" remark (the `ls -lR`
  rows then list that smaller tree). `ls -lR` counts the listed entries and fails if any is
  missing; "cold" = after a remount with the data cache kept and the page cache dropped.
- Untar: `tar -xf` of a tar of packages from the project's .venv site-packages (real source files),
  timed until tar exits; the extracted file count is checked. Time cap {untar_cap} s, as above.
- Peak RSS (cloudfs and rclone only): RSS of the mount process and its children sampled every
  50 ms during `cp` of a {huge} file from tmpfs; "anonymous" excludes file-backed resident pages
  (RSS minus psutil's `shared`, e.g. an mmapped LMDB cache), i.e. the memory the client holds.
- Run counts: sequential and random I/O run in every run; small files, `ls -lR`, untar, the big
  copy and the upload-bytes measurement run once (run 1): they are long, and each is already an
  average over thousands of operations or a near-deterministic count.
- Bytes uploaded: after a {mid} file is stored, 1 MiB is inserted at its front (the file is
  rewritten from offset 0, as a program inserting would) and then 1 MiB is appended. cloudfs: sum
  of the sizes of the block PUTs the server answered 2xx in that window (ids from its access log,
  sized with HEAD; the API has no byte counter); "new bytes stored" = delta of `stored_bytes` from
  `GET /v1/usage`. rclone: delta of `bytes` from its rc `core/stats` (bytes sent to the remote).
- The logs of the last run (server, mounts, rclone) stay in
  `/var/tmp/cloudfs-bench-logs/mount/` on the machine that ran it."""
