"""SptTransformer: T5X's module contract, gradients, masks and input errors."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spt_jax.model import config
from spt_jax.model import network

VOCAB = 64
T5 = config.t5_1_1_config('tiny', vocab_size=VOCAB, dropout_rate=0.1)
SPT = config.SptConfig(
    num_memories=16, memory_length=3, top_k=2, soft_prompt_length=2
)
# The gradient checks compile a backward pass per configuration; one layer a
# side reaches every kind of parameter at half the program size.
T5_ONE_LAYER = config.t5_1_1_config(
    'tiny',
    vocab_size=VOCAB,
    dropout_rate=0.1,
    num_encoder_layers=1,
    num_decoder_layers=1,
)


def _tokens(shape, seed=0, pad_from=None):
  tokens = np.random.default_rng(seed).integers(2, VOCAB, size=shape)
  if pad_from is not None:
    tokens[:, pad_from:] = 0
  return jnp.asarray(tokens, jnp.int32)


def _init_fn(net, enc_len=9, dec_len=5):
  """`net.init` of a PRNG key, with the arguments T5X passes."""
  return functools.partial(
      net.init,
      encoder_input_tokens=jnp.ones((2, enc_len), jnp.float32),  # T5X's dummy
      decoder_input_tokens=jnp.ones((2, dec_len), jnp.float32),  # inputs are
      decoder_target_tokens=jnp.ones((2, dec_len), jnp.float32),  # float ones.
      encoder_positions=None,
      decoder_positions=None,
      encoder_segment_ids=None,
      decoder_segment_ids=None,
      decode=False,
      enable_dropout=False,
  )


@functools.lru_cache(maxsize=None)  # Tests share each built network.
def _init(spt=SPT, t5=T5, enc_len=9, dec_len=5):
  """(network, variables), initialised with the arguments T5X passes."""
  net = network.SptTransformer(t5, spt)
  # One compiled program rather than hundreds of op-by-op dispatches.
  variables = jax.jit(_init_fn(net, enc_len, dec_len))(jax.random.PRNGKey(0))
  return net, variables


@functools.lru_cache(maxsize=None)  # Same network and flags: one trace.
def _apply(net, **static):
  """`net.apply` under jit (as T5X calls it), with `static` keyword arguments."""
  return jax.jit(functools.partial(net.apply, **static))


def test_init_returns_only_params_and_their_axes():
  _, variables = _init()
  assert set(variables) == {'params', 'params_axes'}
  bank = variables['params']['memory_bank']
  assert bank['keys'].shape == (16, T5.emb_dim)
  assert bank['values'].shape == (16, 3, T5.emb_dim)
  axes = variables['params_axes']['memory_bank']
  assert axes['keys_axes'].names == ('memory', 'memory_embed')
  assert axes['values_axes'].names == ('memory', 'memory_length', 'embed')
  assert variables['params']['soft_prompt']['prompt'].shape == (2, T5.emb_dim)
  # Every parameter has logical axes.
  params = jax.tree_util.tree_leaves_with_path(variables['params'])
  axes = jax.tree_util.tree_leaves(
      variables['params_axes'], is_leaf=lambda x: hasattr(x, 'names')
  )
  assert len(params) == len(axes)


def test_t5x_contract_calls():
  """init / apply / encode / decode with cache, exactly as T5X calls them."""
  net, variables = _init()
  params = variables['params']
  enc, dec = _tokens((2, 9), pad_from=7), _tokens((2, 5), seed=1)
  logits = _apply(
      net,
      encoder_segment_ids=None,
      decoder_segment_ids=None,
      encoder_positions=None,
      decoder_positions=None,
      decode=False,
      enable_dropout=True,
  )({'params': params}, enc, dec, dec, rngs={'dropout': jax.random.PRNGKey(1)})
  assert logits.shape == (2, 5, VOCAB)

  encoded = _apply(net, enable_dropout=False, method=net.encode)(
      {'params': params}, enc
  )
  assert encoded.shape == (2, SPT.prefix_length + 9, T5.emb_dim)
  assert SPT.prefix_length == 2 + 2 * 3

  max_len = 4
  _, cache_vars = _apply(
      net, mutable=('cache',), decode=True, enable_dropout=False
  )(
      {'params': params},
      encoder_input_tokens=jnp.ones((2, 9), jnp.int32),
      decoder_input_tokens=jnp.ones((2, max_len), jnp.int32),
      decoder_target_tokens=jnp.ones((2, max_len), jnp.int32),
  )
  cache = cache_vars['cache']
  ids = jnp.zeros((2, 1), jnp.int32)
  # Targets only shape the padding mask; any non-padding id will do.
  teacher_forced = _apply(net, enable_dropout=False)(
      {'params': params}, enc, ids, jnp.ones_like(ids)
  )
  step_logits, new_vars = _apply(
      net,
      enable_dropout=False,
      decode=True,
      max_decode_length=max_len,
      mutable=('cache',),
      method=net.decode,
  )({'params': params, 'cache': cache}, encoded, enc, ids, ids)
  assert step_logits.shape == (2, 1, VOCAB)
  np.testing.assert_allclose(step_logits, teacher_forced, atol=1e-5)
  assert (
      int(
          new_vars['cache']['decoder']['layers_0']['self_attention'][
              'cache_index'
          ]
      )
      == 1
  )


def test_retrieval_telemetry_and_losses_are_sown_on_request():
  net, variables = _init()
  enc, dec = _tokens((2, 9)), _tokens((2, 5), seed=1)
  _, sown = _apply(
      net, enable_dropout=False, mutable=('intermediates', 'losses')
  )({'params': variables['params']}, enc, dec, dec)
  (indices,) = sown['intermediates']['retrieval_indices']
  (scores,) = sown['intermediates']['retrieval_scores']
  assert indices.shape == scores.shape == (2, SPT.top_k)
  assert np.all(np.diff(np.asarray(scores), axis=-1) <= 0)  # Best first.
  assert set(sown['losses']) == {'pull_loss', 'balance_loss'}
  assert all(np.isfinite(v) for v in sown['losses'].values())


@pytest.mark.parametrize(
    'strategy', ['softmax_topk', 'straight_through', 'perturbed_topk']
)
@pytest.mark.parametrize('combine', ['concat', 'weighted_sum'])
def test_gradients_reach_every_part(strategy, combine):
  spt = config.SptConfig(
      num_memories=16,
      memory_length=3,
      top_k=3,
      soft_prompt_length=2,
      retrieval=strategy,
      combine=combine,
  )
  net, variables = _init(spt, T5_ONE_LAYER)
  enc, dec = _tokens((4, 9)), _tokens((4, 5), seed=1)

  def loss(params):
    logits = net.apply(
        {'params': params},
        enc,
        dec,
        dec,
        enable_dropout=True,
        rngs={'dropout': jax.random.PRNGKey(3)},
    )
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  grads = jax.jit(jax.grad(loss))(variables['params'])  # One compile.
  for leaf in jax.tree.leaves(grads):
    assert np.all(np.isfinite(leaf))
  for name, grad in [
      ('keys', grads['memory_bank']['keys']),
      ('values', grads['memory_bank']['values']),
      ('soft prompt', grads['soft_prompt']['prompt']),
      (
          'backbone',
          grads['encoder']['layers_0']['attention']['query']['kernel'],
      ),
  ]:
    assert np.abs(grad).sum() > 0, f'no gradient for {name}'


def test_padding_does_not_change_outputs():
  """A padded example and its unpadded twin: the masks cover exactly the prompts."""
  net, variables = _init()
  params = variables['params']
  enc = _tokens((1, 6))
  padded = jnp.concatenate([enc, jnp.zeros((1, 5), jnp.int32)], axis=1)
  dec = _tokens((1, 4), seed=1)
  forward = _apply(net, enable_dropout=False)
  short = forward({'params': params}, enc, dec, dec)
  long = forward({'params': params}, padded, dec, dec)
  np.testing.assert_allclose(short, long, atol=1e-5)


def test_in_band_prompt_drives_the_query_and_is_not_encoded():
  """The last T_p encoder positions are the discrete prompt: they choose the
  memories and are dropped before the encoder."""
  spt = config.SptConfig(
      num_memories=16,
      memory_length=3,
      top_k=2,
      soft_prompt_length=2,
      prompt_length=4,
  )
  net, variables = _init(spt, enc_len=13)
  params = variables['params']
  enc, dec = _tokens((2, 9)), _tokens((2, 5), seed=1)

  def run(net, tokens):
    logits, sown = _apply(
        net, enable_dropout=False, mutable=('intermediates',)
    )({'params': params}, tokens, dec, dec)
    return logits, np.asarray(sown['intermediates']['retrieval_indices'][0])

  # The first four input tokens as the in-band prompt, or as the span before
  # a separator of a prompt-less layout, give the same query and memories.
  with_prompt = jnp.concatenate([enc, enc[:, :4]], axis=1)
  logits, from_prompt = run(net, with_prompt)
  net_sep = network.SptTransformer(
      T5,
      config.SptConfig(
          num_memories=16,
          memory_length=3,
          top_k=2,
          soft_prompt_length=2,
          prompt_span='before_separator',
          prompt_separator_id=int(enc[0, 4]),
      ),
  )
  _, from_separator = run(net_sep, enc.at[:, 4].set(enc[0, 4]))
  np.testing.assert_array_equal(from_prompt, from_separator)

  # Another prompt retrieves other memories; the input alone is encoded.
  other_prompt = jnp.concatenate([enc, enc[:, 5:9]], axis=1)
  _, other = run(net, other_prompt)
  assert not np.array_equal(other, from_prompt)
  without_memory = network.SptTransformer(
      T5, dataclasses.replace(spt, num_memories=0)
  )
  no_memory_params = {k: v for k, v in params.items() if k != 'memory_bank'}
  forward = _apply(without_memory, enable_dropout=False)
  short = forward({'params': no_memory_params}, with_prompt, dec, dec)
  changed = forward({'params': no_memory_params}, other_prompt, dec, dec)
  np.testing.assert_allclose(short, changed, atol=1e-6)
  assert logits.shape == (2, 5, VOCAB)


def test_vocab_sample_init_draws_embedding_rows():
  """Memory values and the soft prompt alike are rows of the embedding table."""
  spt = config.SptConfig(
      num_memories=4,
      memory_length=2,
      top_k=2,
      soft_prompt_length=3,
      memory_init='vocab_sample',
  )
  _, variables = _init(spt)
  params = variables['params']
  table = np.asarray(params['token_embedder']['embedding'])
  for name, leaf in (
      ('values', params['memory_bank']['values']),
      ('prompt', params['soft_prompt']['prompt']),
  ):
    rows = np.asarray(leaf).reshape(-1, T5.emb_dim)
    matches = np.all(rows[:, None, :] == table[None, :, :], axis=-1)
    assert np.all(matches.any(axis=1)), name
    assert len(np.unique(matches.argmax(axis=1))) > 1, name


def test_disabled_spt_has_no_spt_parameters():
  # Only the names matter: shapes suffice, nothing is compiled.
  net = network.SptTransformer(T5, config.NO_SPT)
  variables = jax.eval_shape(_init_fn(net), jax.random.PRNGKey(0))
  assert set(variables['params']) == {'token_embedder', 'encoder', 'decoder'}


@pytest.mark.parametrize(
    'kwargs, message',
    [
        (
            dict(encoder_segment_ids=jnp.ones((2, 9), jnp.int32)),
            'packed inputs',
        ),
        (dict(decoder_positions=jnp.ones((2, 5), jnp.int32)), 'packed inputs'),
    ],
)
def test_bad_inputs_are_named(kwargs, message):
  net, variables = _init()
  enc, dec = _tokens((2, 9)), _tokens((2, 5), seed=1)
  with pytest.raises(ValueError, match=message):
    net.apply(
        {'params': variables['params']},
        enc,
        dec,
        dec,
        enable_dropout=False,
        **kwargs,
    )


def test_wrong_token_rank_and_encoded_length_are_named():
  net, variables = _init()
  params = variables['params']
  with pytest.raises(ValueError, match='encoder_input_tokens of shape'):
    net.apply(
        {'params': params},
        jnp.ones((2, 9, 1), jnp.int32),
        enable_dropout=False,
        method=net.encode,
    )
  encoded = jnp.zeros((2, 9, T5.emb_dim))  # Missing the prefix positions.
  with pytest.raises(ValueError, match='plus the prefix'):
    net.apply(
        {'params': params},
        encoded,
        _tokens((2, 9)),
        _tokens((2, 5)),
        _tokens((2, 5)),
        enable_dropout=False,
        method=net.decode,
    )
  with_prompt = network.SptTransformer(
      T5, dataclasses.replace(SPT, prompt_length=9)
  )
  with pytest.raises(ValueError, match='prompt_length=9'):
    with_prompt.apply(
        {'params': params},
        _tokens((2, 9)),
        enable_dropout=False,
        method=with_prompt.encode,
    )


@functools.lru_cache(maxsize=None)  # Both policies compare to one plain run.
def _squared_logit_gradients(remat_policy):
  """Gradients of the summed squared logits, one layer a side, no dropout."""
  t5 = config.t5_1_1_config(
      'tiny',
      vocab_size=VOCAB,
      remat_policy=remat_policy,
      dropout_rate=0.0,
      num_encoder_layers=1,
      num_decoder_layers=1,
  )
  # Rematerialisation leaves the parameters as they are: one set for all.
  _, variables = _init(SPT, dataclasses.replace(t5, remat_policy='none'))
  net = network.SptTransformer(t5, SPT)
  enc, dec = _tokens((2, 9)), _tokens((2, 5), seed=1)

  def loss(p):
    return jnp.sum(
        net.apply({'params': p}, enc, dec, dec, enable_dropout=False) ** 2
    )

  return jax.jit(jax.grad(loss))(variables['params'])


@pytest.mark.parametrize('policy', ['full', 'dots'])
def test_remat_matches_plain_gradients(policy):
  g_plain = _squared_logit_gradients('none')
  g_remat = _squared_logit_gradients(policy)
  for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_bfloat16_activations_stay_close_to_float32():
  t5_bf16 = config.t5_1_1_config('tiny', vocab_size=VOCAB, dtype=jnp.bfloat16)
  net32, variables = _init()
  net16 = network.SptTransformer(t5_bf16, SPT)
  enc, dec = _tokens((2, 9)), _tokens((2, 5), seed=1)
  out32 = _apply(net32, enable_dropout=False)(variables, enc, dec, dec)
  out16 = _apply(net16, enable_dropout=False)(variables, enc, dec, dec)
  assert out16.dtype == jnp.float32  # Logits stay float32.
  assert jax.tree.leaves(variables['params'])[0].dtype == jnp.float32
  np.testing.assert_allclose(out16, out32, atol=0.25)
