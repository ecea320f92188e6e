"""MemoryBank: parameters and their axes, retrieval against a numpy oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spt_jax import config
from spt_jax import memory_bank

WIDTH = 8
BANK = config.SptConfig(
    num_memories=6, memory_length=2, top_k=2, key_dim=4, temperature=0.5
)


@pytest.fixture(scope='module')
def bank_and_variables():
  bank = memory_bank.MemoryBank(config=BANK, features=WIDTH)
  variables = bank.init(jax.random.PRNGKey(0), jnp.zeros((1, WIDTH)))
  return bank, variables


def test_parameters_and_axes(bank_and_variables):
  _, variables = bank_and_variables
  params, axes = variables['params'], variables['params_axes']
  assert params['keys'].shape == (6, 4)
  assert params['values'].shape == (6, 2, WIDTH)
  assert params['query_projection']['kernel'].shape == (WIDTH, 4)
  assert axes['keys_axes'].names == ('memory', 'memory_embed')
  assert axes['values_axes'].names == ('memory', 'memory_length', 'embed')
  assert np.all(np.abs(params['keys']) <= 1.0)
  assert np.all(np.abs(params['values']) <= BANK.memory_init_scale)


def test_retrieval_matches_a_numpy_oracle(bank_and_variables):
  bank, variables = bank_and_variables
  query = np.random.default_rng(0).normal(size=(3, WIDTH)).astype(np.float32)
  prompt, retrieved, aux = bank.apply(variables, query)
  params = jax.tree.map(np.asarray, variables['params'])
  projected = query @ params['query_projection']['kernel']
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  scores = unit(projected) @ unit(params['keys']).T / BANK.temperature
  indices = np.argsort(-scores, axis=-1)[:, :2]
  np.testing.assert_array_equal(retrieved.indices, indices)
  top = np.take_along_axis(scores, indices, -1)
  np.testing.assert_allclose(retrieved.scores, top, rtol=1e-5)
  weights = np.exp(top) / np.exp(top).sum(-1, keepdims=True) * 2  # concat
  expected = params['values'][indices] * weights[..., None, None]
  np.testing.assert_allclose(
      prompt, expected.reshape(3, 4, WIDTH), rtol=1e-5, atol=1e-6
  )
  cosine = np.sum(unit(projected)[:, None] * unit(params['keys'])[indices], -1)
  np.testing.assert_allclose(aux['pull_loss'], np.mean(1 - cosine), rtol=1e-5)


def test_perturbed_retrieval_is_deterministic_in_evaluation():
  spt = config.SptConfig(
      num_memories=6, memory_length=2, top_k=2, retrieval='perturbed_topk',
      combine='weighted_sum',
  )
  bank = memory_bank.MemoryBank(config=spt, features=WIDTH)
  query = jnp.ones((2, WIDTH))
  variables = bank.init(jax.random.PRNGKey(0), query)
  first, _, _ = bank.apply(variables, query)
  again, _, _ = bank.apply(variables, query)
  np.testing.assert_array_equal(first, again)
  assert first.shape == (2, 2, WIDTH)  # weighted_sum: one memory's length.


def test_wrong_query_width_is_named(bank_and_variables):
  bank, variables = bank_and_variables
  with pytest.raises(ValueError, match=r'query of shape \[B, 8\]'):
    bank.apply(variables, jnp.zeros((2, 5)))
