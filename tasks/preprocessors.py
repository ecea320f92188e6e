"""SeqIO preprocessors: prompt templates and rank-classification expansion.

`apply_template` turns raw examples into prompted text examples:

    inputs          string []   the rendered input (instruction + fields)
    targets         string []   the rendered target
    prompt          string []   the template's instruction (no field values)
    answer_choices  string [C]  the rendered answer choices (C may be 0)

`rank_classification` expands each prompted example into one row per answer
choice for scoring:

    inputs, prompt  string []     repeated on every row
    targets         string []     the choice
    idx             int32 [2]     (example index, choice index)
    is_correct      bool []       whether the choice is the example's target
"""

import json
from typing import Any, Callable, Mapping, Optional

from absl import logging
import numpy as np
import tensorflow as tf

from tasks import prompt_templates
from tasks import vocab

ANSWER_CHOICES = 'answer_choices'
IDX = 'idx'
IS_CORRECT = 'is_correct'
_KEEP = '_keep'


def to_python(value: Any) -> Any:
  """Nests of numpy values (tf.numpy_function) -> str/int/float/bool/list."""
  if isinstance(value, Mapping):
    return {k: to_python(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_python(v) for v in value]
  if isinstance(value, np.ndarray):
    if value.ndim == 0:
      return to_python(value.item())
    return [to_python(v) for v in value]
  if isinstance(value, bytes):
    return value.decode('utf-8', errors='replace')
  if isinstance(value, np.generic):
    return value.item()
  return value


def _get(example: Mapping[str, Any], path: str) -> Any:
  for key in path.split('.'):
    example = example[key]
  return example


def _stand_in(spec: tf.TensorSpec) -> Any:
  """A Python value of a feature's type: 'x', 0, 0.0, False, or a list of one."""
  value = {tf.string: 'x', tf.bool: False}.get(
      spec.dtype, 0.0 if spec.dtype.is_floating else 0
  )
  return [value] * (spec.shape.rank or 0) if spec.shape.rank else value


def check_template(template: prompt_templates.Template) -> None:
  """Fails on a template that can give no example a target.

  Without `|||` a template renders no target, and an empty answer choice can
  be no example's target: each would drop every record, and training would
  find an empty dataset only when it asks for its first batch.

  Raises:
    prompt_templates.TemplateError: naming the template and the fix.
  """
  start = f'Template {template.name!r} ({template.jinja[:60]!r})'
  if prompt_templates.SEPARATOR not in template.jinja:
    raise prompt_templates.TemplateError(
        f'{start} has no target: its jinja has no '
        f'"{prompt_templates.SEPARATOR}" between the input and the target.'
    )
  choices = template.fixed_answer_choices
  if choices is not None and not all(choices):
    raise prompt_templates.TemplateError(
        f'{start} has an empty answer choice ({template.answer_choices!r} '
        f'gives {list(choices)}): give each choice some text, separated by '
        f'"{prompt_templates.SEPARATOR}".'
    )


def _is_power_of_ten(n: int) -> bool:
  while n % 10 == 0:
    n //= 10
  return n == 1


def _numpy_renderer(
    template: prompt_templates.Template, structure: Any
) -> Callable[..., tuple]:
  """The `tf.numpy_function` body of `apply_template`.

  Args:
    template: the template to render.
    structure: the raw examples' element_spec, to pack the flat values.

  Returns:
    A function of an example's flattened values to (inputs, targets,
    answer choices, keep); a record without a target gives keep False and
    counts towards the skipped-records warning.
  """
  skipped = [0]

  def render(*flat_values):
    example = to_python(tf.nest.pack_sequence_as(structure, list(flat_values)))
    rendered = template.render(example)
    if rendered is None:
      skipped[0] += 1
      if _is_power_of_ten(skipped[0]):
        logging.warning(
            'Template %r: skipped %d record(s) without a target so far (a '
            'label outside its answer_choices, e.g. -1 for unlabelled '
            'records, or an empty target); the latest: %s',
            template.name,
            skipped[0],
            json.dumps(example, default=str)[:200],
        )
      return b'', b'', np.zeros([0], dtype=object), False
    choices = np.array(
        [c.encode('utf-8') for c in rendered.answer_choices], dtype=object
    )
    return (
        rendered.inputs.encode('utf-8'),
        rendered.targets.encode('utf-8'),
        choices,
        True,
    )

  return render


def apply_template(
    dataset: tf.data.Dataset,
    template: prompt_templates.Template,
    keep_features: Optional[Mapping[str, str]] = None,
) -> tf.data.Dataset:
  """Renders raw examples with a template; drops those without a target.

  Args:
    dataset: raw examples (any nest of scalar or 1-D tensors).
    template: the template to render.
    keep_features: output name -> dotted path of raw features to keep beside
      the prompted text (e.g. {'answers': 'answers'} for ReCoRD's metric).

  Returns:
    Examples with `inputs`, `targets`, `prompt`, `answer_choices` (see the
    module docstring) and the kept features.

  Records without a target (a label outside the answer choices, such as
  GLUE's -1 for unlabelled records, or a target that renders empty) are
  skipped with a warning that counts them (logged at the 1st, 10th, 100th,
  ... such record). Not an error: unlabelled records are expected in some
  splits, and one stray label should not stop a long run; a split that
  keeps no record at all is an error where the runner reads it
  (`spt_jax.local.eval.check_data`).

  Raises:
    prompt_templates.TemplateError: the template uses a variable the dataset
      does not have, has no target, or has an empty answer choice (checked
      here, before any example is read).
  """
  structure = dataset.element_spec
  check_template(template)
  template.check_fields(tf.nest.map_structure(_stand_in, structure))
  instruction = template.instruction
  render = _numpy_renderer(template, structure)

  def prompt_example(example):
    inputs, targets, choices, keep = tf.numpy_function(
        render,
        tf.nest.flatten(example),
        [tf.string, tf.string, tf.string, tf.bool],
        stateful=False,
    )
    inputs.set_shape([])
    targets.set_shape([])
    choices.set_shape([None])
    keep.set_shape([])
    features = {
        vocab.INPUTS: inputs,
        vocab.TARGETS: targets,
        vocab.PROMPT: tf.constant(instruction),
        ANSWER_CHOICES: choices,
        _KEEP: keep,
    }
    for name, path in (keep_features or {}).items():
      features[name] = _get(example, path)
    return features

  dataset = dataset.map(prompt_example, num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.filter(lambda ex: ex[_KEEP])
  return dataset.map(lambda ex: {k: v for k, v in ex.items() if k != _KEEP})


def rank_classification(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """One row per answer choice, for scoring by log-likelihood.

  Args:
    dataset: prompted examples with `inputs`, `targets`, `prompt` and
      `answer_choices` (see `apply_template`); other features are dropped.

  Returns:
    Rows with `inputs`, `prompt`, `targets` (the choice), `idx` int32 [2]
    (example index, choice index) and `is_correct` bool (choice == target).
    Examples without choices give no row.
  """

  def expand(index, example):
    choices = example[ANSWER_CHOICES]
    num_choices = tf.shape(choices)[0]
    example_idx = tf.fill([num_choices], tf.cast(index, tf.int32))
    is_correct = tf.equal(choices, example[vocab.TARGETS])
    check = tf.debugging.Assert(
        tf.logical_or(tf.equal(num_choices, 0), tf.reduce_any(is_correct)),
        [
            'The target is not among the answer choices, so no choice would be '
            'scored as correct: fix the template (its target must render to one '
            'of its answer_choices). Template instruction:',
            example[vocab.PROMPT],
            'target:',
            example[vocab.TARGETS],
            'choices:',
            choices,
        ],
        summarize=20,
    )
    with tf.control_dependencies([check]):
      is_correct = tf.identity(is_correct)
    return {
        vocab.INPUTS: tf.fill([num_choices], example[vocab.INPUTS]),
        vocab.PROMPT: tf.fill([num_choices], example[vocab.PROMPT]),
        vocab.TARGETS: choices,
        IDX: tf.stack([example_idx, tf.range(num_choices)], axis=1),
        IS_CORRECT: is_correct,
    }

  return (
      dataset.enumerate()
      .map(expand, num_parallel_calls=tf.data.AUTOTUNE)
      .unbatch()
  )
