"""Evaluation: padded, batched scoring and decoding match the model's own."""

import json

import jax
import numpy as np
import pytest
import tensorflow as tf

from spt_jax import config
from spt_jax import eval as eval_lib
from spt_jax import gin_utils
from spt_jax import models
from spt_jax import network

VOCAB = 32
SPT = config.SptConfig(num_memories=4, memory_length=2, top_k=2,
                       prompt_length=2)


@pytest.fixture(scope='module')
def model_params_and_features():
  t5 = config.t5_1_1_config('tiny', vocab_size=VOCAB, dropout_rate=0.0)
  model = models.SptModel(network.SptTransformer(t5, SPT))
  rng = np.random.default_rng(0)
  rows = len(jax.local_devices()) + 1  # A full batch, then a padded one.
  targets = rng.integers(2, VOCAB, size=(rows, 4)).astype(np.int32)
  targets[-1, 2:] = 0
  features = {
      'encoder_input_tokens':
          rng.integers(2, VOCAB, size=(rows, 7)).astype(np.int32),
      'decoder_input_tokens': np.concatenate(
          [np.zeros((rows, 1), np.int32), targets[:, :-1]], axis=1),
      'decoder_target_tokens': targets,
      'decoder_loss_weights': (targets > 0).astype(np.int32),
  }
  shapes = {k: v.shape for k, v in features.items()}
  params = model.get_initial_variables(jax.random.PRNGKey(0), shapes)['params']
  return model, params, features


def _enumerated(features):
  # seqio's evaluator hands an enumerated dataset; 'targets' is not a model
  # feature and must be dropped.
  dataset = tf.data.Dataset.from_tensor_slices(
      {**features, 'targets': features['decoder_target_tokens']})
  return dataset.enumerate()


def test_score_and_predict_fns_pad_the_last_batch(model_params_and_features):
  model, params, features = model_params_and_features
  rows = len(features['decoder_target_tokens'])
  fns = eval_lib.ModelFns(model, params, batch_size=rows - 1)
  scores = fns.score_fn(_enumerated(features))
  assert [i for i, _ in scores] == list(range(rows))
  np.testing.assert_allclose(
      [s for _, s in scores], model.score_batch(params, features), rtol=1e-5)
  predictions = fns.predict_fn(_enumerated(features))
  np.testing.assert_array_equal(
      [p for _, p in predictions], model.predict_batch(params, features))


def test_eval_results_to_json_and_an_unknown_task_is_named():
  results = eval_lib.EvalResults(
      tasks={'t': {'accuracy': 50.0}}, datasets={'d': {'mean': 50.0}})
  assert json.loads(results.to_json()) == {
      'tasks': {'t': {'accuracy': 50.0}}, 'datasets': {'d': {'mean': 50.0}}}
  with pytest.raises(gin_utils.ConfigError, match="Unknown mixture or task 'nope'"):
    eval_lib.check_mixture_or_task('nope')
