"""Measures the upload timing side channel (issue 11, defect 2): median PUT /v1/blocks time of new
content versus content another user already stored, on a real server (in-process aiohttp on a
loopback port, temp data dir, synchronous=FULL as `serve` runs it).

    .venv/bin/python scripts/upload-timing.py [--uploads 300] [--size 65536]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import blake3
from aiohttp.test_utils import TestServer
from cloudfs_server.http.app import ServerConfig, create_app
from cloudfs_server.http.state import META


async def measure(uploads: int, size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(ServerConfig(data_dir=Path(tmp) / "data"))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            _, ann = await app[META].create_user("ann", None)
            _, ben = await app[META].create_user("ben", None)
            new_s: list[float] = []
            known_s: list[float] = []
            async with aiohttp.ClientSession(str(server.make_url(""))) as http:

                async def put(token: str, data: bytes) -> float:
                    block_id = blake3.blake3(data).hexdigest()
                    start = time.perf_counter()
                    async with http.put(
                        f"/v1/blocks/{block_id}",
                        data=data,
                        headers={"Authorization": f"Bearer {token}"},
                    ) as resp:
                        await resp.read()
                        assert resp.status in (200, 201), resp.status
                    return time.perf_counter() - start

                for i in range(uploads):
                    data = os.urandom(size)
                    # Alternate the order so drift of the machine hits both series alike.
                    if i % 2:
                        new_s.append(await put(ann, data))
                        known_s.append(await put(ben, data))
                    else:
                        other = os.urandom(size)
                        await put(ann, other)
                        known_s.append(await put(ben, other))
                        new_s.append(await put(ann, data))
        finally:
            await server.close()
    new_ms, known_ms = statistics.median(new_s) * 1e3, statistics.median(known_s) * 1e3
    print(f"{uploads} uploads of {size} bytes each")
    print(f"new content:                     median {new_ms:.3f} ms")
    print(f"content another user had stored: median {known_ms:.3f} ms")
    print(f"difference: {known_ms - new_ms:+.3f} ms ({(known_ms / new_ms - 1) * 100:+.1f} %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=300)
    parser.add_argument("--size", type=int, default=65536)
    args = parser.parse_args()
    asyncio.run(measure(args.uploads, args.size))


if __name__ == "__main__":
    main()
