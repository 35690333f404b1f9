"""Benchmarks: ``python -m bench.<name>``; results land in ``bench/results/`` and ``bench/RESULTS.md``."""
