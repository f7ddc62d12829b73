"""asv benchmarks of fps-profile (see docs/asv.md); thin wrappers over the profiler's own functions."""
