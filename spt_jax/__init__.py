"""SPT in JAX: semi-parametric prompt tuning.

Subpackages, lowest first (each imports only those before it):
  gin_utils   gin helpers and the ConfigError every entry point prints.
  optim/      Adafactor and row-sparse updates of the memory bank.
  model/      the SPT network, its loss, feature converter and axis rules.
  checkpoints/  Hugging Face / T5X checkpoint I/O and the SPT parameter split.
  local/      the local runner (train, eval) without T5X.
  t5x_ext/    what T5X's binaries run (the only modules that import t5x).
  study/      the comparison of settings and the retrieval analysis.
  launch/     tpu_pod.py, standard library only.
Nothing here imports `tasks`; `tasks` builds on this package.
"""
