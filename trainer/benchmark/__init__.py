"""Throughput benchmarks of query encoding (mixed workloads); `python -m trainer.bench` is the command line."""
