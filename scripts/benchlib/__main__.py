"""Entry point of `scripts/bench [server|mount|sync|all] [--quick] [--runs N]`."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from benchlib.common import log

SUITES = ("server", "mount", "sync")


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmarks of cloudfs next to baselines in the same run; each suite "
        "rewrites its section of docs/benchmarks.md (quick runs write '-quick' sections).",
    )
    parser.add_argument("suite", nargs="?", default="all", choices=(*SUITES, "all"))
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run (~3 min)")
    parser.add_argument(
        "--runs", type=int, default=None, help="runs per measurement (default 3; --quick: 1)"
    )
    args = parser.parse_args(argv)
    # Ctrl-C and SIGTERM must run the suites' `finally` blocks (unmount, stop our PIDs), also when
    # started in the background (where SIGINT is inherited as ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    if not 1 <= runs <= 20:
        parser.error("--runs must be between 1 and 20")
    if os.geteuid() != 0 and args.suite in ("mount", "sync", "all"):
        log("warning: not root: tmpfs mounts and drop_caches will fail and be reported as such")
    chosen = SUITES if args.suite == "all" else (args.suite,)
    ok = True
    for name in chosen:
        start = time.monotonic()
        if name == "server":
            from benchlib import server_suite as mod
        elif name == "mount":
            from benchlib import mount_suite as mod  # type: ignore[no-redef]
        else:
            from benchlib import sync_suite as mod  # type: ignore[no-redef]
        ok = mod.run(runs, args.quick) and ok
        log(f"{name} suite finished in {time.monotonic() - start:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
