"""Server suite (issue 2): block upload/download throughput, commits/s and metadata ops/s of a real
`cloudfs-server serve` process on loopback, each next to the in-memory aiohttp ceiling
(benchlib.ceiling, its own process) in the same run, with the same aiohttp client on asyncio.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import blake3

from benchlib.common import DataSource, MiB, Rows, fmt, header, log, table, write_section
from tests.support import ServerProcess

CONCURRENCY = 8


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str]
    session: aiohttp.ClientSession | None = None

    def s(self) -> aiohttp.ClientSession:
        assert self.session is not None
        return self.session


class CeilingProcess:
    """benchlib.ceiling in a child process, stopped by its PID."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout_s: float = 20) -> CeilingProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = (
            str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchlib.ceiling"], env=env, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("ceiling server exited early")
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                threading.Thread(target=self._drain, daemon=True).start()
                return self
        raise RuntimeError("ceiling server did not start")

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class BenchError(Exception):
    """An HTTP answer the benchmark did not expect (the measurement is reported as FAILED)."""


async def expect(resp: aiohttp.ClientResponse, *ok: int) -> dict:
    if resp.status not in ok:
        raise BenchError(
            f"{resp.method} {resp.url.path} -> {resp.status} {(await resp.text())[:200]}"
        )
    return await resp.json()


async def ameasure(
    rows: Rows,
    name: str,
    unit: str,
    target: str,
    run: int,
    fn: Callable[[], Awaitable[float]],
    higher_is_better: bool = True,
) -> None:
    row = rows.get(name, unit, higher_is_better)
    try:
        value = await fn()
    except Exception as exc:  # harness boundary: a failure becomes a FAILED cell
        msg = f"{type(exc).__name__}: {exc}".replace("\n", " ").replace("|", "/")
        log(f"  {name} [{target}] FAILED: {msg[:300]}")
        row.fail(target, msg[:160])
        return
    row.add(target, run, value)
    log(f"  {name} [{target}] = {fmt(value)} {unit}")


async def pool(n_items: int, concurrency: int, work: Callable[[int], Awaitable[None]]) -> None:
    """Run work(i) for i in range(n_items) with `concurrency` workers."""
    counter = iter(range(n_items))

    async def worker() -> None:
        for i in counter:
            await work(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


# ---------------------------------------------------------------- blocks


async def upload(t: Target, blocks: list[bytes], ids: list[str], conc: int) -> float:
    async def one(i: int) -> None:
        async with t.s().put(f"{t.url}/v1/blocks/{ids[i]}", data=blocks[i], headers=t.headers) as r:
            doc = await expect(r, 200, 201)
            if doc.get("size") != len(blocks[i]):
                raise BenchError(f"upload answered size {doc.get('size')}")

    start = time.perf_counter()
    await pool(len(blocks), conc, one)
    return sum(map(len, blocks)) / (time.perf_counter() - start) / 1e6


async def download(t: Target, ids: list[str], size: int, conc: int) -> float:
    got = 0

    async def one(i: int) -> None:
        nonlocal got
        async with t.s().get(f"{t.url}/v1/blocks/{ids[i]}", headers=t.headers) as r:
            if r.status != 200:
                raise BenchError(f"GET block -> {r.status}")
            body = await r.read()
            if len(body) != size:
                raise BenchError(f"GET block returned {len(body)} bytes, expected {size}")
            got += len(body)

    start = time.perf_counter()
    await pool(len(ids), conc, one)
    return got / (time.perf_counter() - start) / 1e6


async def check_block(t: Target, block_id: str) -> None:
    """Outside the timed loop: the downloaded bytes hash to their id."""
    async with t.s().get(f"{t.url}/v1/blocks/{block_id}", headers=t.headers) as r:
        body = await r.read()
    if blake3.blake3(body).hexdigest() != block_id:
        raise BenchError("downloaded block does not hash to its id")


# ---------------------------------------------------------------- metadata


async def mkdir(t: Target, parent: int, name: str) -> int:
    async with t.s().post(
        f"{t.url}/v1/nodes/{parent}/children", json={"name": name, "type": "dir"}, headers=t.headers
    ) as r:
        return int((await expect(r, 201))["id"])


async def root_of(t: Target) -> int:
    async with t.s().get(f"{t.url}/v1/me", headers=t.headers) as r:
        return int((await expect(r, 200))["root"])


async def create_files(t: Target, parent: int, n: int, conc: int) -> tuple[float, dict[str, int]]:
    ids: dict[str, int] = {}

    async def one(i: int) -> None:
        name = f"file-{i:06d}.txt"
        async with t.s().post(
            f"{t.url}/v1/nodes/{parent}/children",
            json={"name": name, "type": "file", "mode": 0o644},
            headers=t.headers,
        ) as r:
            ids[name] = int((await expect(r, 201))["id"])

    start = time.perf_counter()
    await pool(n, conc, one)
    return n / (time.perf_counter() - start), ids


async def list_dir(t: Target, parent: int, expected: int, page: int) -> float:
    start = time.perf_counter()
    seen = 0
    after: str | None = None
    for _ in range(expected // page + 10):  # bounded
        params = {"limit": str(page)}
        if after is not None:
            params["after"] = after
        async with t.s().get(
            f"{t.url}/v1/nodes/{parent}/children", params=params, headers=t.headers
        ) as r:
            doc = await expect(r, 200)
        seen += len(doc["entries"])
        after = doc["next"]
        if after is None:
            break
    elapsed = time.perf_counter() - start
    if seen != expected:
        raise BenchError(f"listing returned {seen} entries, expected {expected}")
    return seen / elapsed


async def lookups(t: Target, parent: int, names: list[str], conc: int) -> float:
    async def one(i: int) -> None:
        async with t.s().get(
            f"{t.url}/v1/nodes/{parent}/lookup", params={"name": names[i]}, headers=t.headers
        ) as r:
            await expect(r, 200)

    start = time.perf_counter()
    await pool(len(names), conc, one)
    return len(names) / (time.perf_counter() - start)


async def commits(
    t: Target, parent: int, tag: str, n: int, conc: int, block_ids: list[str], block_len: int
) -> float:
    """n commits: sequentially on one file, or `conc` workers each on its own file."""
    files = []
    for w in range(conc):
        async with t.s().post(
            f"{t.url}/v1/nodes/{parent}/children",
            json={"name": f"{tag}-{w}", "type": "file"},
            headers=t.headers,
        ) as r:
            node = await expect(r, 201)
        files.append([int(node["id"]), int(node["version"])])
    per_worker = n // conc

    async def worker(w: int) -> None:
        nid, version = files[w]
        for i in range(per_worker):
            body = {
                "base_version": version,
                "size": block_len,
                "blocks": [[block_ids[i % len(block_ids)], block_len]],
            }
            async with t.s().put(
                f"{t.url}/v1/nodes/{nid}/content", json=body, headers=t.headers
            ) as r:
                doc = await expect(r, 200)
            if int(doc["version"]) != version + 1:
                raise BenchError(f"commit gave version {doc['version']}, expected {version + 1}")
            version += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(conc)))
    return per_worker * conc / (time.perf_counter() - start)


