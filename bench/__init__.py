"""Benchmarks: each starts what it measures and prints its figures next to the command that
produced them (see bench/README.md). Run ``python -m bench`` for the list."""
