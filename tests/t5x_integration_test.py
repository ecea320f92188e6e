"""SptTransformer inside real T5X: loss, score_batch, predict_batch, partitioner.

Skipped where T5X is not importable (it is not on PyPI; see the README).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

t5x = pytest.importorskip('t5x')
from t5x import adafactor  # pylint: disable=g-import-not-at-top
from t5x import models as t5x_models_lib
from t5x import partitioning as t5x_partitioning
from t5x import train_state as train_state_lib
import seqio  # pylint: disable=g-import-not-at-top

from spt_jax import config  # pylint: disable=g-import-not-at-top
from spt_jax import network
from spt_jax import partitioning
from spt_jax import t5x_models

VOCAB_PATH = os.path.join(
    os.path.dirname(seqio.__file__), 'test_data/sentencepiece/sentencepiece.model'
)
SHAPES = {
    'encoder_input_tokens': (4, 10),
    'decoder_input_tokens': (4, 5),
    'decoder_target_tokens': (4, 5),
    'decoder_loss_weights': (4, 5),
}


def _model(cls, **t5_overrides):
  vocab = seqio.SentencePieceVocabulary(VOCAB_PATH)
  t5_overrides.setdefault('vocab_size', vocab.vocab_size)
  module = network.SptTransformer(
      config.t5_1_1_config('tiny', dropout_rate=0.1, **t5_overrides),
      config.SptConfig(num_memories=8, memory_length=2, top_k=2, soft_prompt_length=2),
  )
  optimizer = adafactor.Adafactor(
      decay_rate=0.8, logical_factor_rules=t5x_models.logical_factor_rules()
  )
  return cls(
      module=module, input_vocabulary=vocab, output_vocabulary=vocab,
      optimizer_def=optimizer, z_loss=1e-4,
  )


def _batch(vocab_size):
  rng = np.random.default_rng(0)
  targets = rng.integers(3, vocab_size, size=(4, 5))
  targets[:, 4] = 1
  return {
      'encoder_input_tokens': jnp.asarray(rng.integers(3, vocab_size, size=(4, 10))),
      'decoder_input_tokens': jnp.asarray(np.concatenate([np.zeros((4, 1), int), targets[:, :-1]], 1)),
      'decoder_target_tokens': jnp.asarray(targets),
      'decoder_loss_weights': jnp.ones((4, 5), jnp.float32),
  }


@pytest.mark.parametrize('cls', [t5x_models_lib.EncoderDecoderModel, t5x_models.SptEncoderDecoderModel])
def test_loss_score_and_predict(cls):
  model = _model(cls)
  variables = model.get_initial_variables(
      jax.random.PRNGKey(0), {k: v for k, v in SHAPES.items()}
  )
  assert 'memory_bank' in variables['params']
  params = variables['params']
  batch = _batch(model.module.config.vocab_size)

  loss, metrics = model.loss_fn(params, batch, jax.random.PRNGKey(1))
  assert np.isfinite(float(loss))
  grads = jax.grad(lambda p: model.loss_fn(p, batch, jax.random.PRNGKey(1))[0])(params)
  assert np.abs(grads['memory_bank']['keys']).sum() > 0
  if cls is t5x_models.SptEncoderDecoderModel:
    assert 'spt/pull_loss' in metrics and 'spt/balance_loss' in metrics
    plain_loss, _ = _model(t5x_models_lib.EncoderDecoderModel).loss_fn(params, batch, jax.random.PRNGKey(1))
    assert float(loss) > float(plain_loss)  # The auxiliary losses are added.

  scores = model.score_batch(params, batch)
  assert scores.shape == (4,)
  assert np.all(np.asarray(scores) < 0)

  predictions = model.predict_batch(params, batch)
  assert predictions.shape == (4, 5)
  predictions, aux = model.predict_batch_with_aux(params, batch, num_decodes=2, return_all_decodes=True)
  assert predictions.shape == (4, 2, 5)


def test_partitioner_shards_the_bank_and_adafactor_factors_it():
  if jax.device_count() < 8:
    pytest.skip('needs 8 devices')
  # T5X's CPU mesh puts every local device on `model` (data=1, model=8), so
  # the bank is mapped to `model` here to see it split; vocabulary and heads
  # are multiples of 8 (T5 pads its 32100 pieces to 32128 for this).
  model = _model(
      t5x_models.SptEncoderDecoderModel, vocab_size=64, num_heads=8, head_dim=8
  )
  partitioner = t5x_partitioning.PjitPartitioner(
      num_partitions=1,
      logical_axis_rules=t5x_partitioning.standard_logical_axis_rules(
          additional_rules=partitioning.spt_logical_axis_rules('model')
      ),
  )

  def init(rng):
    variables = model.get_initial_variables(rng, SHAPES)
    return train_state_lib.FlaxOptimTrainState.create(model.optimizer_def, variables)

  abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  axes = partitioner.get_mesh_axes(abstract)
  bank_axes = axes.params['memory_bank']
  assert bank_axes['values'][0] == 'model' and bank_axes['keys'][0] == 'model'
  state = partitioner.partition(init, None, axes)(jax.random.PRNGKey(0))
  values = state.params['memory_bank']['values']
  assert values.shape == (8, 2, 64)
  assert {s.data.shape for s in values.addressable_shards} == {(1, 2, 64)}
  # Values are factored per memory; keys keep full second moments.
  slots = state.param_states['memory_bank']
  assert slots['values'].v_row.shape == (8, 64)
  assert slots['values'].v_col.shape == (8, 2)
  assert slots['keys'].v.shape == (8, 64)
