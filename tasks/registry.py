"""Task naming and idempotent registration.

Every prompted task is named `<collection>__<dataset>__<template>`, with the
suffix `__score` for its rank-classification variant, e.g.
`spt_t0__super_glue_cb__can_we_infer__score`. `template_info` reads a name back
into (dataset, template), which is how evaluation groups templates by dataset
(`tasks.metrics.aggregate_over_templates`).

`add_task` / `add_mixture` replace an existing registration of the same name,
so importing (or reloading) the task modules twice is harmless.
"""
from typing import Any, Sequence, Union

import seqio

SEPARATOR = '__'
SCORE_SUFFIX = 'score'


def task_name(collection: str, dataset: str, template: str,
              score: bool = False) -> str:
  """`<collection>__<dataset>__<template>[__score]`."""
  for part in (collection, dataset, template):
    if SEPARATOR in part:
      raise ValueError(f'{part!r} must not contain {SEPARATOR!r}.')
  parts = [collection, dataset, template] + ([SCORE_SUFFIX] if score else [])
  return SEPARATOR.join(parts)


def template_info(name: str) -> tuple[str, str]:
  """(dataset, template) of a task named by `task_name`.

  Args:
    name: a task name such as `spt_t0__anli_r1__guaranteed__score`.

  Returns:
    ('anli_r1', 'guaranteed').

  Raises:
    ValueError: the name does not follow the naming scheme.
  """
  parts = name.split(SEPARATOR)
  if len(parts) == 4 and parts[3] == SCORE_SUFFIX:
    parts = parts[:3]
  if len(parts) != 3 or not all(parts):
    raise ValueError(
        f'{name!r} is not a prompted task name '
        f'(<collection>{SEPARATOR}<dataset>{SEPARATOR}<template>'
        f'[{SEPARATOR}{SCORE_SUFFIX}]).')
  return parts[1], parts[2]


def is_score_task(name: str) -> bool:
  return name.endswith(SEPARATOR + SCORE_SUFFIX)


def add_task(name: str, **kwargs: Any) -> seqio.Task:
  """`seqio.TaskRegistry.add`, replacing any task of the same name."""
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, **kwargs)


def add_mixture(
    name: str,
    tasks: Sequence[Union[str, tuple[str, float]]],
    default_rate: Any = None,
) -> seqio.Mixture:
  """`seqio.MixtureRegistry.add`, replacing any mixture of the same name."""
  seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, tasks, default_rate=default_rate)
