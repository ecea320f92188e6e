"""The evaluation protocol that the tasks and the runners share.

Every prompted task is named `<collection>__<dataset>__<template>`, with the
suffix `__score` for its rank-classification variant, e.g.
`spt_t0__super_glue_cb__can_we_infer__score`. `template_info` reads a name back
into (dataset, template), which is how evaluation groups templates by dataset.
Score tasks are measured by `rank_classification_accuracy` (seqio's
`(targets, scores)` metric convention, in percent), and
`aggregate_over_templates` gives the mean and median over each dataset's
templates, as T0 reports zero-shot results.
"""

import collections
from typing import Any, Mapping, Sequence

import numpy as np

SEPARATOR = '__'
SCORE_SUFFIX = 'score'


def task_name(
    collection: str, dataset: str, template: str, score: bool = False
) -> str:
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
        f'[{SEPARATOR}{SCORE_SUFFIX}]).'
    )
  return parts[1], parts[2]


def is_score_task(name: str) -> bool:
  return name.endswith(SEPARATOR + SCORE_SUFFIX)


def rank_classification_accuracy(
    targets: Sequence[tuple[int, int, bool]], scores: Sequence[float]
) -> dict[str, float]:
  """Accuracy of choosing, per example, the choice with the highest score.

  Args:
    targets: one (example index, choice index, is_correct) per row, as
      `rank_classification_postprocessor` makes them.
    scores: the log-likelihood of each row's target.

  Returns:
    {'accuracy': percent of examples whose best-scored choice is correct}.
  """
  if len(targets) != len(scores):
    raise ValueError(f'{len(targets)} targets but {len(scores)} scores.')
  best = {}
  for (example_idx, _, is_correct), score in zip(targets, scores):
    score = float(score)
    if example_idx not in best or score > best[example_idx][0]:
      best[example_idx] = (score, is_correct)
  correct = [is_correct for _, is_correct in best.values()]
  return {'accuracy': 100 * float(np.mean(correct)) if correct else 0.0}


def aggregate_over_templates(
    results: Mapping[str, Mapping[str, float]], metric: str = 'accuracy'
) -> dict[str, dict[str, Any]]:
  """Mean and median of a metric over each dataset's templates.

  Args:
    results: task name -> {metric name: value}, e.g. seqio's evaluation
      results of the `spt_t0_heldout` tasks. Task names are read with
      `template_info`; tasks without the metric are skipped.
    metric: the metric to aggregate.

  Returns:
    dataset -> {'mean', 'median', 'num_templates', 'per_template':
    {template: value}}, datasets sorted by name.
  """
  per_dataset = collections.defaultdict(dict)
  for task, task_results in results.items():
    if metric not in task_results:
      continue
    dataset, template = template_info(task)
    per_dataset[dataset][template] = float(task_results[metric])
  summary = {}
  for dataset in sorted(per_dataset):
    values = list(per_dataset[dataset].values())
    summary[dataset] = {
        'mean': float(np.mean(values)),
        'median': float(np.median(values)),
        'num_templates': len(values),
        'per_template': dict(sorted(per_dataset[dataset].items())),
    }
  return summary
