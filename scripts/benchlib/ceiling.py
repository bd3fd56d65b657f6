"""The server suite's baseline: a plain aiohttp app that serves the same URLs as the cloudfs API
subset the benchmark uses, from memory only (no auth, no hashing, no disk, no logging).

Run as its own process, like the real server: `python -m benchlib.ceiling` prints
`ceiling listening on http://127.0.0.1:PORT` once it accepts connections.
"""

from __future__ import annotations

import asyncio
import bisect
import signal
import sys
import time

from aiohttp import web

MAX_BODY = 17 << 20


class Memory:
    def __init__(self) -> None:
        # Block bodies live in reused buffers (a free list per size): first touch of fresh memory
        # runs at ~1.3 GB/s here, so a ceiling that allocated per request would not be one.
        self.blocks: dict[str, tuple[bytearray, int]] = {}
        self.free: dict[int, list[bytearray]] = {}
        self.nodes: dict[int, dict] = {}
        self.children: dict[int, dict[str, int]] = {}
        self.sorted_cache: dict[int, tuple[list[str], list[bytes]]] = {}
        self.next_id = 2
        now = time.time_ns()
        self.nodes[1] = {
            "id": 1,
            "parent": None,
            "name": "",
            "type": "dir",
            "mode": 0o755,
            "size": 0,
            "mtime_ns": now,
            "ctime_ns": now,
            "version": 1,
            "committed_by": "api",
            "committed_at_ns": now,
        }
        self.children[1] = {}


def make_app() -> web.Application:
    mem = Memory()
    app = web.Application(client_max_size=MAX_BODY)

    async def put_block(request: web.Request) -> web.Response:
        bid = request.match_info["bid"]
        size = request.content_length
        if size is None or size > MAX_BODY:
            return web.json_response({"error": "bad_request", "message": "length"}, status=400)
        pool = mem.free.setdefault(size, [])
        buf = pool.pop() if pool else bytearray(size)
        view = memoryview(buf)
        got = 0
        async for chunk in request.content.iter_any():
            view[got : got + len(chunk)] = chunk
            got += len(chunk)
        old = mem.blocks.pop(bid, None)
        if old is not None:
            mem.free.setdefault(len(old[0]), []).append(old[0])
        mem.blocks[bid] = (buf, got)
        return web.json_response(
            {"block_id": bid, "size": got, "stored": old is None}, status=200 if old else 201
        )

    async def get_block(request: web.Request) -> web.Response:
        entry = mem.blocks.get(request.match_info["bid"])
        if entry is None:
            return web.json_response({"error": "not_found", "message": "no such block"}, status=404)
        buf, n = entry
        return web.Response(body=memoryview(buf)[:n], content_type="application/octet-stream")

    async def reset(request: web.Request) -> web.Response:
        for buf, _ in mem.blocks.values():
            mem.free.setdefault(len(buf), []).append(buf)
        mem.blocks.clear()
        return web.json_response({"ok": True})

    async def me(request: web.Request) -> web.Response:
        return web.json_response({"user": "bench", "user_id": 1, "root": 1, "quota_bytes": None})

    async def create(request: web.Request) -> web.Response:
        parent = int(request.match_info["nid"])
        doc = await request.json()
        kids = mem.children.get(parent)
        if kids is None:
            return web.json_response({"error": "not_found", "message": "no such node"}, status=404)
        name = doc["name"]
        if name in kids:
            return web.json_response({"error": "exists", "message": "name taken"}, status=409)
        now = time.time_ns()
        nid = mem.next_id
        mem.next_id += 1
        node = {
            "id": nid,
            "parent": parent,
            "name": name,
            "type": doc["type"],
            "mode": doc.get("mode", 0o644),
            "size": doc.get("size", 0),
            "mtime_ns": now,
            "ctime_ns": now,
            "version": 1,
            "committed_by": "api",
            "committed_at_ns": now,
        }
        mem.nodes[nid] = node
        kids[name] = nid
        mem.sorted_cache.pop(parent, None)
        if doc["type"] == "dir":
            mem.children[nid] = {}
        return web.json_response(node, status=201)

    async def commit(request: web.Request) -> web.Response:
        node = mem.nodes.get(int(request.match_info["nid"]))
        doc = await request.json()
        if node is None:
            return web.json_response({"error": "not_found", "message": "no such node"}, status=404)
        if doc["base_version"] != node["version"]:
            return web.json_response(
                {
                    "error": "version_conflict",
                    "message": "moved",
                    "current_version": node["version"],
                },
                status=409,
            )
        node["version"] += 1
        node["size"] = doc["size"]
        node["blocks"] = doc["blocks"]
        out = {k: v for k, v in node.items() if k != "blocks"}
        return web.json_response(out)

    async def list_children(request: web.Request) -> web.Response:
        nid = int(request.match_info["nid"])
        kids = mem.children.get(nid)
        if kids is None:
            return web.json_response({"error": "not_found", "message": "no such node"}, status=404)
        cached = mem.sorted_cache.get(nid)
        if cached is None:
            names = sorted(kids, key=lambda s: s.encode())
            cached = mem.sorted_cache[nid] = (names, [n.encode() for n in names])
        names, encoded = cached
        after = request.query.get("after")
        limit = min(int(request.query.get("limit", 1000)), 5000)
        start = 0
        if after is not None:
            start = bisect.bisect_right(encoded, after.encode())
        page = names[start : start + limit]
        entries = [{k: v for k, v in mem.nodes[kids[n]].items() if k != "blocks"} for n in page]
        nxt = page[-1] if start + limit < len(names) and page else None
        return web.json_response({"entries": entries, "next": nxt})

    async def lookup(request: web.Request) -> web.Response:
        kids = mem.children.get(int(request.match_info["nid"]))
        nid = kids.get(request.query["name"]) if kids is not None else None
        if nid is None:
            return web.json_response({"error": "not_found", "message": "no such name"}, status=404)
        return web.json_response({k: v for k, v in mem.nodes[nid].items() if k != "blocks"})

    async def usage(request: web.Request) -> web.Response:
        stored = sum(n for _, n in mem.blocks.values())
        return web.json_response(
            {
                "logical_bytes": stored,
                "stored_bytes": stored,
                "dedup_ratio": 1.0,
                "quota_bytes": None,
                "files": 0,
                "directories": 0,
            }
        )

    app.router.add_put("/v1/blocks/{bid}", put_block)
    app.router.add_get("/v1/blocks/{bid}", get_block)
    app.router.add_post("/bench/reset", reset)
    app.router.add_get("/v1/me", me)
    app.router.add_get("/v1/usage", usage)
    app.router.add_post("/v1/nodes/{nid}/children", create)
    app.router.add_get("/v1/nodes/{nid}/children", list_children)
    app.router.add_get("/v1/nodes/{nid}/lookup", lookup)
    app.router.add_put("/v1/nodes/{nid}/content", commit)
    return app


async def serve() -> None:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"ceiling listening on http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve())
    sys.exit(0)
