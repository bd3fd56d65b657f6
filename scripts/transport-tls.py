"""http versus https through the client's HTTP transport, in one run (docs/client.md, "HTTP
transport"): median `GET /v1/me` latency and 1 MiB block GET throughput, against two real
`cloudfs-server` processes on loopback (one plain, one with a throw-away trustme certificate).
The httpx path (what https used before) is measured too, for comparison.

    .venv/bin/python scripts/transport-tls.py [--calls 300] [--blocks 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloudfs.api import ApiClient
from cloudfs.chunking import block_id_of
from tests.support import ServerProcess, make_tls_files, start_tls_server


async def measure(
    api: ApiClient, calls: int, blocks: list[str], rounds: int
) -> tuple[float, float]:
    for _ in range(10):
        await api.me()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        await api.me()
        samples.append(time.perf_counter() - start)
    start = time.perf_counter()
    total = 0
    for _ in range(rounds):
        for block_id in blocks:
            total += len(await api.get_block(block_id))
    elapsed = time.perf_counter() - start
    return statistics.median(samples) * 1e3, total / elapsed / 1e6


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        tls = make_tls_files(base / "tls")
        plain = ServerProcess(base / "plain").start()
        secure = start_tls_server(base / "secure", tls)
        try:
            datas = [os.urandom(1 << 20) for _ in range(args.blocks)]
            ids = [block_id_of(d) for d in datas]
            results = []
            for label, srv, httpx_only in (
                ("http  (raw transport)", plain, False),
                ("https (raw transport over TLS)", secure, False),
                ("https (httpx, the old path)", secure, True),
            ):
                user = srv.add_user(f"u{len(results)}")
                api = ApiClient(srv.url, user.token, "bench", ca_file=str(tls.ca_file))
                try:
                    for block_id, data in zip(ids, datas, strict=True):
                        await api.put_block(block_id, data)
                    if httpx_only:
                        assert api._raw is not None
                        await api._raw.aclose()
                        api._raw = None
                    results.append((label, *await measure(api, args.calls, ids, args.rounds)))
                finally:
                    await api.aclose()
        finally:
            secure.stop()
            plain.stop()
    print(f"{args.calls} GET /v1/me, {args.blocks} x 1 MiB blocks x {args.rounds} rounds")
    for label, me_ms, mbps in results:
        print(f"{label:32s} GET /v1/me median {me_ms:.3f} ms   1 MiB GET {mbps:.0f} MB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    trio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
