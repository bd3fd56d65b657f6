"""cloudfs benchmark harness (`scripts/bench`): each suite measures cloudfs next to a baseline in
the same run and rewrites its own section of docs/benchmarks.md."""
