"""Adafactor factored by logical axes (spt_jax/optim/adafactor.py).

optax's Adafactor is the oracle where no rule applies (the heuristic); T5X's
is the oracle of the rules (tests/runner_parity_test.py, where T5X is
installed). Here: what the rules mean for the bank.
"""

import jax
import jax.numpy as jnp
from flax.linen import partitioning as nn_partitioning
import numpy as np
import optax
import pytest

from spt_jax.optim import adafactor

M, P, H = 6, 3, 8


def _axes(**names):
  return {
      f'{k}_axes': nn_partitioning.AxisMetadata(names=v)
      for k, v in names.items()
  }


BANK_AXES = {
    'memory_bank': _axes(
        values=('memory', 'memory_length', 'embed'),
        keys=('memory', 'memory_embed'),
    )
}


def _bank(rng):
  return {
      'memory_bank': {
          'values': jnp.asarray(rng.normal(size=(M, P, H)), jnp.float32),
          'keys': jnp.asarray(rng.normal(size=(M, H)), jnp.float32),
      }
  }


def _steps(optimizer, params, grads_per_step):
  state = optimizer.init(params)
  for grads in grads_per_step:
    updates, state = optimizer.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def test_factor_rules_of_spt_parameters():
  assert adafactor.factor_rule(('memory', 'memory_length', 'embed')) == (
      'batch',
      'column',
      'row',
  )
  # No COLUMN: the keys are not factored, but stay batched per memory.
  assert adafactor.factor_rule(('memory', 'memory_embed')) == ('batch', 'none')
  assert adafactor.factor_rule(('embed', 'mlp')) == ('row', 'column')
  with pytest.raises(KeyError, match='unknown_axis'):
    adafactor.factor_rule(('embed', 'unknown_axis'))


def test_parse_rule_batches_factors_or_falls_back_to_the_heuristic():
  assert adafactor.parse_rule(('batch', 'column', 'row'), (M, P, H), 128) == (
      (1, 2),
      ((2,), (1,)),
  )
  assert adafactor.parse_rule(('batch', 'none'), (M, H), 128) == ((1,), None)
  # Rank <= 2 without a batch dimension: the heuristic, by size.
  assert adafactor.parse_rule(('row', 'column'), (64, 256), 128) == (
      (0, 1),
      None,
  )
  assert adafactor.parse_rule(('row', 'column'), (128, 256), 128) == (
      (0, 1),
      ((0,), (1,)),
  )
  with pytest.raises(ValueError, match='rank'):
    adafactor.parse_rule(('row', 'column'), (M, P, H), 128)


def test_state_axes_follow_the_statistics_shapes():
  spec = jax.sharding.PartitionSpec
  params = {
      **_bank(np.random.default_rng(0)),
      'wi': jnp.zeros((128, 256), jnp.float32),
  }
  axes = {
      'memory_bank': {
          'values': spec('memory', 'memory_length', 'embed'),
          'keys': spec('memory', 'memory_embed'),
      },
      'wi': spec('embed', 'mlp'),
  }
  optimizer = adafactor.Adafactor().with_param_axes(
      {**BANK_AXES, **_axes(wi=('embed', 'mlp'))}
  )
  state_axes = adafactor.state_axes(optimizer, params, axes)
  state = optimizer.init(params)
  bank = state_axes.moments['memory_bank']
  # values [M, P, H] factored per memory: v_row [M, H], v_col [M, P].
  assert bank['values'] == {
      'v_row': spec('memory', 'embed'),
      'v_col': spec('memory', 'memory_length'),
  }
  assert bank['keys'] == {'v': spec('memory', 'memory_embed')}
  assert state_axes.moments['wi'] == {
      'v_row': spec('embed'),
      'v_col': spec('mlp'),
  }
  assert state_axes.count == spec()
  # Each spec has its statistic's rank.
  specs = jax.tree.leaves(
      state_axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
  )
  assert [len(s) for s in specs] == [x.ndim for x in jax.tree.leaves(state)]


def test_each_memory_steps_independently_of_the_others():
  """Statistics, parameter scale and clipping are per memory: memory 0's
  update does not change when the other memories' gradients and values do."""
  rng = np.random.default_rng(0)
  params = _bank(rng)
  grads = [
      jax.tree.map(
          lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params
      )
      for _ in range(3)
  ]
  optimizer = adafactor.Adafactor(learning_rate=0.1).with_param_axes(BANK_AXES)
  first, state = _steps(optimizer, params, grads)

  def scale_others(tree, factor):
    return jax.tree.map(lambda x: x.at[1:].multiply(factor), tree)

  other, _ = _steps(
      optimizer,
      scale_others(params, 50.0),
      [scale_others(g, 1e3) for g in grads],
  )
  for name in ('values', 'keys'):
    np.testing.assert_allclose(
        first['memory_bank'][name][0],
        other['memory_bank'][name][0],
        rtol=1e-5,
        err_msg=name,
    )
  moments = state.moments['memory_bank']
  assert moments['values']['v_row'].shape == (M, H)
  assert moments['values']['v_col'].shape == (M, P)
  assert moments['keys']['v'].shape == (M, H)

  # Without the axes, memory 0's step depends on the others (optax's rule).
  unbound, _ = _steps(adafactor.Adafactor(learning_rate=0.1), params, grads)
  unbound_other, _ = _steps(
      adafactor.Adafactor(learning_rate=0.1),
      scale_others(params, 50.0),
      [scale_others(g, 1e3) for g in grads],
  )
  assert not np.allclose(
      unbound['memory_bank']['values'][0],
      unbound_other['memory_bank']['values'][0],
      rtol=1e-3,
  )


def test_without_rules_it_is_optax_adafactor():
  rng = np.random.default_rng(1)
  params = {
      'big': jnp.asarray(rng.normal(size=(256, 130)), jnp.float32),
      'small': jnp.asarray(rng.normal(size=(64, 32)), jnp.float32),
      'bias': jnp.asarray(rng.normal(size=(7,)), jnp.float32),
  }
  grads = [
      jax.tree.map(
          lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params
      )
      for _ in range(3)
  ]
  ours, _ = _steps(adafactor.Adafactor(learning_rate=0.01), params, grads)
  oracle, _ = _steps(
      optax.adafactor(learning_rate=0.01, decay_rate=0.8), params, grads
  )
  for name in params:
    np.testing.assert_allclose(ours[name], oracle[name], rtol=1e-5, atol=1e-7)


def test_other_optimizers_ignore_the_axes():
  sgd = optax.sgd(0.1)
  assert adafactor.with_param_axes(sgd, BANK_AXES) is sgd
