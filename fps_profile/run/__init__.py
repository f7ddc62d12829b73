"""Driving many measurements: grids, isolated workers, executors, the max-batch search."""
