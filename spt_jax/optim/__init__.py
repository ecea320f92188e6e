"""Optimizers: Adafactor (adafactor.py) and row-sparse bank updates (sparse_updates.py)."""
