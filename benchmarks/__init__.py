"""Side-by-side benchmarks of safepool against other process-pool executors.

Run ``python -m benchmarks --help`` from the repository root. Every measurement
runs in a fresh interpreter (:mod:`benchmarks._one`); :mod:`benchmarks.__main__`
only schedules them, collects their JSON lines and reports. Nothing here asserts
anything about timings: it measures and prints.
"""
