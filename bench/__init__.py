"""Reproducible benchmarks: ``python -m bench.emulator_throughput``, ``python -m bench.crawl_memory``.

They print tables of figures measured in the same run (and ratios between them), never assert timings.
"""
