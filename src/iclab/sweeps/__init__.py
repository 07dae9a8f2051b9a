"""Sweeps: grid specs, executors (local, Ray), the sweep directory, threshold search."""
