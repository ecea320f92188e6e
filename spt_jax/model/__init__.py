"""The SPT model: T5 1.1 with a memory bank of prompts, and its contract.

Configuration (config.py), T5 blocks (layers.py), the network (network.py,
spt_prefix.py, memory_bank.py, retrieval.py, prompts.py), the loss and
retrieval outputs (models.py), the batch layout the model reads
(feature_converters.py) and the logical axis rules (partitioning.py). Imports
neither T5X, the runners nor `tasks`.
"""
