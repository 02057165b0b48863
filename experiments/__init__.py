"""Entry points, configs, data loaders, result writers and benchmarks."""
