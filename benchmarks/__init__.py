"""Benchmarks of ldmkit against diffusers, run from the repository root as `python -m benchmarks.NAME`."""
