"""Helpers for the test suite and the benchmarks (never used by a running gateway)."""
