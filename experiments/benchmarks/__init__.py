"""Benchmarks run by `make bench`: ratio tables measured in one run."""
