"""Benchmarks: scripts that print `name: value` lines (see each issue)."""
