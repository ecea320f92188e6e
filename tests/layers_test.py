"""T5 blocks against numpy oracles: attention, RMS norm, relative positions, masks."""

import jax
import jax.numpy as jnp
import numpy as np

from spt_jax.model import layers


def _normal(shape, seed):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_dot_product_attention_is_unscaled_softmax_attention():
  query, key, value = (_normal((2, 3, 4, 5), s) for s in range(3))
  key, value = key[:, :2].copy(), value[:, :2].copy()
  bias = _normal((1, 4, 3, 2), 3)
  logits = np.einsum('bqnd,bknd->bnqk', query, key) + bias  # No 1/sqrt(D).
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  expected = np.einsum('bnqk,bknd->bqnd', weights, value)
  np.testing.assert_allclose(
      layers.dot_product_attention(query, key, value, bias),
      expected,
      rtol=1e-5,
      atol=1e-6,
  )


def test_rms_norm_scales_by_the_root_mean_square():
  x = _normal((2, 3, 8), 0)
  norm = layers.RMSNorm()
  variables = norm.init(jax.random.PRNGKey(0), x)
  scale = np.linspace(0.5, 2.0, 8).astype(np.float32)
  expected = x / np.sqrt(np.mean(x**2, -1, keepdims=True) + 1e-6) * scale
  np.testing.assert_allclose(
      norm.apply({'params': {'scale': scale}}, x), expected, rtol=1e-5
  )
  assert variables['params_axes']['scale_axes'].names == ('embed',)


def test_relative_position_buckets():
  bucket = layers.RelativePositionBiases.relative_position_bucket
  distance = np.arange(-200, 201)
  causal = bucket(distance, False, 32, 128)
  # Causal: the future shares bucket 0; exact up to 15 steps back, then
  # log-spaced, monotone, and capped at the last bucket.
  np.testing.assert_array_equal(causal[distance >= 0], 0)
  np.testing.assert_array_equal(
      causal[(distance < 0) & (distance > -16)],
      -distance[(distance < 0) & (distance > -16)],
  )
  assert np.all(np.diff(causal[distance <= 0][::-1]) >= 0)
  assert causal.max() == 31 and causal[0] == 31
  # Bidirectional: half the buckets each way (later keys in the upper half),
  # exact up to 7.
  both = bucket(distance, True, 32, 128)
  np.testing.assert_array_equal(
      both[200 + np.arange(1, 8)], 16 + np.arange(1, 8)
  )
  np.testing.assert_array_equal(both[200 - np.arange(8)], np.arange(8))
  assert both.max() == 31 and set(both[distance < 0]) <= set(range(16))


def test_relative_position_bias_depends_only_on_the_distance():
  module = layers.RelativePositionBiases(
      num_buckets=8, max_distance=16, num_heads=2
  )
  variables = module.init(jax.random.PRNGKey(0), 5, 7)
  bias = np.asarray(module.apply(variables, 5, 7))[0]  # [N, Q, K]
  table = np.asarray(variables['params']['rel_embedding'])
  buckets = module.relative_position_bucket(
      np.arange(7)[None, :] - np.arange(5)[:, None], True, 8, 16
  )
  np.testing.assert_allclose(bias, table[:, buckets], rtol=1e-6)
  np.testing.assert_array_equal(bias[:, 1:, 1:], bias[:, :-1, :-1])


def test_masks():
  tokens = jnp.array([[5, 6, 0], [7, 0, 0]])
  padding = layers.make_attention_mask(tokens > 0, tokens > 0)
  expected = (
      np.asarray(tokens > 0)[:, None, :, None]
      & np.asarray(tokens > 0)[:, None, None, :]
  )
  np.testing.assert_array_equal(padding, expected)
  decoder = layers.make_decoder_mask(tokens)
  np.testing.assert_array_equal(
      decoder, expected & np.tril(np.ones((3, 3), bool))[None, None]
  )
  assert layers.combine_masks(None, None) is None
