"""The encoder-decoder feature converter of SPT models.

`SptEncDecFeatureConverter` is seqio's `EncDecFeatureConverter` without
packing (SPT prepends retrieved prompts to each example's input, so examples
cannot share a row) plus the discrete prompt from which the model forms its
retrieval query:

  task feature        model feature            dtype, shape
  inputs              encoder_input_tokens     int32 [inputs length]
  targets             decoder_target_tokens    int32 [targets length]
                      decoder_input_tokens     int32 [targets length]
                      decoder_loss_weights     int32 [targets length]
  prompt              encoder_prompt_tokens    int32 [prompt length]

All are padded with 0. `encoder_prompt_tokens` is produced only when the task
feature lengths name `prompt`; otherwise the converter is exactly seqio's.
"""
import copy
from typing import Mapping

import seqio
import tensorflow as tf

from tasks import vocab

ENCODER_PROMPT_TOKENS = 'encoder_prompt_tokens'

_Spec = seqio.FeatureConverter.FeatureSpec


class SptEncDecFeatureConverter(seqio.EncDecFeatureConverter):
  """`EncDecFeatureConverter` + `prompt` -> `encoder_prompt_tokens`."""

  def __init__(self, pack: bool = False, **kwargs):
    if pack:
      raise ValueError(
          'SptEncDecFeatureConverter cannot pack: SPT prepends retrieved '
          'prompts to every example, so examples cannot share a row. Set '
          'pack=False (in T5X: utils.DatasetConfig.pack = False).')
    super().__init__(pack=False, **kwargs)

  def __call__(self, ds: tf.data.Dataset,
               task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    """Converts task features to model features (see the module docstring)."""
    if vocab.PROMPT not in task_feature_lengths:
      return super().__call__(ds, task_feature_lengths)
    # seqio validates features against TASK_FEATURES/MODEL_FEATURES: convert
    # with a copy whose feature specs include the prompt.
    with_prompt = copy.copy(self)
    with_prompt.TASK_FEATURES = {
        **self.TASK_FEATURES, vocab.PROMPT: _Spec(dtype=tf.int32)}
    with_prompt.MODEL_FEATURES = {
        **self.MODEL_FEATURES, ENCODER_PROMPT_TOKENS: _Spec(dtype=tf.int32)}
    return seqio.EncDecFeatureConverter.__call__(
        with_prompt, ds, task_feature_lengths)

  def _convert_example(
      self, features: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
    converted = dict(super()._convert_example(features))
    if vocab.PROMPT in self.TASK_FEATURES:
      converted[ENCODER_PROMPT_TOKENS] = features[vocab.PROMPT]
    return converted

  def get_model_feature_lengths(
      self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
    if vocab.PROMPT in task_feature_lengths:
      lengths[ENCODER_PROMPT_TOKENS] = task_feature_lengths[vocab.PROMPT]
    return lengths
