"""Benchmarks, run with ``hotcold bench <name>``; each measures hotcold side by side with a
reference in the same run and reports ratios (see docs/benchmarks.md)."""
