"""Benchmark commands: speed and memory are measured here, never by timed tests."""
