"""Benchmarks: `python -m bench` writes BENCHMARKS.md; `python -m bench --smoke` checks they still run (CI)."""
