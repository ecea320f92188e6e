"""The encoder-decoder feature converter of SPT models.

`SptEncDecFeatureConverter` is seqio's `EncDecFeatureConverter` without
packing (SPT prepends retrieved prompts to each example's input, so examples
cannot share a row) that carries the discrete prompt, from which the model
forms its retrieval query, in the last `prompt_length` positions of the
encoder tokens:

  task feature        model feature            dtype, shape
  inputs, prompt      encoder_input_tokens     int32 [inputs length + prompt_length]
  targets             decoder_target_tokens    int32 [targets length]
                      decoder_input_tokens     int32 [targets length]
                      decoder_loss_weights     int32 [targets length]

`inputs` is padded to its length and `prompt` to `prompt_length`, each with 0,
so the prompt always starts at the same position. The prompt travels inside
`encoder_input_tokens` because that is the one encoder feature T5X passes to
every method of the network (training, scoring, `encode` before decoding, beam
search); a separate feature would need every one of those code paths
re-implemented. `SptConfig.prompt_length` tells the network where to split,
and the models build this converter from it (`FEATURE_CONVERTER_CLS`), so the
two cannot disagree.

With `prompt_length=0` the converter is exactly seqio's and a task's `prompt`
feature, if any, is dropped: the network then pools its query over the input.
"""

import copy
from typing import Mapping

import seqio
import tensorflow as tf

from spt_jax import gin_utils

# Feature names of the task/model contract: `inputs` (the rendered prompt),
# `targets` (the answer) and `prompt` (the template's instruction, the
# retrieval query). `tasks.vocab.output_features` declares them.
INPUTS = 'inputs'
TARGETS = 'targets'
PROMPT = 'prompt'

_Spec = seqio.FeatureConverter.FeatureSpec


class MissingPromptError(gin_utils.InputError, ValueError):
  """The model reads a discrete prompt that the task does not provide."""


class SptEncDecFeatureConverter(seqio.EncDecFeatureConverter):
  """`EncDecFeatureConverter` with the discrete prompt after the inputs.

  Attributes:
    prompt_length: positions of the discrete prompt at the end of
      `encoder_input_tokens`; longer prompts are cut to it. It overrides
      any `prompt` entry of the task feature lengths (seqio's evaluator
      passes the longest prompt of the data there).
  """

  def __init__(self, pack: bool = False, prompt_length: int = 0, **kwargs):
    if pack:
      raise ValueError(
          'SptEncDecFeatureConverter cannot pack: SPT prepends retrieved '
          'prompts to every example, so examples cannot share a row. Set '
          'pack=False (in T5X: utils.DatasetConfig.pack = False).'
      )
    if prompt_length < 0:
      raise ValueError(f'prompt_length must be >= 0, got {prompt_length}.')
    self.prompt_length = prompt_length
    super().__init__(pack=False, **kwargs)

  def __call__(
      self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
  ) -> tf.data.Dataset:
    """Converts task features to model features (see the module docstring)."""
    lengths = {k: v for k, v in task_feature_lengths.items() if k != PROMPT}
    if not self.prompt_length:
      return super().__call__(ds, lengths)
    if PROMPT not in ds.element_spec:
      raise MissingPromptError(
          f'The model reads a discrete prompt of {self.prompt_length} tokens '
          f"(SptConfig.prompt_length), but the task has no '{PROMPT}' "
          f'feature (it has {sorted(ds.element_spec)}). Set '
          '`config.SptConfig.prompt_length = 0` to pool the retrieval query '
          'over the input instead (SptConfig.prompt_span).'
      )
    lengths[PROMPT] = self.prompt_length
    ds = ds.map(
        lambda ex: {**ex, PROMPT: ex[PROMPT][: self.prompt_length]},
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    # seqio validates features against TASK_FEATURES: convert with a copy
    # whose task features include the prompt.
    with_prompt = copy.copy(self)
    with_prompt.TASK_FEATURES = {
        **self.TASK_FEATURES,
        PROMPT: _Spec(dtype=tf.int32),
    }
    return seqio.EncDecFeatureConverter.__call__(with_prompt, ds, lengths)

  def _convert_example(
      self, features: Mapping[str, tf.Tensor]
  ) -> Mapping[str, tf.Tensor]:
    converted = dict(super()._convert_example(features))
    if PROMPT in self.TASK_FEATURES:
      converted['encoder_input_tokens'] = tf.concat(
          [converted['encoder_input_tokens'], features[PROMPT]], axis=-1
      )
    return converted

  def get_model_feature_lengths(
      self, task_feature_lengths: Mapping[str, int]
  ) -> Mapping[str, int]:
    lengths = dict(
        super().get_model_feature_lengths(
            {k: v for k, v in task_feature_lengths.items() if k != PROMPT}
        )
    )
    lengths['encoder_input_tokens'] += self.prompt_length
    return lengths
