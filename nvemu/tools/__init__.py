"""What runs traces on machines: replay, the crash-consistency checker, benchmarks and sweeps."""
