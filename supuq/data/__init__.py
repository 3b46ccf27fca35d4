"""Datasets: the cache format, readers for each source, splits."""
