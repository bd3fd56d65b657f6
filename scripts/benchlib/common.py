"""Shared pieces of the benchmark harness: rows of per-run values, medians and ratios, markdown
tables, the docs/benchmarks.md section writer, machine facts and a fast non-repeating data source.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import blake3

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "benchmarks.md"
MiB = 1 << 20
GiB = 1 << 30

# tests.support (ServerProcess, add_user) and tests.fuse.conftest (Mount) are reused from the repo
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- results


@dataclass
class Row:
    """One measurement: per-run values for every target, or the reason a target failed."""

    name: str
    unit: str  # e.g. "MB/s", "ops/s", "ms", "MiB"
    higher_is_better: bool = True
    values: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # target -> short remark in the cell

    def add(self, target: str, run: int, value: float) -> None:
        vals = self.values.setdefault(target, [])
        while len(vals) < run:
            vals.append(float("nan"))
        vals.append(value)

    def fail(self, target: str, message: str) -> None:
        self.errors[target] = message

    def median(self, target: str) -> float | None:
        vals = [v for v in self.values.get(target, []) if v == v]
        return statistics.median(vals) if vals else None

    def ratio(self, target: str, baseline: str) -> float | None:
        """Median over runs of the per-run ratio target/baseline (pairs from the same run)."""
        a, b = self.values.get(target, []), self.values.get(baseline, [])
        pairs = [x / y for x, y in zip(a, b, strict=False) if x == x and y == y and y != 0]
        return statistics.median(pairs) if pairs else None


class Rows:
    """Rows in insertion order, looked up by name."""

    def __init__(self) -> None:
        self._rows: dict[str, Row] = {}

    def get(self, name: str, unit: str, higher_is_better: bool = True) -> Row:
        if name not in self._rows:
            self._rows[name] = Row(name, unit, higher_is_better)
        return self._rows[name]

    def __iter__(self) -> Iterator[Row]:
        return iter(self._rows.values())


def measure(
    rows: Rows,
    name: str,
    unit: str,
    target: str,
    run: int,
    fn: Callable[[], float],
    higher_is_better: bool = True,
) -> float | None:
    """Run one measurement; a failure is recorded in the row (shown as FAILED), not raised."""
    row = rows.get(name, unit, higher_is_better)
    try:
        value = fn()
    except Exception as exc:  # the harness boundary: every failure becomes a table cell
        msg = f"{type(exc).__name__}: {exc}".replace("\n", " ").replace("|", "/")
        log(f"  {name} [{target}] FAILED: {msg[:300]}")
        row.fail(target, msg[:160])
        return None
    row.add(target, run, value)
    log(f"  {name} [{target}] = {fmt(value)} {unit}")
    return value


def fmt(x: float | None) -> str:
    if x is None or x != x:
        return "-"
    ax = abs(x)
    if ax >= 100:
        return f"{x:,.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def fmt_ratio(r: float) -> str:
    if r >= 100:
        return f"{r:,.0f}x"
    if r >= 10:
        return f"{r:.1f}x"
    if r >= 0.1:
        return f"{r:.2f}x"
    return f"{r:.2g}x"


def cell(row: Row, target: str) -> str:
    if target in row.errors and not row.values.get(target):
        return f"**FAILED**: {row.errors[target]}"
    med = row.median(target)
    if med is None:
        return row.notes.get(target, "n/a")
    vals = [v for v in row.values[target] if v == v]
    text = fmt(med)
    if len(vals) > 1:
        text += f" ({fmt(min(vals))}-{fmt(max(vals))})"
    if target in row.errors:
        text += f" **(some runs FAILED: {row.errors[target]})**"
    if target in row.notes:
        text += f" {row.notes[target]}"
    return text


def table(rows: Rows, target: str, baselines: list[tuple[str, str]], target_label: str) -> str:
    """Markdown table: measurement | unit | target | each baseline | target ÷ each baseline."""
    head = ["measurement", "unit", target_label] + [label for _, label in baselines]
    head += [f"{target_label} ÷ {label}" for _, label in baselines]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        arrow = "↑" if row.higher_is_better else "↓"
        cells = [row.name, f"{row.unit} {arrow}", cell(row, target)]
        cells += [cell(row, b) for b, _ in baselines]
        for b, _ in baselines:
            r = row.ratio(target, b)
            cells.append("-" if r is None else fmt_ratio(r))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


# ---------------------------------------------------------------- machine and document


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f", {kb / (1 << 20):.0f} GiB RAM"
    except (OSError, AttributeError):
        pass
    return (
        f"nproc {len(os.sched_getaffinity(0))}, {cpu}, Linux {platform.release()}{mem}, "
        f"Python {platform.python_version()}"
    )


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min) / {five:.1f} (5 min) when the section was written"


def git_commit() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    try:
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "src", "server"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return rev
    changed = [line[3:] for line in dirty if line.strip()]
    if changed:
        rev += f" + uncommitted changes in {', '.join(changed[:5])}"
        rev += f" (+{len(changed) - 5} more)" if len(changed) > 5 else ""
    return rev


def command_line() -> str:
    return "scripts/bench " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "scripts/bench"


def header(runs: int, extra: str = "") -> str:
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"- Command: `{command_line()}`",
        f"- Date: {now}; commit {git_commit()}",
        f"- Machine: {machine()}; load average {load()} (other work on the machine adds noise)",
        f"- {runs} run(s) per measurement; cells are the median (min-max) over runs; the ratio is "
        "the median of the per-run ratios (both sides measured in the same run, interleaved).",
    ]
    if extra:
        lines.append(f"- {extra}")
    return "\n".join(lines)


DOC_INTRO = """# cloudfs benchmarks

