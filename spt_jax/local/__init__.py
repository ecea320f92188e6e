"""The local runner: training and evaluation without T5X.

`python -m spt_jax.local.train` (train.py, trainer.py, train_checkpoints.py,
run_lock.py, distributed.py) and `python -m spt_jax.local.eval` (eval.py).
"""
