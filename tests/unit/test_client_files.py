"""The staging overlay and the manifest builder against an in-memory model (real LMDB cache,
tiny chunks; no server needed because every base block is in the cache)."""

from __future__ import annotations

import random
from pathlib import Path

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudfs.api import ApiClient
from cloudfs.blocks import BlockStore
from cloudfs.cache import LocalCache
from cloudfs.chunking import Chunker, ChunkParams, block_id_of
from cloudfs.files import Extents, FileState, Manifest, build_manifest

TINY = ChunkParams.tiny()


def test_extents_merge_clip_overlap() -> None:
    e = Extents()
    e.add(10, 20)
    e.add(30, 40)
    e.add(20, 25)  # touching merges
    assert list(e) == [(10, 25), (30, 40)]
    e.add(5, 35)
    assert list(e) == [(5, 40)]
    e.add(50, 60)
    assert e.overlapping(0, 100) == [(5, 40), (50, 60)]
    assert e.overlapping(38, 52) == [(38, 40), (50, 52)]
    assert e.overlaps(40, 50) is False and e.overlaps(39, 41) is True
    e.clip(55)
    assert list(e) == [(5, 40), (50, 55)]
    e.clip(50)
    assert list(e) == [(5, 40)]
    e.clip(3)
    assert not e
    assert e.total == 0


def test_manifest_spans() -> None:
    m = Manifest([("a", 10), ("b", 5), ("c", 10)])
    assert m.size == 25
    assert m.spans(0, 25) == [(0, "a", 0, 10), (1, "b", 0, 5), (2, "c", 0, 10)]
    assert m.spans(12, 17) == [(1, "b", 2, 5), (2, "c", 0, 2)]
    assert m.spans(30, 40) == []


def test_cdc_insertion_changes_only_nearby_chunks() -> None:
    rnd = random.Random(1)
    data = rnd.randbytes(200_000)
    chunker = Chunker(ChunkParams(avg_bytes=4096, min_bytes=1024, max_bytes=16384))
    before = chunker.cut_and_hash(data, True)[0]
    after = chunker.cut_and_hash(b"inserted!" * 10 + data, True)[0]
    old_ids = {b for b, _, _ in before}
    new_ids = [b for b, _, _ in after]
    changed = [b for b in new_ids if b not in old_ids]
    assert len(before) > 20
    assert len(changed) <= 3, f"{len(changed)} of {len(new_ids)} chunks changed"


def _store(tmp: Path) -> tuple[LocalCache, BlockStore]:
    cache = LocalCache(tmp / "lmdb", 64 << 20)
    api = ApiClient("http://127.0.0.1:9", "token", "test", retry_budget_s=0)
    return cache, BlockStore(cache, api)


def _base(cache: LocalCache, data: bytes) -> tuple[tuple[str, int], ...]:
    chunks, _ = Chunker(TINY).cut_and_hash(data, True)
    for bid, off, n in chunks:
        cache.put_clean(bid, data[off : off + n])
    return tuple((bid, n) for bid, _, n in chunks)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 6000), st.binary(min_size=1, max_size=700)),
        st.tuples(st.just("truncate"), st.integers(0, 6000), st.just(b"")),
        st.tuples(st.just("read"), st.integers(0, 6000), st.integers(0, 3000)),
        st.tuples(st.just("commit"), st.just(0), st.just(b"")),
        st.tuples(st.just("seal"), st.just(0), st.just(b"")),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 1000), initial=st.integers(0, 5000), program=ops)
def test_file_state_matches_a_bytearray(
    tmp_path_factory, seed: int, initial: int, program: list
) -> None:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("fs")
    cache, blocks = _store(tmp)
    model = bytearray(random.Random(seed).randbytes(initial))
    base = _base(cache, bytes(model))
    state = FileState(1, 1, base, 0, tmp)
    version = 1

    async def run() -> None:
        nonlocal version
        for op, a, b in program:
            if op == "write":
                state.write(a, b)
                if a > len(model):
                    model.extend(bytes(a - len(model)))
                model[a : a + len(b)] = b
            elif op == "truncate":
                state.truncate(a)
                del model[a:]
                model.extend(bytes(a - len(model)))
            elif op == "seal":
                start = state.sealable_from()
                if start is not None:
                    buf = state.read_staging(start, state.size)
                    chunks, _ = Chunker(TINY).cut_and_hash(buf, False)
                    cache.put_dirty([(b, buf[o : o + n]) for b, o, n in chunks])
                    state.seal(start, [(b, n) for b, _, n in chunks])
            elif op == "read":
                got = await state.read(a, b, blocks)
                assert got == bytes(model[a : a + b]), f"read({a}, {b})"
            else:
                stored: dict[str, bytes] = {}

                async def store(
                    items: list[tuple[str, bytes]], stored: dict[str, bytes] = stored
                ) -> None:
                    for bid, data in items:
                        assert block_id_of(data) == bid
                        stored[bid] = bytes(data)
                    cache.put_dirty(items)

                new = await build_manifest(state, blocks, TINY, store)
                content = b"".join(
                    [stored.get(bid) or cache.get_block(bid) or b"?" for bid, _ in new]
                )
                assert content == bytes(model)
                version += 1
                state.rebase(version, new)
            assert state.size == len(model)
        assert await state.read(0, len(model) + 10, blocks) == bytes(model)

    try:
        trio.run(run)
    finally:
        state.close_staging()
        cache.close()


def test_small_edit_rechunks_only_around_it(tmp_path: Path) -> None:
    cache, blocks = _store(tmp_path)
    data = random.Random(7).randbytes(100_000)
    base = _base(cache, data)
    state = FileState(1, 1, base, 0, tmp_path)
    state.write(50_000, b"edit")
    fresh: list[str] = []

    async def store(items: list[tuple[str, bytes]]) -> None:
        fresh.extend(b for b, _ in items)
        cache.put_dirty(items)

    new = trio.run(build_manifest, state, blocks, TINY, store)
    rechunked = sum(n for b, n in new if b in set(fresh))
    assert rechunked <= 4 * TINY.max_bytes, f"re-chunked {rechunked} bytes for a 4-byte edit"
    assert len(set(b for b, _ in new) - set(b for b, _ in base)) <= 4
    state.close_staging()
    cache.close()
