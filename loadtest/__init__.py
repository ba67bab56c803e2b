"""Load tests and serving benchmarks (capacity planning)."""
