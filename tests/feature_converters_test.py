"""Tests of `SptEncDecFeatureConverter`: the discrete prompt after the inputs."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from spt_jax.model import feature_converters
from tasks import synthetic


def _dataset(prompt=(4, 6, 1)):
  return tf.data.Dataset.from_tensors(
      {
          'inputs': tf.constant([7, 8, 5, 1], tf.int32),
          'targets': tf.constant([3, 9, 1], tf.int32),
          'prompt': tf.constant(prompt, tf.int32),
          'idx': tf.constant([0, 1], tf.int32),
          'is_correct': tf.constant(True),
      }
  )


def test_appends_the_padded_prompt_to_the_encoder_tokens():
  converter = feature_converters.SptEncDecFeatureConverter(
      pack=False, prompt_length=4
  )
  # The prompt length is the converter's, whatever the task lengths say
  # (seqio's evaluator passes the longest prompt of the data).
  lengths = {'inputs': 6, 'targets': 5, 'prompt': 3}

  converted = next(converter(_dataset(), lengths).as_numpy_iterator())

  expected = {
      'encoder_input_tokens': [7, 8, 5, 1, 0, 0, 4, 6, 1, 0],
      'decoder_target_tokens': [3, 9, 1, 0, 0],
      'decoder_input_tokens': [0, 3, 9, 1, 0],
      'decoder_loss_weights': [1, 1, 1, 0, 0],
  }
  assert set(converted) == set(expected)
  for key, value in expected.items():
    assert converted[key].dtype == np.int32, key
    np.testing.assert_array_equal(converted[key], value, err_msg=key)
  assert converter.get_model_feature_lengths(lengths) == {
      'encoder_input_tokens': 10,
      'decoder_target_tokens': 5,
      'decoder_input_tokens': 5,
      'decoder_loss_weights': 5,
  }


def test_long_prompts_are_cut_to_the_prompt_length():
  converter = feature_converters.SptEncDecFeatureConverter(prompt_length=2)
  converted = next(
      converter(
          _dataset(prompt=(4, 6, 9, 1)), {'inputs': 6, 'targets': 5}
      ).as_numpy_iterator()
  )
  np.testing.assert_array_equal(
      converted['encoder_input_tokens'], [7, 8, 5, 1, 0, 0, 4, 6]
  )


def test_without_prompt_length_behaves_like_seqio():
  lengths = {'inputs': 6, 'targets': 5}
  ours = feature_converters.SptEncDecFeatureConverter(pack=False)
  seqios = seqio.EncDecFeatureConverter(pack=False)

  converted = next(
      ours(_dataset(), {**lengths, 'prompt': 3}).as_numpy_iterator()
  )
  expected = next(seqios(_dataset(), lengths).as_numpy_iterator())

  assert set(converted) == set(expected)
  for key in expected:
    np.testing.assert_array_equal(converted[key], expected[key])
  assert ours.get_model_feature_lengths(
      lengths
  ) == seqios.get_model_feature_lengths(lengths)


def test_packing_is_refused():
  with pytest.raises(ValueError, match='cannot pack'):
    feature_converters.SptEncDecFeatureConverter(pack=True)
  assert not feature_converters.SptEncDecFeatureConverter().pack


def test_a_task_without_prompt_is_named():
  converter = feature_converters.SptEncDecFeatureConverter(prompt_length=4)
  no_prompt = _dataset().map(
      lambda ex: {k: v for k, v in ex.items() if k != 'prompt'}
  )
  with pytest.raises(
      feature_converters.MissingPromptError, match='prompt_length = 0'
  ):
    converter(no_prompt, {'inputs': 6, 'targets': 5})


def test_batches_of_a_synthetic_mixture():
  lengths = dict(synthetic.SYNTHETIC_FEATURE_LENGTHS)
  prompt_length = lengths.pop('prompt')
  ds = seqio.get_dataset(
      synthetic.HELDOUT_TASKS_MIXTURE,
      lengths,
      dataset_split='validation',
      shuffle=False,
      batch_size=4,
      feature_converter=feature_converters.SptEncDecFeatureConverter(
          pack=False, prompt_length=prompt_length
      ),
  )

  batch = next(ds.as_numpy_iterator())

  assert {k: v.shape for k, v in batch.items()} == {
      'encoder_input_tokens': (4, lengths['inputs'] + prompt_length),
      'decoder_target_tokens': (4, lengths['targets']),
      'decoder_input_tokens': (4, lengths['targets']),
      'decoder_loss_weights': (4, lengths['targets']),
  }
  assert all(v.dtype == np.int32 for v in batch.values())
  inputs = batch['encoder_input_tokens'][:, : lengths['inputs']]
  prompt = batch['encoder_input_tokens'][:, lengths['inputs'] :]
  assert np.all(np.sum(prompt == 1, axis=1) == 1)  # One EOS each.
  # The prompt's tokens (the instruction) appear in the encoder input.
  for row in range(4):
    tokens = prompt[row][(prompt[row] > 1)]
    assert set(tokens) <= set(inputs[row])
