"""SeqIO tasks and mixtures of SPT (semi-parametric prompt tuning).

Importing `tasks` registers every task and mixture (T5X:
`MIXTURE_OR_TASK_MODULE = 'tasks'`); nothing is downloaded or read until a
dataset is requested. Mixtures:

  spt_t0_train                     T0's multitask prompted training mixture
  spt_t0_heldout                   T0's held-out datasets, rank classification
  spt_glue, spt_glue_<dataset>     GLUE, for SPT pretraining
  spt_super_glue, spt_super_glue_<dataset>   SuperGLUE fine-tuning
  spt_synthetic_train              offline synthetic mixture (training)
  spt_synthetic_seen               ... its seen templates, rank classification
  spt_synthetic_heldout_templates  ... held-out templates, rank classification
  spt_synthetic_heldout_tasks      ... held-out task families, rank classif.
  spt_synthetic_heldout            ... both held-out sets, rank classification
  spt_synthetic_heldout_gen        ... both held-out sets, generation
  spt_p3_t0_train, spt_p3_t0plus_train, spt_p3_t0plusplus_train
                                   T0, T0+, T0++ training mixtures over P3
  spt_p3_t0_heldout                T0's held-out evaluation over P3
                                   (the spt_p3 names only with $SPT_P3_DIR
                                   set: see `tasks.p3`)

Tasks are named `<collection>__<dataset>__<template>[__score]`
(`spt_jax.eval_protocol.template_info` reads the name back). Every task outputs
`inputs`, `targets` and `prompt` (the template's instruction, SPT's retrieval
query), int32 token ids ending in EOS; `__score` tasks add `idx` int32 [2] and
`is_correct` bool, one row per answer choice (P3's tasks differ: see
`tasks.p3`). Feature lengths:
`tasks.t0.FEATURE_LENGTHS`, `tasks.glue.FEATURE_LENGTHS`,
`tasks.super_glue.FEATURE_LENGTHS`, `tasks.synthetic.SYNTHETIC_FEATURE_LENGTHS`,
`tasks.p3.datasets.FEATURE_LENGTHS`.
Models read them through `spt_jax.model.feature_converters.SptEncDecFeatureConverter`.
List them with `python -m tasks.show --list`.
"""

from tasks import glue
from tasks import p3
from tasks import super_glue
from tasks import synthetic
from tasks import synthetic_study
from tasks import t0
