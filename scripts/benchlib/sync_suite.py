"""Sync suite (issue 4): change-to-visible latency between mounts of one account (p50/p95/p99 from
close() returning on mount A until stat+read on the other mounts show the new content) with 1, 5
and 20 subscribed mounts, the server's CPU per idle subscriber, and two references measured in the
same run: the API floor (HTTP commit -> HTTP long-poll subscribers of /v1/changes) and two rclone
mounts of one local directory (the peer: no change notification).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import blake3
import psutil

from benchlib.common import Rows, fmt, header, keep_logs, log, percentile, table, write_section
from benchlib.filesystems import RcloneFs


class NotAvailableError(Exception):
    """Live sync (or the mount itself) is not there: the suite says so instead of measuring."""


def poll_until(path: Path, content: bytes, deadline: float, every_s: float) -> float | None:
    """Time at which stat shows len(content) and a read returns `content`, or None at deadline."""
    size = len(content)
    while time.monotonic() < deadline:
        try:
            if os.stat(path).st_size == size:
                with open(path, "rb") as f:
                    if f.read() == content:
                        return time.monotonic()
        except OSError:
            pass
        time.sleep(every_s)
    return None


def _observe(
    path: Path,
    content: bytes,
    results: list[float | None],
    j: int,
    start_evt: threading.Event,
    t0: list[float],
    timeout_s: float,
    every_s: float,
) -> None:
    start_evt.wait()
    results[j] = poll_until(path, content, t0[0] + timeout_s, every_s)


def latencies(
    writer_dir: Path,
    observer_dirs: list[Path],
    name: str,
    n_changes: int,
    timeout_s: float,
    every_s: float = 0.005,
) -> tuple[list[float], int]:
    """Write `name` on the writer n_changes times; per change, every observer polls until it sees
    the new content. Returns (latencies in ms, count of (change, observer) pairs that timed out)."""
    samples: list[float] = []
    timeouts = 0
    for i in range(n_changes):
        content = f"change {i} ".encode() * (1 + i % 7) + os.urandom(8).hex().encode()
        results: list[float | None] = [None] * len(observer_dirs)
        start_evt = threading.Event()
        t0 = [0.0]

        threads = [
            threading.Thread(
                target=_observe,
                daemon=True,
                args=(
                    observer_dirs[j] / name,
                    content,
                    results,
                    j,
                    start_evt,
                    t0,
                    timeout_s,
                    every_s,
                ),
            )
            for j in range(len(observer_dirs))
        ]
        for th in threads:
            th.start()
        with open(writer_dir / name, "wb") as f:
            f.write(content)
        t0[0] = time.monotonic()  # close() has returned
        start_evt.set()
        for th in threads:
            th.join(timeout_s + 5)
        for r in results:
            if r is None:
                timeouts += 1
            else:
                samples.append((r - t0[0]) * 1000)
        time.sleep(0.05)
    return samples, timeouts


def cpu_s(pid: int) -> float:
    """CPU seconds of every thread of `pid`, from the scheduler's nanosecond counters
    (/proc/PID/task/*/schedstat); psutil's 10 ms ticks if those are missing. Threads that exit
    during a window take their time with them (the server's thread pools keep their threads)."""
    total_ns = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total_ns += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    except OSError:
        total_ns = 0
    if total_ns:
        return total_ns / 1e9
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def idle_cpu_percent(pid: int, window_s: float) -> float:
    """CPU of process `pid` over an idle window, in % of one core."""
    before = cpu_s(pid)
    time.sleep(window_s)
    return (cpu_s(pid) - before) / window_s * 100


class Api:
    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url = url
        self.headers = headers

    def call(
        self,
        method: str,
        path: str,
        body: object = None,
        data: bytes | None = None,
        timeout_s: float = 70,
    ) -> dict:
        hdrs = dict(self.headers)
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=hdrs)
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return json.loads(resp.read())


def api_floor(api: Api, k: int, n_changes: int, timeout_s: float) -> tuple[list[float], int]:
    """k long-poll subscribers of /v1/changes; a writer commits over HTTP. Latency = from the
    commit's answer to each subscriber receiving the change."""
    root = api.call("GET", "/v1/me")["root"]
    name = f"floor-{k}-{time.time_ns()}"
    node = api.call("POST", f"/v1/nodes/{root}/children", {"name": name, "type": "file"})
    nid, version = node["id"], node["version"]
    blocks = []
    for i in range(2):
        data = f"floor block {i}".encode()
        bid = blake3.blake3(data).hexdigest()
        api.call("PUT", f"/v1/blocks/{bid}", data=data)
        blocks.append((bid, len(data)))
    cursor = api.call("GET", "/v1/changes?cursor=latest")["cursor"]
    arrivals: list[dict[int, float]] = [{} for _ in range(k)]
    stop = threading.Event()
    errors: list[str] = []

    def subscriber(j: int) -> None:
        cur = cursor
        while not stop.is_set():
            try:
                doc = api.call("GET", f"/v1/changes?cursor={cur}&wait=5", timeout_s=15)
            except (OSError, urllib.error.URLError) as exc:
                errors.append(str(exc))
                return
            now = time.monotonic()
            for ch in doc.get("changes", []):
                if ch.get("node") == nid and ch.get("version") is not None:
                    arrivals[j].setdefault(int(ch["version"]), now)
            cur = doc.get("cursor", cur)

    threads = [threading.Thread(target=subscriber, args=(j,), daemon=True) for j in range(k)]
    for th in threads:
        th.start()
    time.sleep(0.3)  # let every subscriber park its long-poll
    sent: dict[int, float] = {}
    try:
        for i in range(n_changes):
            bid, size = blocks[i % 2]
            doc = api.call(
                "PUT",
                f"/v1/nodes/{nid}/content",
                {"base_version": version, "size": size, "blocks": [[bid, size]]},
            )
            version = doc["version"]
            sent[version] = time.monotonic()
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and not all(version in a for a in arrivals):
                time.sleep(0.001)
            time.sleep(0.02)
    finally:
        stop.set()
    if errors:
        raise OSError(f"long-poll subscriber failed: {errors[0]}")
    samples, timeouts = [], 0
    for a in arrivals:
        for v, t in sent.items():
            if v in a:
                samples.append(max(0.0, a[v] - t) * 1000)
            else:
                timeouts += 1
    return samples, timeouts


def record(
    rows: Rows,
    k: int,
    target: str,
    samples: list[float],
    timeouts: int,
    total: int,
    timeout_s: float,
) -> None:
    for q in (50, 95, 99):
        row = rows.get(f"change-to-visible latency p{q}, {k} subscriber(s)", "ms", False)
        if not samples:
            row.fail(target, f"not visible within {timeout_s:.0f} s in {timeouts} of {total}")
            continue
        row.add(target, 0, percentile(samples, q))
        if timeouts:
            row.notes[target] = f"({timeouts} of {total} not visible within {timeout_s:.0f} s)"
    log(
        f"  {k} subscriber(s) [{target}]: p50 {fmt(percentile(samples, 50))} ms, "
        f"p95 {fmt(percentile(samples, 95))} ms, {timeouts}/{total} timed out"
    )


def mount_subscriptions(log_path: Path) -> str:
    """How many change-feed requests the mounts (not the bench's urllib subscribers) made, from
    the server's access log: evidence of whether visibility came from push or from cache expiry."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return ""
    lines = [ln for ln in text.splitlines() if "/v1/changes" in ln]
    from_mounts = [ln for ln in lines if "Python-urllib" not in ln]
    return (
        f"Server access log: {len(from_mounts)} requests to `/v1/changes` came from the mounts "
        f"(0 means the mounts do not subscribe and changes became visible only when cached "
        f"attributes expired)."
    )


def stop_mounts(mounts: list) -> None:
    """Unmount all mounts at once (each Mount.stop unmounts in `finally`, by PID)."""

    def stop(m: object) -> None:
        try:
            m.stop(timeout_s=30)  # type: ignore[attr-defined]
        except Exception as exc:  # keep unmounting the others
            log(f"sync suite: stopping mount {m.device}: {exc}")  # type: ignore[attr-defined]

    threads = [threading.Thread(target=stop, args=(m,)) for m in mounts]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


def run(runs: int, quick: bool) -> bool:
    from tests.fuse.conftest import Mount
    from tests.support import ServerProcess

    ks = [1, 5] if quick else [1, 5, 20]
    n_changes = (5 if quick else 20) * runs
    timeout_s = 5.0 if quick else 10.0
    window_s = 5.0 if quick else 10.0
    base = Path(tempfile.mkdtemp(prefix="cloudfs-bench-sync-", dir="/var/tmp"))
    rows = Rows()
    server = ServerProcess(base / "data")
    mounts: list[Mount] = []
    rclones: list[RcloneFs] = []
    unavailable = ""
    error = ""
    try:
        server.start()
        user = server.add_user("bench")
        api = Api(server.url, user.headers("bench-api"))
        cpu0 = idle_cpu_percent(server.proc.pid, window_s)  # type: ignore[union-attr]
        log(f"sync suite: idle server, no subscribers: {cpu0:.2f} % CPU")
        rows.get("server CPU, idle, no subscriber", "% of a core", False).add("cloudfs", 0, cpu0)

        for k in ks:
            log(f"sync suite: API floor with {k} long-poll subscriber(s)")
            try:
                s, t = api_floor(api, k, n_changes, timeout_s)
                record(rows, k, "floor", s, t, k * n_changes, timeout_s)
            except (OSError, urllib.error.URLError, KeyError) as exc:
                for q in (50, 95, 99):
                    rows.get(
                        f"change-to-visible latency p{q}, {k} subscriber(s)", "ms", False
                    ).fail("floor", f"{type(exc).__name__}: {exc}"[:160])

        def new_mount(device: str) -> Mount:
            m = Mount(server, user, base, device, "1G")
            mounts.append(m)
            return m.start(timeout_s=60)

        try:
            writer = new_mount("writer")
            observers = [new_mount("sub1")]
        except Exception as exc:  # the mount is not there: nothing to measure on the cloudfs side
            raise NotAvailableError(f"cloudfs mount could not start: {exc}") from exc
        # Is there live sync at all? The observer looks first (so it has the file cached), then
        # the writer changes it; without push the observer keeps the stale state.
        probe = b"probe 1"
        (writer.path / "probe.txt").write_bytes(probe)
        if poll_until(observers[0].path / "probe.txt", probe, time.monotonic() + 10, 0.01) is None:
            raise NotAvailableError(
                "a file created on mount A was not visible on mount B within 10 s"
            )
        (writer.path / "probe.txt").write_bytes(b"probe 2, longer")
        if (
            poll_until(
                observers[0].path / "probe.txt",
                b"probe 2, longer",
                time.monotonic() + timeout_s,
                0.01,
            )
            is None
        ):
            raise NotAvailableError(
                f"a change made on mount A was not visible on mount B "
                f"within {timeout_s:.0f} s (no live sync)"
            )
        for k in ks:
            while len(observers) < k:
                observers.append(new_mount(f"sub{len(observers) + 1}"))
            log(f"sync suite: cloudfs, writer + {k} subscribed mount(s)")
            name = f"lat-{k}.txt"
            (writer.path / name).write_bytes(b"start")
            for o in observers:
                poll_until(o.path / name, b"start", time.monotonic() + timeout_s, 0.01)
            s, t = latencies(writer.path, [o.path for o in observers], name, n_changes, timeout_s)
            record(rows, k, "cloudfs", s, t, k * n_changes, timeout_s)
            time.sleep(1.0)
            cpu_k = idle_cpu_percent(server.proc.pid, window_s)  # type: ignore[union-attr]
            per = (cpu_k - cpu0) / (k + 1)
            log(f"  idle server with {k + 1} mounts: {cpu_k:.2f} % CPU, {per:.3f} % per mount")
            rows.get(f"server CPU, idle, {k + 1} mounts subscribed", "% of a core", False).add(
                "cloudfs", 0, cpu_k
            )
            rows.get(f"server CPU per idle subscriber ({k + 1} mounts)", "% of a core", False).add(
                "cloudfs", 0, per
            )
    except NotAvailableError as exc:
        unavailable = str(exc)
        log(f"sync suite: NOT AVAILABLE: {unavailable}")
    except Exception as exc:  # harness boundary: report, never hide
        error = f"{type(exc).__name__}: {exc}"
        log(f"sync suite FAILED: {error}")
    finally:
        stop_mounts(mounts)
        server.stop()
        subscription_note = mount_subscriptions(server.log_path)

    # the peer: two rclone mounts of one local directory, one subscriber
    try:
        shared = base / "rclone-remote"
        shared.mkdir(parents=True, exist_ok=True)
        for side in ("a", "b"):
            rc = RcloneFs(base / f"rclone-{side}")
            rc.remote = shared
            rclones.append(rc)
            rc.start()
        n_rc = 2 if quick else 3
        (rclones[0].path / "lat.txt").write_bytes(b"start")
        rclones[0].wait_all_stored()
        poll_until(rclones[1].path / "lat.txt", b"start", time.monotonic() + 15, 0.05)
        log("sync suite: rclone, 2 mounts of one local directory")
        s, t = latencies(rclones[0].path, [rclones[1].path], "lat.txt", n_rc, timeout_s)
        record(rows, 1, "rclone", s, t, n_rc, timeout_s)
    except Exception as exc:  # harness boundary
        log(f"sync suite: rclone baseline failed: {exc}")
        for q in (50, 95, 99):
            rows.get(f"change-to-visible latency p{q}, 1 subscriber(s)", "ms", False).fail(
                "rclone", f"{type(exc).__name__}: {exc}"[:160]
            )
    finally:
        for rc in rclones:
            rc.stop()
        kept = keep_logs(base, "sync")
        if kept:
            log(f"sync suite: logs kept in {kept}")
        shutil.rmtree(base, ignore_errors=True)

    section = "sync-quick" if quick else "sync"
    title = "## Live sync (issue 4): change-to-visible latency and idle cost" + (
        " — quick smoke run" if quick else ""
    )
    parts = [
        title,
        "",
        header(
            1,
            f"{n_changes} changes per subscriber count, pooled into one "
            "percentile per row (`--runs` multiplies the changes).",
        ),
        "",
    ]
    if unavailable:
        parts += [
            f"**Live sync: not available in this build — {unavailable}.** The cloudfs "
            "columns below are empty for that reason; the references were still "
            "measured.",
            "",
        ]
    if error:
        parts += [f"**The suite did not complete: {error}**", ""]
    if subscription_note:
        parts += [subscription_note, ""]
    parts.append(
        table(
            rows,
            "cloudfs",
            [("floor", "API floor: HTTP long-poll"), ("rclone", "rclone mount (local dir)")],
            "cloudfs mounts",
        )
    )
    parts += ["", NOTES.format(timeout=timeout_s, window=window_s)]
    write_section(section, "\n".join(parts))
    return not error


NOTES = """Notes:
- cloudfs: one writer mount and N observer mounts of one account (separate cache dirs and device
  names) against one server process. The writer replaces the file's content (open, write,
  close); the clock starts when close() returns; each observer polls with `os.stat` + `read`
  every 5 ms until it sees the new size and bytes. A pair that does not see it within
  {timeout:.0f} s counts as "not visible".
- API floor: N threads long-polling `GET /v1/changes?wait=5`; a writer commits over HTTP; latency
  from the commit's answer to each subscriber receiving it. This is what the server alone costs.
- rclone: two `rclone mount --vfs-cache-mode full` of the same local directory (default options);
  rclone has no change notification for a local remote, so B sees A's change only when its
  directory cache expires (`--dir-cache-time`, 5 min by default).
- Server CPU: user+system CPU of the server process over a {window:.0f} s idle window, in % of one
  core; "per idle subscriber" = (CPU with the mounts - CPU with none) / mounts (the writer is a
  subscriber too); CPU time comes from the scheduler's per-thread nanosecond counters, so
  differences of a few thousandths of a percent are noise.
- The logs of the last run (server, mounts, rclone) stay in
  `/var/tmp/cloudfs-bench-logs/sync/` on the machine that ran it."""
