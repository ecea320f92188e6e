"""A tiny T5, its parameters and cached decoding, shared by several test modules."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from spt_jax.model import config
from spt_jax.model import network

VOCAB = 64
T5 = config.t5_1_1_config('tiny', vocab_size=VOCAB, dropout_rate=0.0)
SPT = config.SptConfig(
    num_memories=12, memory_length=3, top_k=2, soft_prompt_length=2
)
SHAPES = dict(enc=(2, 9), dec=(2, 5))


def init_params(spt=config.NO_SPT, t5=T5, seed=0):
  """(network, params as numpy) of a tiny T5 with `spt`."""
  net = network.SptTransformer(t5, spt)
  # Under jit: one XLA program (which the persistent compilation cache shares
  # between tests) instead of an op-by-op dispatch of every initialiser.
  init = jax.jit(functools.partial(net.init, enable_dropout=False))
  variables = init(
      jax.random.PRNGKey(seed),
      jnp.ones(SHAPES['enc'], jnp.int32),
      jnp.ones(SHAPES['dec'], jnp.int32),
      jnp.ones(SHAPES['dec'], jnp.int32),
  )
  return net, jax.tree.map(np.asarray, dict(variables['params']))


def initial_params(model, input_shapes, seed=0):
  """`model.get_initial_variables(...)['params']` under jit (see init_params).

  Args:
    model: a model with T5X's `get_initial_variables(rng, input_shapes)`.
    input_shapes: feature name -> shape, e.g. {'encoder_input_tokens': [B, T]}.
    seed: the PRNG seed.
  """
  return jax.jit(lambda rng: model.get_initial_variables(rng, input_shapes))(
      jax.random.PRNGKey(seed)
  )['params']


def logits(net, params):
  """Logits [2, 5, VOCAB] of a fixed padded batch."""
  rng = np.random.default_rng(0)
  enc = rng.integers(2, VOCAB, size=SHAPES['enc'])
  enc[1, 6:] = 0
  dec = rng.integers(2, VOCAB, size=SHAPES['dec'])
  apply = jax.jit(functools.partial(net.apply, enable_dropout=False))
  return np.asarray(apply({'params': params}, enc, dec, dec))


def assert_trees_equal(actual, expected):
  """Same leaf names, dtypes and values."""
  flat_actual = traverse_util.flatten_dict(actual, sep='/')
  flat_expected = traverse_util.flatten_dict(expected, sep='/')
  assert sorted(flat_actual) == sorted(flat_expected)
  for name, value in flat_expected.items():
    assert flat_actual[name].dtype == value.dtype, name
    np.testing.assert_array_equal(flat_actual[name], value, err_msg=name)


def cached_decode_logits(net, params, encoded, encoder_tokens, decoder_inputs):
  """Logits [B, T, V] of teacher-forced decoding one step at a time with the cache.

  Args:
    net: an `SptTransformer`.
    params: its parameters.
    encoded: [B, L, H] the encoder output (`net.encode`).
    encoder_tokens: [B, T_e] the encoder tokens (their padding mask).
    decoder_inputs: [B, T] the decoder input tokens, fed one per step.
  """
  length = decoder_inputs.shape[1]
  shape = decoder_inputs.shape
  _, variables = net.apply(
      {'params': params},
      jnp.ones_like(encoder_tokens),
      jnp.ones(shape, jnp.int32),
      jnp.ones(shape, jnp.int32),
      mutable=['cache'],
      decode=True,
      enable_dropout=False,
  )
  cache = variables['cache']
  steps = []
  for t in range(length):
    ids = decoder_inputs[:, t : t + 1]
    logits, variables = net.apply(
        {'params': params, 'cache': cache},
        encoded,
        encoder_tokens,
        ids,
        ids,
        enable_dropout=False,
        decode=True,
        max_decode_length=length,
        mutable=['cache'],
        method=net.decode,
    )
    cache = variables['cache']
    steps.append(np.asarray(logits[:, 0]))
  return np.stack(steps, axis=1)
