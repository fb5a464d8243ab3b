"""FLOPs accounting and benchmarks."""
