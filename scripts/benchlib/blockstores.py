"""Block store throughput, in-process (no HTTP): upload (stage + publish) and download (read) MB/s
and stored bytes for the directory engine, S3 on a local moto, and the compression/encryption
layers, on a mixed corpus (source text and already-compressed data).

Run: `.venv/bin/python scripts/benchlib/blockstores.py` (starts and stops its own moto_server).
Not part of `scripts/bench`; the numbers are quoted in docs/server.md.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import blake3
from cloudfs_server.engines.blockstore import BlockStore
from cloudfs_server.engines.chain import BlockChain, parse_blocks_url
from cloudfs_server.engines.dir import DirBlockStore

ROOT = Path(__file__).resolve().parents[2]
BLOCK_BYTES = 1 << 20
KEY = bytes(range(32))


def corpus() -> tuple[list[bytes], list[bytes]]:
    """(source-text blocks, already-compressed blocks), ~8 MiB each."""
    text = b"".join(p.read_bytes() for p in sorted(ROOT.rglob("*.py")) if ".venv" not in p.parts)
    while len(text) < 8 * BLOCK_BYTES:
        text += text
    text = text[: 8 * BLOCK_BYTES]
    packed = b""
    offset = 0
    while len(packed) < 8 * BLOCK_BYTES:  # gzip -9 of slices of the text: like .gz/.zip files
        packed += gzip.compress(text[offset : offset + 300_000], 9)
        offset = (offset + 300_000) % len(text)
    packed = packed[: 8 * BLOCK_BYTES]

    def split(data: bytes) -> list[bytes]:
        return [data[i : i + BLOCK_BYTES] for i in range(0, len(data), BLOCK_BYTES)]

    return split(text), split(packed)


async def one_body(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 64 * 1024):
        yield data[i : i + 64 * 1024]


async def measure(store: BlockStore, blocks: list[bytes]) -> tuple[float, float, int]:
    ids = [blake3.blake3(b).hexdigest() for b in blocks]
    total = sum(map(len, blocks))
    start = time.perf_counter()
    for block_id, data in zip(ids, blocks, strict=True):
        staged = await store.stage(block_id, one_body(data), 16 << 20)
        await store.publish(staged)
        await store.discard(staged)
    up = total / (time.perf_counter() - start) / 1e6
    start = time.perf_counter()
    for block_id, data in zip(ids, blocks, strict=True):
        path = await store.local_path(block_id)
        got = path.read_bytes() if path is not None else await store.read(block_id, 0, len(data))
        assert got == data
    down = total / (time.perf_counter() - start) / 1e6
    sizes = await store.stored_sizes() or {}
    stored = sum(sizes.get(b, 0) for b in ids)
    return up, down, stored


async def run(moto_url: str) -> None:
    text, packed = corpus()
    with tempfile.TemporaryDirectory() as tmp:
        stacks = {
            "dir": lambda n: BlockChain([DirBlockStore(Path(tmp) / n)]),
            "s3 (moto)": lambda n: BlockChain([parse_blocks_url(f"s3://b{n}?endpoint={moto_url}")]),
            "compress(dir)": lambda n: BlockChain([DirBlockStore(Path(tmp) / n)], compress=True),
            "encrypt(dir)": lambda n: BlockChain([DirBlockStore(Path(tmp) / n)], key=KEY),
            "compress+encrypt(dir)": lambda n: BlockChain(
                [DirBlockStore(Path(tmp) / n)], compress=True, key=KEY
            ),
            "compress+encrypt(s3)": lambda n: BlockChain(
                [parse_blocks_url(f"s3://c{n}?endpoint={moto_url}")], compress=True, key=KEY
            ),
        }
        print(
            f"{'stack':<24} {'corpus':<8} {'up MB/s':>8} {'down MB/s':>10} {'stored/logical':>15}"
        )
        n = 0
        for name, make in stacks.items():
            for label, blocks in (("text", text), ("packed", packed)):
                n += 1
                store = make(f"s{n}").build()
                await store.open()
                try:
                    up, down, stored = await measure(store, blocks)
                finally:
                    await store.close()
                ratio = stored / sum(map(len, blocks))
                print(f"{name:<24} {label:<8} {up:>8.0f} {down:>10.0f} {ratio:>15.3f}")


def main() -> None:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    os.environ.update(env)
    moto = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert moto.stderr is not None
        url = ""
        while not url:
            line = moto.stderr.readline()
            if not line:
                raise SystemExit("moto_server exited early")
            m = re.search(r"Running on (http://127\.0\.0\.1:\d+)", line)
            url = m.group(1) if m else ""
        # moto logs every request to stderr: keep reading it so it never blocks on the pipe
        threading.Thread(target=lambda: [None for _ in moto.stderr], daemon=True).start()  # type: ignore[union-attr]
        asyncio.run(run(url))
    finally:
        moto.terminate()
        moto.wait(10)


if __name__ == "__main__":
    main()
