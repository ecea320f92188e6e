"""Registers one seqio Task per (dataset, template), P3 style.

A training task renders its dataset with one template, tokenizes `inputs`,
`targets` and `prompt` and appends EOS. Its rank-classification variant
(`score=True`) expands each example into one row per answer choice before
tokenizing (see `tasks.preprocessors`) and is scored with
`tasks.metrics.rank_classification_accuracy`.
"""
import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional, Sequence

import seqio

from tasks import metrics
from tasks import preprocessors
from tasks import prompt_templates
from tasks import registry

# T0 counts a dataset of more than 500k examples as 500k when mixing.
MAX_EXAMPLES_PER_DATASET = 500_000


@dataclasses.dataclass(frozen=True)
class PromptedDataset:
  """A dataset and the templates that prompt it.

  Attributes:
    name: the dataset's name in task names (e.g. 'super_glue_cb').
    source: the raw data.
    templates: the template collection (`tasks/templates/<templates>.json`).
    train_examples: the size of the training split, for mixing rates.
    keep_features: raw features kept after templating (name -> dotted path),
      for metrics that need them.
  """
  name: str
  source: seqio.DataSource
  templates: str
  train_examples: int = 0
  keep_features: Mapping[str, str] = dataclasses.field(default_factory=dict)

  @property
  def template_collection(self) -> prompt_templates.TemplateCollection:
    return prompt_templates.load(self.templates)


def mixing_rate(num_examples: int, num_templates: int,
                cap: int = MAX_EXAMPLES_PER_DATASET) -> float:
  """T0's rate of each of a dataset's template tasks: min(N, cap / T).

  Args:
    num_examples: N, the size of the dataset's training split.
    num_templates: T, the number of its templates (one task each).
    cap: the most examples a dataset counts for.

  Returns:
    The rate of one template task; the dataset's T tasks sum to min(N T, cap).
  """
  return float(min(num_examples, cap / num_templates))


def preprocessors_for(
    template: prompt_templates.Template,
    score: bool = False,
    keep_features: Optional[Mapping[str, str]] = None,
) -> list[Callable[..., Any]]:
  """Template -> [rank classification] -> tokenize -> cache -> EOS."""
  steps = [functools.partial(
      preprocessors.apply_template, template=template,
      keep_features=None if score else keep_features)]
  if score:
    steps.append(preprocessors.rank_classification)
  return steps + [
      seqio.preprocessors.tokenize,
      seqio.CacheDatasetPlaceholder(),
      seqio.preprocessors.append_eos_after_trim,
  ]


def register(
    collection: str,
    dataset: PromptedDataset,
    output_features: Mapping[str, seqio.Feature],
    score: bool = False,
    postprocess_fn: Optional[
        Callable[[prompt_templates.Template], Callable[..., Any]]] = None,
    metric_fns: Sequence[Callable[..., Any]] = (),
) -> list[str]:
  """Registers a task per template of `dataset`; returns their names.

  Args:
    collection: the first part of the task names (e.g. 'spt_t0').
    dataset: the dataset and its templates.
    output_features: `inputs`, `targets`, `prompt` features.
    score: register rank-classification tasks (scored, `__score` names)
      instead of generation tasks.
    postprocess_fn: template -> postprocessor of generation tasks.
    metric_fns: the metric functions of generation tasks.

  Returns:
    The registered task names, in template order.
  """
  names = []
  for template in dataset.template_collection.templates:
    name = registry.task_name(collection, dataset.name, template.name, score)
    if score:
      postprocess = metrics.rank_classification_postprocessor
      task_metrics = [metrics.rank_classification_accuracy]
    else:
      postprocess = postprocess_fn(template) if postprocess_fn else None
      task_metrics = list(metric_fns)
    registry.add_task(
        name,
        source=dataset.source,
        preprocessors=preprocessors_for(template, score, dataset.keep_features),
        output_features=output_features,
        postprocess_fn=postprocess,
        metric_fns=task_metrics)
    names.append(name)
  return names
