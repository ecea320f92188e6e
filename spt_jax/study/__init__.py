"""The study: `python -m spt_jax.study.compare` (settings side by side) and analysis.py (retrievals)."""
