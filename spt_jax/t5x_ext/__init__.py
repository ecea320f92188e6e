"""The T5X integration: what `t5x.train`, `t5x.eval` and `t5x.infer` run.

models.py wraps the SPT network in a `t5x.models.EncoderDecoderModel`;
sparse.py is the T5X trainer and optimizer for row-sparse bank updates. These
are the only modules that import `t5x`; the gin files under gin_configs/models
and gin_configs/runs name them.
"""
