"""A seqio evaluator that also reports each dataset's mean and median over templates.

T0 (and SPT after it) reports zero-shot accuracy per dataset as the mean and
the median over the dataset's prompt templates, each template being one task.
seqio's `Evaluator` computes and logs metrics per task; this subclass adds,
after them, one entry per dataset named `<dataset>__templates`, with
`<metric>_mean`, `<metric>_median` and `num_templates` for every metric the
dataset's templates share. Its loggers write it like any task (T5X's
`JSONLogger`: `EVAL_OUTPUT_DIR/<dataset>__templates-metrics.jsonl`).

Use it in T5X as `inference_evaluator_cls` (gin_configs/runs/spt_eval.gin).
"""

import concurrent.futures
from typing import Any, Mapping, Optional

from absl import logging
import numpy as np
import seqio

from spt_jax import eval_protocol

AGGREGATE_SUFFIX = '__templates'


def aggregate_all_metrics(
    task_metrics: Mapping[str, Mapping[str, Any]],
) -> dict[str, dict[str, float]]:
  """Per dataset, the mean and median of each metric over its templates.

  Args:
    task_metrics: task name -> {metric: value}, as seqio's evaluator returns.
      Tasks whose names are not prompted-task names are left out.

  Returns:
    `<dataset>__templates` -> {`<metric>_mean`, `<metric>_median`,
    `num_templates`}.
  """
  prompted = {}
  for name, values in task_metrics.items():
    try:
      eval_protocol.template_info(name)
    except ValueError:
      continue
    prompted[name] = {
        k: v for k, v in values.items() if np.ndim(getattr(v, 'value', v)) == 0
    }
  metric_names = sorted({m for values in prompted.values() for m in values})
  aggregated: dict[str, dict[str, float]] = {}
  for metric in metric_names:
    values = {
        name: {metric: float(getattr(v[metric], 'value', v[metric]))}
        for name, v in prompted.items()
        if metric in v
    }
    summary = eval_protocol.aggregate_over_templates(values, metric)
    for dataset, stats in summary.items():
      entry = aggregated.setdefault(dataset + AGGREGATE_SUFFIX, {})
      entry[f'{metric}_mean'] = stats['mean']
      entry[f'{metric}_median'] = stats['median']
      # A metric only some templates report must not lower the count.
      entry['num_templates'] = max(
          entry.get('num_templates', 0), stats['num_templates']
      )
  return aggregated


class TemplateAggregatingEvaluator(seqio.Evaluator):
  """`seqio.Evaluator` that adds per-dataset aggregates over templates."""

  def evaluate(
      self, *, compute_metrics: bool, step: Optional[int] = None, **kwargs
  ):
    """As `seqio.Evaluator.evaluate`; the metrics also hold the aggregates."""
    task_metrics, outputs = super().evaluate(
        compute_metrics=compute_metrics, step=step, **kwargs
    )
    with_aggregates = concurrent.futures.Future()

    def add_aggregates(future):
      try:
        results = future.result()
        if results is not None:
          aggregated = aggregate_all_metrics(results)
          for name, values in aggregated.items():
            self._log(name, values, step)
          results = {**results, **aggregated}
        with_aggregates.set_result(results)
      except Exception as e:  # pylint: disable=broad-except
        with_aggregates.set_exception(e)

    task_metrics.add_done_callback(add_aggregates)
    return with_aggregates, outputs

  def _log(
      self, name: str, values: Mapping[str, float], step: Optional[int]
  ) -> None:
    logging.info('%s: %s', name, values)
    scalars = {k: seqio.metrics.Scalar(v) for k, v in values.items()}
    for logger in self.loggers:
      logger(
          task_name=name,
          step=step,
          metrics=scalars,
          dataset=None,
          inferences=None,
          targets=None,
      )
