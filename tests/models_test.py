"""SptModel: loss, scores and greedy decoding against uncached oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spt_jax.model import config
from spt_jax.model import models
from spt_jax.model import network
from tests import params_test_utils

VOCAB = 32
T5 = config.t5_1_1_config('tiny', vocab_size=VOCAB, dropout_rate=0.0)
# Every part of the prefix: soft prompt, memories, an in-band discrete prompt.
SPT = config.SptConfig(
    num_memories=8,
    memory_length=2,
    top_k=2,
    soft_prompt_length=2,
    prompt_length=3,
)
INPUT_LENGTH, TARGET_LENGTH = 5, 6


def _batch():
  rng = np.random.default_rng(0)
  encoder = rng.integers(2, VOCAB, size=(2, INPUT_LENGTH + SPT.prompt_length))
  encoder[1, 3:INPUT_LENGTH] = 0  # Padding inside the input.
  targets = rng.integers(2, VOCAB, size=(2, TARGET_LENGTH))
  targets[0, 4:] = 0
  inputs = np.concatenate([np.zeros((2, 1), int), targets[:, :-1]], axis=1)
  return {
      'encoder_input_tokens': jnp.asarray(encoder, jnp.int32),
      'decoder_input_tokens': jnp.asarray(inputs, jnp.int32),
      'decoder_target_tokens': jnp.asarray(targets, jnp.int32),
      'decoder_loss_weights': jnp.asarray(targets > 0, jnp.float32),
  }


@pytest.fixture(scope='module')
def model_and_params():
  model = models.SptModel(
      network.SptTransformer(T5, SPT),
      z_loss=0.0,
      pull_loss_weight=0.5,
      balance_loss_weight=0.25,
  )
  shapes = {k: v.shape for k, v in _batch().items()}
  params = params_test_utils.initial_params(model, shapes)
  return model, params


def _log_probs(model, params, batch):
  logits = model.compute_logits(params, batch)
  return np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)))


def test_loss_is_mean_token_cross_entropy_plus_weighted_aux_losses(
    model_and_params,
):
  model, params = model_and_params
  batch = _batch()
  loss, metrics = model.loss_fn(params, batch, None)
  targets = np.asarray(batch['decoder_target_tokens'])
  weights = targets > 0
  target_log_probs = np.take_along_axis(
      _log_probs(model, params, batch), targets[..., None], -1
  )[..., 0]
  cross_entropy = -np.sum(target_log_probs * weights) / weights.sum()
  np.testing.assert_allclose(
      metrics['cross_ent_loss'], cross_entropy, rtol=1e-5
  )
  # Per target token, each auxiliary loss counts as much as the cross entropy.
  aux = 0.5 * metrics['spt/pull_loss'] + 0.25 * metrics['spt/balance_loss']
  np.testing.assert_allclose(metrics['spt/aux_loss'], aux, rtol=1e-5)
  np.testing.assert_allclose(loss, cross_entropy + aux, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss'], loss)
  assert float(metrics['z_loss']) == 0.0
  assert 0 < float(metrics['spt/pull_loss']) < 2
  assert 0 <= float(metrics['accuracy']) <= 1


def test_scores_are_summed_target_log_likelihoods(model_and_params):
  model, params = model_and_params
  batch = _batch()
  targets = np.asarray(batch['decoder_target_tokens'])
  target_log_probs = np.take_along_axis(
      _log_probs(model, params, batch), targets[..., None], -1
  )[..., 0]
  np.testing.assert_allclose(
      model.score_batch(params, batch),
      np.sum(target_log_probs * (targets > 0), axis=-1),
      rtol=1e-5,
  )


def test_every_cached_decode_step_matches_the_uncached_forward_pass(
    model_and_params,
):
  """Teacher-forced: step t of the cache sees what position t sees uncached."""
  model, params = model_and_params
  module = model.module
  batch = _batch()
  full = np.asarray(
      model.compute_logits(
          params,
          {
              **batch,
              'decoder_target_tokens': jnp.ones_like(
                  batch['decoder_target_tokens']
              ),
          },
      )
  )
  encoder_tokens = batch['encoder_input_tokens']
  encoded = module.apply(
      {'params': params},
      encoder_tokens,
      enable_dropout=False,
      method=module.encode,
  )
  assert encoded.shape[1] == SPT.prefix_length + INPUT_LENGTH
  cached = params_test_utils.cached_decode_logits(
      module, params, encoded, encoder_tokens, batch['decoder_input_tokens']
  )
  for t in range(TARGET_LENGTH):
    np.testing.assert_allclose(
        cached[:, t], full[:, t], rtol=1e-5, atol=1e-5, err_msg=f'step {t}'
    )


def test_predict_batch_is_greedy_argmax_of_the_forward_pass(model_and_params):
  """Oracle: extend the sequence by the argmax of an uncached forward pass."""
  model, params = model_and_params
  batch = _batch()
  predicted = np.asarray(model.predict_batch(params, batch))
  # Any token may be EOS; the oracle stops a row there as predict_batch does.
  eos_id = int(predicted[0, 1])
  predicted = np.asarray(model.predict_batch(params, batch, eos_id=eos_id))
  expected = np.zeros((2, TARGET_LENGTH), np.int32)
  done = np.zeros(2, bool)
  for t in range(TARGET_LENGTH):
    inputs = np.concatenate([np.zeros((2, 1), np.int32), expected[:, :-1]], 1)
    logits = model.compute_logits(
        params,
        {
            **batch,
            'decoder_input_tokens': jnp.asarray(inputs),
            'decoder_target_tokens': jnp.ones((2, TARGET_LENGTH), jnp.int32),
        },
    )
    token = np.where(done, 0, np.argmax(np.asarray(logits[:, t]), axis=-1))
    expected[:, t] = token
    done |= token == eos_id
  np.testing.assert_array_equal(predicted, expected)
  assert done[0]  # The EOS path was exercised.