# ---------------------------------------------------------------- the suite


async def suite(targets: list[Target], runs: int, quick: bool, rows: Rows) -> None:
    block_total = (32 if quick else 256) * MiB
    n_commits = 80 if quick else 400
    n_create_seq = 200 if quick else 1000
    n_big = 1000 if quick else 10_000
    n_lookup = 300 if quick else 2000
    rng = random.Random(1234)
    src = DataSource()
    counter = 0
    for t in targets:
        t.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=2 * CONCURRENCY),
            timeout=aiohttp.ClientTimeout(total=300),
        )
    try:
        small = [src.block(4096, 10**9 + i) for i in range(2)]
        small_ids = [blake3.blake3(b).hexdigest() for b in small]
        for t in targets:
            await upload(t, small, small_ids, 1)
        for run in range(runs):
            order = targets if run % 2 == 0 else targets[::-1]
            log(f"server suite: run {run + 1}/{runs}")
            for size in (MiB, 4 * MiB):
                label = f"{size // MiB} MiB"
                for conc in (1, CONCURRENCY):
                    how = "sequential" if conc == 1 else f"{conc} concurrent"
                    n = block_total // size
                    blocks = [src.block(size, counter + i) for i in range(n)]
                    counter += n
                    ids = [
                        blake3.blake3(b, max_threads=blake3.blake3.AUTO).hexdigest() for b in blocks
                    ]
                    for t in order:
                        await ameasure(
                            rows,
                            f"block upload, {label}, {how}",
                            "MB/s",
                            t.name,
                            run,
                            lambda t=t, b=blocks, i=ids, c=conc: upload(t, b, i, c),
                        )
                        await ameasure(
                            rows,
                            f"block download, {label}, {how}",
                            "MB/s",
                            t.name,
                            run,
                            lambda t=t, i=ids, z=size, c=conc: download(t, i, z, c),
                        )
                        if run == 0 and conc == 1:
                            await check_block(t, ids[-1])
                    for t in targets:
                        if t.name.startswith("ceiling"):
                            async with t.s().post(f"{t.url}/bench/reset") as r:
                                await r.read()
            for t in order:
                root = await root_of(t)
                top = await mkdir(t, root, f"bench-run{run}-{int(time.time())}")
                await ameasure(
                    rows,
                    "commits/s, sequential (one file)",
                    "commits/s",
                    t.name,
                    run,
                    lambda t=t, top=top: commits(t, top, "seq", n_commits, 1, small_ids, 4096),
                )
                await ameasure(
                    rows,
                    f"commits/s, {CONCURRENCY} concurrent (one file each)",
                    "commits/s",
                    t.name,
                    run,
                    lambda t=t, top=top: commits(
                        t, top, "conc", n_commits, CONCURRENCY, small_ids, 4096
                    ),
                )
                seq_dir = await mkdir(t, top, "create-seq")

                async def create_seq(t: Target = t, d: int = seq_dir) -> float:
                    return (await create_files(t, d, n_create_seq, 1))[0]

                await ameasure(
                    rows, "create empty file, sequential", "ops/s", t.name, run, create_seq
                )
                big_dir = await mkdir(t, top, "big")
                names: list[str] = []

                async def create_big(
                    t: Target = t, d: int = big_dir, out: list[str] = names
                ) -> float:
                    rate, ids = await create_files(t, d, n_big, CONCURRENCY)
                    out.extend(ids)
                    return rate

                await ameasure(
                    rows,
                    f"create empty file, {CONCURRENCY} concurrent (fills a {n_big:,}-entry dir)",
                    "ops/s",
                    t.name,
                    run,
                    create_big,
                )
                if len(names) != n_big:
                    continue
                await ameasure(
                    rows,
                    f"list a {n_big:,}-entry dir, pages of 1000",
                    "entries/s",
                    t.name,
                    run,
                    lambda t=t, d=big_dir: list_dir(t, d, n_big, 1000),
                )
                await ameasure(
                    rows,
                    f"list a {n_big:,}-entry dir, pages of 5000",
                    "entries/s",
                    t.name,
                    run,
                    lambda t=t, d=big_dir: list_dir(t, d, n_big, 5000),
                )
                sample = [rng.choice(names) for _ in range(n_lookup)]
                await ameasure(
                    rows,
                    "lookup by name, sequential",
                    "ops/s",
                    t.name,
                    run,
                    lambda t=t, d=big_dir, s=sample: lookups(t, d, s, 1),
                )
                await ameasure(
                    rows,
                    f"lookup by name, {CONCURRENCY} concurrent",
                    "ops/s",
                    t.name,
                    run,
                    lambda t=t, d=big_dir, s=sample: lookups(t, d, s, CONCURRENCY),
                )
    finally:
        for t in targets:
            if t.session is not None:
                await t.session.close()


