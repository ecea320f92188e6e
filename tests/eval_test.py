"""Evaluation: padded, batched scoring and decoding match the model's own."""

import json

import jax
import numpy as np
import pytest
import tensorflow as tf

from spt_jax import gin_utils
from spt_jax.local import eval as eval_lib
from spt_jax.local import checks
from spt_jax.local import train_checkpoints
from spt_jax.local import trainer
from spt_jax.model import config
from spt_jax.model import models
from spt_jax.model import network
from spt_jax.model import partitioning
from tests import params_test_utils

VOCAB = 32
SPT = config.SptConfig(
    num_memories=8, memory_length=2, top_k=2, prompt_length=2
)


@pytest.fixture(scope='module')
def model_params_and_features():
  t5 = config.t5_1_1_config('tiny', vocab_size=VOCAB, dropout_rate=0.0)
  model = models.SptModel(network.SptTransformer(t5, SPT))
  rng = np.random.default_rng(0)
  rows = len(jax.local_devices()) + 1  # A full batch, then a padded one.
  targets = rng.integers(2, VOCAB, size=(rows, 4)).astype(np.int32)
  targets[-1, 2:] = 0
  features = {
      'encoder_input_tokens': rng.integers(2, VOCAB, size=(rows, 7)).astype(
          np.int32
      ),
      'decoder_input_tokens': np.concatenate(
          [np.zeros((rows, 1), np.int32), targets[:, :-1]], axis=1
      ),
      'decoder_target_tokens': targets,
      'decoder_loss_weights': (targets > 0).astype(np.int32),
  }
  shapes = {k: v.shape for k, v in features.items()}
  params = params_test_utils.initial_params(model, shapes)
  return model, params, features


def _enumerated(features):
  # seqio's evaluator hands an enumerated dataset; 'targets' is not a model
  # feature and must be dropped.
  dataset = tf.data.Dataset.from_tensor_slices(
      {**features, 'targets': features['decoder_target_tokens']}
  )
  return dataset.enumerate()


def test_score_and_predict_fns_pad_the_last_batch(model_params_and_features):
  model, params, features = model_params_and_features
  rows = len(features['decoder_target_tokens'])
  fns = eval_lib.ModelFns(model, params, batch_size=rows - 1)
  scores = fns.score_fn(_enumerated(features))
  assert [i for i, _ in scores] == list(range(rows))
  np.testing.assert_allclose(
      [s for _, s in scores], model.score_batch(params, features), rtol=1e-5
  )
  predictions = fns.predict_fn(_enumerated(features))
  np.testing.assert_array_equal(
      [p for _, p in predictions], model.predict_batch(params, features)
  )


def test_eval_results_to_json_and_an_unknown_task_is_named():
  results = eval_lib.EvalResults(
      tasks={'t': {'accuracy': 50.0}}, datasets={'d': {'mean': 50.0}}
  )
  assert json.loads(results.to_json()) == {
      'tasks': {'t': {'accuracy': 50.0}},
      'datasets': {'d': {'mean': 50.0}},
  }
  with pytest.raises(
      gin_utils.ConfigError, match="Unknown mixture or task 'nope'"
  ):
    checks.check_mixture_or_task('nope')


def _sharded_over(leaf, mesh_axis):
  return any(
      mesh_axis in (axes if isinstance(axes, tuple) else (axes,))
      for axes in leaf.sharding.spec
      if axes
  )


def test_model_parallel_evaluation_keeps_the_training_layout(
    model_params_and_features, tmp_path
):
  model, params, features = model_params_and_features
  mesh = partitioning.create_mesh(2)  # 4 replicas x 2 devices each.
  rules = partitioning.default_rules()
  store = train_checkpoints.TrainCheckpoints(str(tmp_path))
  store.save(3, {'params': params, 'opt_state': {'m': np.zeros(5, np.float32)}})
  restored = store.restore_params(
      3, partitioning.params_shardings(trainer.params_axes(model), mesh, rules)
  )
  store.close()
  fns = eval_lib.ModelFns(model, restored, batch_size=8, mesh=mesh, rules=rules)

  leaves = jax.tree.leaves(fns.params)
  # Model-parallel weights split over `model`, the bank over every device: no
  # device holds every parameter.
  assert any(_sharded_over(leaf, 'model') for leaf in leaves)
  assert _sharded_over(fns.params['memory_bank']['values'], 'data')
  per_device = sum(leaf.addressable_shards[0].data.nbytes for leaf in leaves)
  assert per_device <= sum(leaf.nbytes for leaf in leaves) / 2
  jax.tree.map(np.testing.assert_array_equal, restored, params)

  rows = len(features['decoder_target_tokens'])
  scores = fns.score_fn(_enumerated(features))
  np.testing.assert_allclose(
      [s for _, s in scores], model.score_batch(params, features), rtol=1e-5
  )
  assert [i for i, _ in scores] == list(range(rows))
  predictions = fns.predict_fn(_enumerated(features))
  np.testing.assert_array_equal(
      [p for _, p in predictions], model.predict_batch(params, features)
  )


def test_eval_batch_must_split_over_the_replicas(model_params_and_features):
  model, params, _ = model_params_and_features
  with pytest.raises(ValueError, match='multiple of the 4 model replicas'):
    eval_lib.ModelFns(
        model, params, batch_size=6, mesh=partitioning.create_mesh(2)
    )
