"""Parity configs: AdaTape and its baselines on the same data and budget."""
