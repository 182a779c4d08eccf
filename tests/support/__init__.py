"""Helpers shared by the tests, the demo and the benchmark (never shipped in the plugin)."""
