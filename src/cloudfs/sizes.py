"""Human sizes for both command lines (layer 0, pure): `512M`, `10G`, `1.5T`, plain bytes.
The server imports it too (tests/test_layers.py SHARED_PURE)."""

from __future__ import annotations

import re

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str, minimum: int = 1) -> int:
    """Bytes for `512M`, `10G`, `64MiB`, `4096` (binary units); at least `minimum`.

    Raises:
        ValueError: with a message naming the bad text.
    """
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"invalid size {text!r} (use e.g. 512M or 10G)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value < minimum:
        raise ValueError(
            f"invalid size {text!r}: must be positive"
            if minimum == 1
            else f"invalid size {text!r}: must be at least {minimum} bytes"
        )
    return value


def format_size(n_bytes: int) -> str:
    """`1.5 GiB`-style text for status output."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n_bytes} B"
