"""Datasets: benchmark loaders (hub or local mirror), the offline toy benchmark, and batching."""
