"""Benchmarks for flask-sse-keepalive: open streams, throughput and latency per worker.

Run ``python -m benchmarks`` from the repository root; see ``docs/performance.rst``.
"""