Written by `scripts/bench` (`scripts/bench --help`). Each section below is rewritten by the suite
that owns it and states the exact command, date, commit (and any uncommitted code it ran), machine
and load. Every cloudfs number is measured next to a baseline in the same run, interleaved:

| suite | command | cloudfs side | baselines |
|---|---|---|---|
| server (#2) | `scripts/bench server` | `cloudfs-server` | in-memory aiohttp app, same URLs |
| mount (#3) | `scripts/bench mount` | `cloudfs mount` | tmpfs, `rclone mount` (full cache) |
| sync (#4) | `scripts/bench sync` | writer + 1/5/20 mounts | HTTP long-poll floor, rclone mounts |

This machine is small and shared (2 cores; other work runs at the same time, see the load in each
header; ±30 % between runs is normal): compare the ratio columns, not absolute numbers across
sections. ↑ = higher is better, ↓ = lower is better. A measurement that failed says **FAILED**
with the error; nothing is left out silently. `--quick` runs write separate "quick smoke run"
sections and never overwrite the full ones.

Run it: `scripts/test` once (it creates `.venv`), then `scripts/bench` (all suites, ~15-20 min) or
`scripts/bench mount --quick` (~2 min). The mount and sync suites need root (tmpfs mounts,
`drop_caches`), `/dev/fuse`, `fusermount3` and `rclone`.
"""

SECTION_ORDER = ["server", "mount", "sync", "server-quick", "mount-quick", "sync-quick"]


def write_section(name: str, body: str) -> None:
    """Replace (or add) the section `name` of docs/benchmarks.md, keeping every other section."""
    text = DOC.read_text() if DOC.exists() else DOC_INTRO
    first = text.find("<!-- BEGIN bench:")
    text = DOC_INTRO + "\n" + (text[first:] if first >= 0 else "")  # the intro is ours too
    begin, end = f"<!-- BEGIN bench:{name} -->", f"<!-- END bench:{name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        post = rest.split(end, 1)[1]
        text = pre + block + post
    else:
        # insert before the first section that should come after this one, else append
        later = SECTION_ORDER[SECTION_ORDER.index(name) + 1 :] if name in SECTION_ORDER else []
        for other in later:
            marker = f"<!-- BEGIN bench:{other} -->"
            if marker in text:
                pre, post = text.split(marker, 1)
                text = pre + block + "\n\n" + marker + post
                break
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    log(f"wrote section '{name}' of {DOC.relative_to(ROOT)}")


# ---------------------------------------------------------------- data


class DataSource:
    """Fast bytes that never repeat at CDC scale: a random pool with a unique 16-byte stamp every
    4 KiB (nonce + offset), so no chunk of one stream equals a chunk of another or of itself.
    About 1-2 GB/s, against ~220 MB/s for os.urandom on this machine."""

    POOL = 16 * MiB
    STAMP_EVERY = 4096

    def __init__(self, nonce: int | None = None) -> None:
        self.nonce = nonce if nonce is not None else int.from_bytes(os.urandom(8), "little")
        self.pool = os.urandom(self.POOL)

    def fill(self, buf: bytearray | memoryview, offset: int) -> None:
        """Fill `buf` with the stream's bytes at `offset` (offset and len multiples of 4 KiB)."""
        n = len(buf)
        mv = memoryview(buf)
        pos = 0
        while pos < n:
            src = (offset + pos) % self.POOL
            take = min(n - pos, self.POOL - src)
            mv[pos : pos + take] = self.pool[src : src + take]
            pos += take
        pack = struct.pack_into
        for off in range(0, n, self.STAMP_EVERY):
            pack("<QQ", mv, off, self.nonce, offset + off)

    def block(self, size: int, index: int) -> bytes:
        buf = bytearray(size)
        self.fill(buf, index * size)
        return bytes(buf)

    def write_file(self, path: Path, size: int, chunk: int = 4 * MiB) -> str:
        """Write `size` bytes of the stream to `path`; returns the BLAKE3 hex of the content."""
        h = blake3.blake3()
        buf = bytearray(chunk)
        with open(path, "wb") as f:
            done = 0
            while done < size:
                n = min(chunk, size - done)
                view = memoryview(buf)[:n]
                self.fill(view, done)
                f.write(view)
                h.update(view)
                done += n
        return h.hexdigest()


def hash_file(path: Path, chunk: int = 4 * MiB) -> tuple[str, int]:
    h = blake3.blake3()
    buf = bytearray(chunk)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(memoryview(buf)[:n])
            total += n
    return h.hexdigest(), total


LOG_DIR = Path("/var/tmp/cloudfs-bench-logs")


def keep_logs(base: Path, suite: str) -> Path | None:
    """Copy the *.log files of a suite's work dir to /var/tmp/cloudfs-bench-logs/<suite>/ (the
    work dir is deleted; the logs of the last run stay for whoever reads a FAILED cell)."""
    dest = LOG_DIR / suite
    logs = [p for p in base.rglob("*.log") if p.is_file()] if base.exists() else []
    if not logs:
        return None
    import shutil

    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    for p in logs:
        shutil.copy2(p, dest / str(p.relative_to(base)).replace("/", "__"))
    return dest


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))
    return s[k]


def run_cmd(
    cmd: list[str], timeout_s: float = 60, check: bool = True
) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=check)
