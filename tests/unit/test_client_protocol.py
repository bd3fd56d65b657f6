"""Pure protocol helpers: names, conflicted-copy names, node parsing, sizes."""

from __future__ import annotations

import time

import pytest

from cloudfs import errors
from cloudfs.protocol import Node, conflict_name, decode_name
from cloudfs.sizes import format_size, parse_size


def test_decode_name_rules() -> None:
    assert decode_name("café.txt".encode()) == "café.txt"
    with pytest.raises(errors.NameTooLongError):
        decode_name(b"a" * 256)
    assert decode_name(b"a" * 255) == "a" * 255
    with pytest.raises(errors.NameTooLongError):  # 128 two-byte characters = 256 bytes
        decode_name(("é" * 128).encode())
    for bad in (b".", b"..", b"", b"a/b", b"a\0b", b"\xff\xfe"):
        with pytest.raises(errors.InvalidNameError):
            decode_name(bad)


def test_conflict_name_format() -> None:
    when = time.mktime((2026, 11, 21, 8, 5, 9, 0, 0, -1))
    assert (
        conflict_name("report.txt", "laptop", when)
        == "report (conflicted copy from laptop 2026-11-21 080509).txt"
    )
    assert (
        conflict_name("Makefile", "desk", when)
        == "Makefile (conflicted copy from desk 2026-11-21 080509)"
    )
    assert conflict_name("a.tar.gz", "d", when).endswith(").gz")
    assert conflict_name("x.txt", "d", when, attempt=2).endswith(" 2).txt")


def test_conflict_name_stays_within_255_bytes() -> None:
    name = "é" * 120 + ".txt"  # 244 bytes
    out = conflict_name(name, "device", 0)
    assert len(out.encode()) <= 255
    assert out.endswith(").txt")
    out.encode().decode("utf-8")  # still valid UTF-8 (no split character)


def test_node_round_trip() -> None:
    obj = {
        "id": 7,
        "parent": 1,
        "name": "a",
        "type": "file",
        "mode": 0o100644,
        "size": 3,
        "mtime_ns": 5,
        "ctime_ns": 6,
        "version": 2,
        "committed_by": "x",
        "committed_at_ns": 9,
        "blocks": [["ab" * 32, 3]],
    }
    node = Node.from_json(obj)
    assert node.mode == 0o644  # kind bits are not part of `mode`
    assert node.blocks == (("ab" * 32, 3),)
    assert Node.from_json(node.to_json()) == node
    with pytest.raises(errors.ProtocolError):
        Node.from_json({"name": "no id"})


@pytest.mark.parametrize(
    "text,expected",
    [
        ("512M", 512 << 20),
        ("10G", 10 << 30),
        ("64MiB", 64 << 20),
        ("4096", 4096),
        ("1.5G", 3 << 29),
        ("2k", 2048),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "ten", "-5M", "0", "5X"])
def test_parse_size_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(bad)


def test_format_size() -> None:
    assert format_size(512) == "512 B"
    assert format_size(3 << 30) == "3.0 GiB"