def run(runs: int, quick: bool) -> bool:
    work = Path(tempfile.mkdtemp(prefix="cloudfs-bench-server-"))
    server = ServerProcess(work / "data")
    ceiling = CeilingProcess()
    rows = Rows()
    error = ""
    try:
        log(f"server suite: starting cloudfs-server and the aiohttp ceiling (work dir {work})")
        server.start()
        user = server.add_user("bench")
        ceiling.start()
        targets = [
            Target("ceiling", ceiling.url, {}),
            Target("cloudfs", server.url, user.headers("bench")),
        ]
        asyncio.run(suite(targets, runs, quick, rows))
    except Exception as exc:  # the suite could not run at all: say so in the document
        error = f"{type(exc).__name__}: {exc}"
        log(f"server suite FAILED: {error}")
    finally:
        ceiling.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    name = "server-quick" if quick else "server"
    title = "## Server (issue 2): blocks, commits and metadata over HTTP on loopback" + (
        " — quick smoke run" if quick else ""
    )
    parts = [
        title,
        "",
        header(
            runs,
            "Baseline: `scripts/benchlib/ceiling.py`, a plain aiohttp app "
            "answering the same URLs from memory (no auth, hashing, disk or log), in "
            "its own process like the server. Client: one aiohttp session on "
            "asyncio in the bench process (client and server share the 2 cores).",
        ),
        "",
    ]
    if error:
        parts += [f"**The suite did not complete: {error}**", ""]
    parts.append(
        table(rows, "cloudfs", [("ceiling", "aiohttp in-memory ceiling")], "cloudfs-server")
    )
    parts += ["", NOTES_QUICK if quick else NOTES]
    write_section(name, "\n".join(parts))
    return not error


NOTES = """Notes:
- Blocks: 256 MiB of fresh, distinct blocks per measurement (256 x 1 MiB or 64 x 4 MiB), the same
  bytes to both targets; block ids are computed before the clock starts. cloudfs rehashes every
  uploaded block and writes it to disk (temp file, fsync, rename); the ceiling keeps it in a dict.
  Downloads fetch the blocks just uploaded (server page cache warm); one downloaded block per
  target is rehashed outside the timed loop.
- Commits: 4 KiB single-block content; sequential = one file committed repeatedly with its base
  version; concurrent = 8 workers, one file each (no conflicts). Every answer's version is checked.
- Metadata: create = `POST /v1/nodes/{dir}/children` of an empty file; the concurrent create fills
  the directory that is then listed (every page followed until `next` is null, entry count checked)
  and looked up by random names."""

NOTES_QUICK = """Notes: smoke run with small sizes (32 MiB of blocks per measurement, 1,000-entry
directory); see the full section for reference numbers."""
