"""MemoryBank: parameters and their axes, retrieval against a numpy oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spt_jax.model import config
from spt_jax.model import memory_bank

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
      num_memories=6,
      memory_length=2,
      top_k=2,
      retrieval='perturbed_topk',
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


def test_sampled_key_gradient_matches_dense_but_touches_few_keys():
  """`key_gradient='sampled'`: the same prompt and losses; without the
  balance loss the same gradient; with it, gradients on B*k + S keys only."""
  dense_cfg = config.SptConfig(
      num_memories=20, memory_length=2, top_k=2, temperature=0.5
  )
  sampled_cfg = config.SptConfig(
      num_memories=20,
      memory_length=2,
      top_k=2,
      temperature=0.5,
      key_gradient='sampled',
      key_samples=3,
  )
  dense = memory_bank.MemoryBank(config=dense_cfg, features=WIDTH)
  sampled = memory_bank.MemoryBank(config=sampled_cfg, features=WIDTH)
  rng = np.random.default_rng(1)
  query = jnp.asarray(rng.normal(size=(4, WIDTH)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(4, 4, WIDTH)), jnp.float32)
  params = dense.init(jax.random.PRNGKey(0), query)['params']

  def loss(bank, params, balance_weight):
    prompt, _, aux = bank.apply(
        {'params': params},
        query,
        deterministic=False,
        rngs={'dropout': jax.random.PRNGKey(2)},
    )
    return (
        jnp.sum(prompt * target)
        + aux['pull_loss']
        + balance_weight * aux['balance_loss']
    ), aux

  for weight in (0.0, 1.0):
    (dense_loss, dense_aux), dense_grads = jax.value_and_grad(
        lambda p: loss(dense, p, weight), has_aux=True
    )(params)
    (sampled_loss, sampled_aux), sampled_grads = jax.value_and_grad(
        lambda p: loss(sampled, p, weight), has_aux=True
    )(params)
    np.testing.assert_allclose(sampled_loss, dense_loss, rtol=1e-6)
    for name in dense_aux:
      np.testing.assert_allclose(sampled_aux[name], dense_aux[name], rtol=1e-6)
    np.testing.assert_allclose(
        sampled_grads['values'], dense_grads['values'], rtol=1e-5, atol=1e-7
    )
    keys_grad = np.asarray(sampled_grads['keys'])
    if weight == 0.0:
      np.testing.assert_allclose(
          keys_grad, dense_grads['keys'], rtol=1e-5, atol=1e-7
      )
    else:
      assert (np.abs(keys_grad).sum(-1) > 0).sum() <= 4 * 2 + 3
      assert (np.abs(np.asarray(dense_grads['keys'])).sum(-1) > 0).sum() == 20
