"""Human durations for both command lines (layer 0, pure): `500ms`, `1s`, `30m`, `12h`, `7d`;
a plain number is seconds. The server imports it too (tests/test_layers.py SHARED_PURE)."""

from __future__ import annotations

import math
import re

_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d|w)?\s*$", re.IGNORECASE)


def parse_duration(text: str, default_unit: str = "s") -> float:
    """Seconds for `500ms`, `1s`, `1.5`, `30m`, `12h`, `7d`, `2w`; a bare number is in
    `default_unit` (seconds unless the option's name says otherwise, e.g. `--retention-days`).

    Raises:
        ValueError: with a message naming the bad text.
    """
    m = _DURATION_RE.match(text)
    if not m:
        raise ValueError(f"invalid duration {text!r} (use e.g. 500ms, 30s, 30m, 12h or 7d)")
    seconds = float(m.group(1)) * _UNITS_S[(m.group(2) or default_unit).lower()]
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {text!r}: too large")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact text among `ms`/`s`/`m`/`h`/`d` (`90s` → `90s`, `3600` → `1h`)."""
    for unit in ("d", "h", "m", "s"):
        value = seconds / _UNITS_S[unit]
        if value >= 1 and value == int(value):
            return f"{int(value)}{unit}"
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"
