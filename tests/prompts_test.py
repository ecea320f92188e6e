"""Prompt spans, query pooling, prefix masks and the soft prompt."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spt_jax.model import prompts


def test_prompt_span_masks():
  tokens = jnp.array(
      [[5, 6, 9, 7, 0, 0], [9, 4, 4, 0, 0, 0], [3, 3, 3, 3, 0, 0]]
  )
  np.testing.assert_array_equal(prompts.prompt_span_mask(tokens), tokens > 0)
  before = prompts.prompt_span_mask(tokens, 'before_separator', separator_id=9)
  np.testing.assert_array_equal(
      before, [[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]]
  )


def test_pool_query():
  embedded = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)
  mask = jnp.array([[1, 1, 0], [0, 0, 0]])
  np.testing.assert_allclose(
      prompts.pool_query(embedded, mask, 'mean'), [[1, 2], [0, 0]]
  )
  np.testing.assert_allclose(
      prompts.pool_query(embedded, mask, 'max'), [[2, 3], [0, 0]]
  )
  with pytest.raises(ValueError, match='mask \\[B, T\\]'):
    prompts.pool_query(embedded, mask[:, :2])


def test_prepend_and_mask():
  embedded = jnp.ones((2, 3, 4))
  soft = jnp.zeros((2, 1, 4))
  memory = 2 * jnp.ones((2, 2, 4))
  x = prompts.prepend([soft, None, memory], embedded)
  assert x.shape == (2, 6, 4)
  np.testing.assert_allclose(x[:, 0], 0.0)
  np.testing.assert_allclose(x[:, 1:3], 2.0)
  mask = prompts.input_mask_with_prefix(jnp.array([[4, 0, 0], [4, 5, 6]]), 3)
  np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])


def test_soft_prompt_shape_axes_and_init_range():
  module = prompts.SoftPrompt(length=5, features=8, init_scale=0.5)
  variables = module.init(jax.random.PRNGKey(0), 3)
  prompt = variables['params']['prompt']
  assert prompt.shape == (5, 8)
  assert variables['params_axes']['prompt_axes'].names == ('prompt', 'embed')
  assert float(jnp.max(jnp.abs(prompt))) <= 0.5
  assert float(jnp.min(prompt)) < 0 < float(jnp.max(prompt))
  assert module.apply(variables, 3).shape == (3, 5, 8)
