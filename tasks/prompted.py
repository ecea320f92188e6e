"""Registers one seqio Task per (dataset, template), P3 style.

A training task renders its dataset with one template, tokenizes `inputs`,
`targets` and `prompt` and appends EOS. Its rank-classification variant
(`score=True`) expands each example into one row per answer choice before
tokenizing (see `tasks.preprocessors`) and is scored with
`spt_jax.eval_protocol.rank_classification_accuracy`.
"""

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from spt_jax import eval_protocol
from tasks import metrics
from tasks import preprocessors
from tasks import prompt_templates
from tasks import registry
from tasks import sources

# T0 caps the mixing rate of datasets larger than this (see `mixing_rate`).
MAX_EXAMPLES_PER_DATASET = 500_000


@dataclasses.dataclass(frozen=True)
class PromptedDataset:
  """A dataset and the templates that prompt it.

  Attributes:
    name: the dataset's name in task names (e.g. 'super_glue_cb').
    source: the raw data.
    templates: the template collection (`tasks/templates/<templates>.json`).
    keep_features: raw features kept after templating (name -> dotted path),
      for metrics that need them.
  """

  name: str
  source: seqio.DataSource
  templates: str
  keep_features: Mapping[str, str] = dataclasses.field(default_factory=dict)

  @property
  def template_collection(self) -> prompt_templates.TemplateCollection:
    return prompt_templates.load(self.templates)


def mixing_rate(
    num_examples: int, num_templates: int, cap: Optional[int] = None
) -> int:
  """T0's rate of each of a dataset's template tasks.

  As T0's code computes it (bigscience-workshop/t-zero,
  `t0/seqio_tasks/tasks.py`): a dataset of at most `cap` examples gives each
  of its template tasks its full size N; a larger one gives each `cap // T`.

  Args:
    num_examples: N, the size of the dataset's training split.
    num_templates: T, the number of its templates (one task each).
    cap: the size above which a dataset is capped; None is
      `MAX_EXAMPLES_PER_DATASET` (500,000).

  Returns:
    N if N <= cap, else cap // T.
  """
  cap = MAX_EXAMPLES_PER_DATASET if cap is None else cap
  return num_examples if num_examples <= cap else cap // num_templates


def count_examples(source: seqio.DataSource, split: str = 'train') -> int:
  """The number of raw examples in a split, read from the data.

  Args:
    source: a `sources.TfdsSource` (its size comes from the prepared
      dataset's info) or `sources.LocalSource` (JSON lines counted, or
      TFRecord records counted), or any source that knows its size.
    split: the split.

  Returns:
    The split's size.

  Raises:
    sources.DataNotFoundError: the data is not there (the message says how
      to provide it).
    ValueError: the source cannot tell its size.
  """
  if isinstance(source, sources.LocalSource):
    files = source.list_shards(split)  # Raises when the data is missing.
    if all(f.endswith('.jsonl') for f in files):
      count = 0
      for file in files:
        with tf.io.gfile.GFile(file, 'rb') as f:
          count += sum(1 for line in f if line.strip())
      return count
    return int(
        tf.data.TFRecordDataset(files).reduce(
            tf.constant(0, tf.int64), lambda n, _: n + 1
        )
    )
  size = source.num_input_examples(split)
  if size is None:
    source.get_dataset(split, shuffle=False)  # Raises when not prepared.
    raise ValueError(f'{source} does not know the size of split {split!r}.')
  return int(size)


def lazy_mixing_rate(
    source: seqio.DataSource, num_templates: int, split: str = 'train'
) -> Callable[[seqio.Task], int]:
  """A seqio rate function giving `mixing_rate` of the data's own size.

  The size is read (`count_examples`) when the mixture first asks for the
  rate, not when the mixture is registered, and then kept.

  Args:
    source: the dataset's source, shared by its template tasks.
    num_templates: T, the number of the dataset's template tasks.
    split: the training split.

  Returns:
    task -> the rate of each of the dataset's template tasks.
  """
  sizes = []

  def rate(task: seqio.Task) -> int:
    del task  # Every template task of the dataset has the same rate.
    if not sizes:
      sizes.append(count_examples(source, split))
    return mixing_rate(sizes[0], num_templates)

  return rate


def preprocessors_for(
    template: prompt_templates.Template,
    score: bool = False,
    keep_features: Optional[Mapping[str, str]] = None,
) -> list[Callable[..., Any]]:
  """Template -> [rank classification] -> tokenize -> cache -> EOS."""
  steps = [
      functools.partial(
          preprocessors.apply_template,
          template=template,
          keep_features=None if score else keep_features,
      )
  ]
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
        Callable[[prompt_templates.Template], Callable[..., Any]]
    ] = None,
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
    name = eval_protocol.task_name(
        collection, dataset.name, template.name, score
    )
    if score:
      postprocess = metrics.rank_classification_postprocessor
      task_metrics = [eval_protocol.rank_classification_accuracy]
    else:
      postprocess = postprocess_fn(template) if postprocess_fn else None
      task_metrics = list(metric_fns)
    registry.add_task(
        name,
        source=dataset.source,
        preprocessors=preprocessors_for(template, score, dataset.keep_features),
        output_features=output_features,
        postprocess_fn=postprocess,
        metric_fns=task_metrics,
    )
    names.append(name)
  return names
