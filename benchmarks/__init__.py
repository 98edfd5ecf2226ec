"""ukl-build benchmarks: UKL vs user mode (vs a stock kernel), side by side in one run."""
