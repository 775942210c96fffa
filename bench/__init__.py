"""Benchmarks of memagent on real kernel pressure (see bench/README.md)."""
