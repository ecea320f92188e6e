"""SptPrefix: top-level parameter paths, the prefix it builds, the query source."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spt_jax.model import config
from spt_jax.model import network
from spt_jax.model import prompts

VOCAB = 64
T5 = config.t5_1_1_config('tiny', vocab_size=VOCAB, dropout_rate=0.0)
SPT = config.SptConfig(
    num_memories=8,
    memory_length=2,
    top_k=2,
    soft_prompt_length=3,
    key_dim=16,
    prompt_length=4,
    temperature=0.5,
)
FIRST_LAYER = config.SptConfig(
    num_memories=8,
    memory_length=2,
    top_k=3,
    prompt_length=4,
    query_source='first_layer',
    query_pooling='max',
    similarity='dot',
)
INPUT_LENGTH = 6


def _encoder_tokens():
  rng = np.random.default_rng(0)
  inputs = rng.integers(2, VOCAB, size=(2, INPUT_LENGTH))
  inputs[1, 4:] = 0
  prompt = rng.integers(2, VOCAB, size=(2, 4))
  prompt[0, 3:] = 0
  return jnp.asarray(np.concatenate([inputs, prompt], axis=1), jnp.int32)


def _build(spt):
  net = network.SptTransformer(T5, spt)
  tokens = jnp.ones((2, INPUT_LENGTH + spt.prompt_length), jnp.int32)
  # One compiled init rather than op-by-op dispatch.
  variables = jax.jit(
      lambda rng: net.init(
          rng, tokens, tokens[:, :3], tokens[:, :3], enable_dropout=False
      )
  )(jax.random.PRNGKey(0))
  return net, {'params': variables['params']}


@pytest.fixture(scope='module')
def spt_net():
  return _build(SPT)


def _prefix(module, encoder_input_tokens):
  """What `encode` gives the encoder: (x [B, P + T, H], mask [B, P + T])."""
  tokens, prompt_tokens = module._split_prompt(encoder_input_tokens)  # pylint: disable=protected-access
  embedded = module.token_embedder(tokens)
  return module.prefix(tokens, embedded, prompt_tokens, True), embedded


def _run_prefix(net, variables, tokens):
  """`_prefix` of `net` and its sown intermediates, compiled as one program."""
  return jax.jit(
      lambda v, t: net.apply(v, t, method=_prefix, mutable=['intermediates'])
  )(variables, tokens)


def test_parameters_and_sown_values_stay_top_level(spt_net):
  net, variables = spt_net
  params = variables['params']
  assert 'prefix' not in params
  assert set(params) == {
      'token_embedder',
      'encoder',
      'decoder',
      'memory_bank',
      'soft_prompt',
  }
  assert set(params['memory_bank']) == {'keys', 'values', 'query_projection'}
  assert set(params['memory_bank']['query_projection']) == {'kernel'}
  assert set(params['soft_prompt']) == {'prompt'}
  tokens = _encoder_tokens()
  # Only the names of the sown values are checked: shapes suffice.
  _, sown = jax.eval_shape(
      lambda v, t: net.apply(
          v,
          t,
          t[:, :3],
          t[:, :3],
          enable_dropout=False,
          mutable=['intermediates', 'losses'],
      ),
      variables,
      tokens,
  )
  assert set(sown['intermediates']) == {'retrieval_indices', 'retrieval_scores'}
  assert set(sown['losses']) == {'pull_loss', 'balance_loss'}


def test_prefix_is_the_soft_prompt_then_the_weighted_memories(spt_net):
  net, variables = spt_net
  tokens = _encoder_tokens()
  ((x, mask), embedded), sown = _run_prefix(net, variables, tokens)
  params = variables['params']
  soft = SPT.soft_prompt_length
  memory = SPT.memory_positions
  assert x.shape == (2, SPT.prefix_length + INPUT_LENGTH, T5.emb_dim)
  np.testing.assert_array_equal(
      x[:, :soft],
      np.broadcast_to(params['soft_prompt']['prompt'], (2, soft, T5.emb_dim)),
  )
  # Oracle: the selected values times k * softmax over their scores.
  (indices,) = sown['intermediates']['retrieval_indices']
  (scores,) = sown['intermediates']['retrieval_scores']
  weights = SPT.top_k * jax.nn.softmax(scores, axis=-1)
  values = params['memory_bank']['values'][indices]  # [B, k, P, H]
  expected = (values * weights[..., None, None]).reshape(2, memory, -1)
  np.testing.assert_allclose(x[:, soft : soft + memory], expected, rtol=1e-6)
  np.testing.assert_array_equal(x[:, soft + memory :], embedded)
  np.testing.assert_array_equal(
      mask,
      np.concatenate(
          [
              np.ones((2, soft + memory), bool),
              np.asarray(tokens[:, :INPUT_LENGTH]) > 0,
          ],
          axis=1,
      ),
  )


def test_first_layer_query_pools_the_first_encoder_layer_over_the_prompt():
  net, variables = _build(FIRST_LAYER)
  tokens = _encoder_tokens()

  def oracle_scores(module, encoder_input_tokens):
    _, prompt_tokens = prompts.split_prompt(encoder_input_tokens, 4)
    span = prompt_tokens > 0
    mask = span[:, None, :, None] & span[:, None, None, :]
    hidden = module.encoder.first_layer(
        module.token_embedder(prompt_tokens), mask.astype(jnp.float32), True
    )
    query = jnp.max(jnp.where(span[..., None], hidden, -jnp.inf), axis=1)
    keys = module.variables['params']['memory_bank']['keys']
    return query @ keys.T / FIRST_LAYER.temperature

  full = net.apply(variables, tokens, method=oracle_scores)
  expected = np.sort(np.asarray(full), axis=-1)[:, ::-1][:, : FIRST_LAYER.top_k]
  _, sown = _run_prefix(net, variables, tokens)
  (scores,) = sown['intermediates']['retrieval_scores']
  np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
  # The embeddings alone (the default source) would have retrieved otherwise.
  by_embeddings = network.SptTransformer(
      T5, dataclasses.replace(FIRST_LAYER, query_source='embeddings')
  )
  _, sown = _run_prefix(by_embeddings, variables, tokens)
  assert not np.allclose(sown['intermediates']['retrieval_scores'][0], scores)
