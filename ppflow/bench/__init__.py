"""Benchmarks: one timer, sampling / training / GPU-suite speed and memory against the FLOPs bound."""
