"""Checkpoint I/O: Hugging Face and T5X checkpoints read and written without T5X.

hf_checkpoints.py, t5x_checkpoints.py, the converter
(`python -m spt_jax.checkpoints.convert_checkpoint`) and spt_params.py (which
parameters are SPT's, for partial restores and frozen backbones).
"""
