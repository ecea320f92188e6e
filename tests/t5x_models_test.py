"""SptTransformer inside real T5X: loss, scores, decoding, partitioner.

T5X's own `EncoderDecoderModel` is the oracle for the loss; the local
runner's `SptModel` must retrieve, score and decode exactly as T5X's model
class does on the same parameters and example. Skipped where T5X is not
importable (CI installs it; see tests/conftest.py).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import t5x_test_utils

t5x = t5x_test_utils.import_t5x()
from t5x import adafactor  # pylint: disable=g-import-not-at-top
from t5x import decoding
from t5x import models as t5x_models_lib
from t5x import partitioning as t5x_partitioning
from t5x import train_state as train_state_lib
import seqio  # pylint: disable=g-import-not-at-top

from spt_jax.model import config  # pylint: disable=g-import-not-at-top
from spt_jax.model import models
from spt_jax.model import network
from spt_jax.model import partitioning
from spt_jax.t5x_ext import models as t5x_models
from tests import params_test_utils

PROMPT_LENGTH = 3
SHAPES = {
    'encoder_input_tokens': (4, 10 + PROMPT_LENGTH),
    'decoder_input_tokens': (4, 5),
    'decoder_target_tokens': (4, 5),
    'decoder_loss_weights': (4, 5),
}
SPT = config.SptConfig(
    num_memories=8,
    memory_length=2,
    top_k=2,
    soft_prompt_length=2,
    prompt_length=PROMPT_LENGTH,
)
VOCAB = seqio.SentencePieceVocabulary(t5x_test_utils.SEQIO_TEST_VOCAB)


def _module(**t5_overrides):
  t5_overrides.setdefault('vocab_size', VOCAB.vocab_size)
  t5_overrides.setdefault('dropout_rate', 0.1)
  return network.SptTransformer(
      config.t5_1_1_config('tiny', **t5_overrides), SPT
  )


def _model(cls, module=None, **kwargs):
  optimizer = adafactor.Adafactor(
      decay_rate=0.8, logical_factor_rules=t5x_models.logical_factor_rules()
  )
  return cls(
      module=module or _module(),
      input_vocabulary=VOCAB,
      output_vocabulary=VOCAB,
      optimizer_def=optimizer,
      z_loss=1e-4,
      **kwargs,
  )


@pytest.fixture(scope='module')
def params():
  model = _model(t5x_models.SptEncoderDecoderModel)
  return params_test_utils.initial_params(model, SHAPES)


@pytest.fixture(scope='module')
def batch():
  rng = np.random.default_rng(0)
  targets = rng.integers(3, VOCAB.vocab_size, size=(4, 5))
  targets[:, 4] = 1
  targets[0, 2:] = 0  # Padding, so that the normalising factors differ.
  encoder = rng.integers(
      3, VOCAB.vocab_size, size=SHAPES['encoder_input_tokens']
  )
  encoder[:, 8:10] = 0  # The input's padding, before the prompt.
  encoder[1, -1] = 0
  return {
      'encoder_input_tokens': jnp.asarray(encoder),
      'decoder_input_tokens': jnp.asarray(
          np.concatenate([np.zeros((4, 1), int), targets[:, :-1]], 1)
      ),
      'decoder_target_tokens': jnp.asarray(targets),
      'decoder_loss_weights': jnp.asarray(targets > 0, jnp.float32),
  }


FACTORS = (
    None,
    7.0,
    'NUM_REAL_TARGET_TOKENS',
    'NUM_TOTAL_TARGET_TOKENS',
    'AVERAGE_PER_SEQUENCE',
)


@pytest.fixture(scope='module')
def losses(params, batch):
  """Per normalising factor: T5X's loss, SPT's without and with the auxiliary
  losses, and SPT's metrics, all under one jit.

  The fifteen losses share one forward pass (same parameters, batch and
  dropout key), which XLA computes once: one compile instead of fifteen.
  """

  def model_triple(factor):
    oracle = _model(
        t5x_models_lib.EncoderDecoderModel,
        loss_normalizing_factor=factor,
        label_smoothing=0.1,
    )
    plain = _model(
        t5x_models.SptEncoderDecoderModel,
        loss_normalizing_factor=factor,
        label_smoothing=0.1,
        pull_loss_weight=0.0,
        balance_loss_weight=0.0,
    )
    weighted = _model(
        t5x_models.SptEncoderDecoderModel,
        loss_normalizing_factor=factor,
        label_smoothing=0.1,
        pull_loss_weight=0.5,
        balance_loss_weight=0.25,
    )
    return oracle, plain, weighted

  triples = [model_triple(factor) for factor in FACTORS]

  def all_losses(params, batch, rng):
    results = []
    for oracle, plain, weighted in triples:
      expected, _ = oracle.loss_fn(params, batch, rng)
      got, _ = plain.loss_fn(params, batch, rng)
      loss, metrics = weighted.loss_fn(params, batch, rng)
      results.append((expected, got, loss, metrics))
    return results

  results = jax.jit(all_losses)(params, batch, jax.random.PRNGKey(1))
  return dict(zip(FACTORS, results))


@pytest.mark.parametrize('factor', FACTORS)
def test_loss_matches_t5x_for_every_normalizing_factor_under_jit(
    factor, losses, batch
):
  """With the auxiliary losses off, SPT's loss is T5X's; with them, it adds
  each weighted loss once per target token the cross entropy counts."""
  expected, got, loss, metrics = losses[factor]
  np.testing.assert_allclose(got, expected, rtol=1e-5)

  pull = metrics['spt/pull_loss'].compute()
  balance = metrics['spt/balance_loss'].compute()
  weights = np.asarray(batch['decoder_loss_weights'])
  tokens = {
      None: weights.sum(),
      7.0: weights.sum() / 7.0,
      'NUM_REAL_TARGET_TOKENS': 1.0,
      'NUM_TOTAL_TARGET_TOKENS': weights.sum() / weights.size,
      'AVERAGE_PER_SEQUENCE': 1.0,
  }[factor]
  np.testing.assert_allclose(
      loss, expected + (0.5 * pull + 0.25 * balance) * tokens, rtol=1e-5
  )


def test_local_and_t5x_models_retrieve_score_and_decode_alike(params, batch):
  """One prompt carrier: the same memories, scores and greedy decodes."""
  module = _module(dropout_rate=0.0)
  t5x_model = _model(t5x_models.SptEncoderDecoderModel, module)
  local = models.SptModel(module)

  t5x_scores, intermediates = t5x_model.score_batch(
      params, batch, return_intermediates=True
  )
  (t5x_indices,) = intermediates['retrieval_indices']
  _, sown = local.compute_logits(params, batch, mutable=['intermediates'])
  (local_indices,) = sown['intermediates']['retrieval_indices']
  np.testing.assert_array_equal(t5x_indices, local_indices)
  # The prompt, not the input, chose them: another prompt retrieves others.
  other = dict(
      batch,
      encoder_input_tokens=batch['encoder_input_tokens']
      .at[:, -PROMPT_LENGTH:]
      .set(batch['encoder_input_tokens'][::-1, :PROMPT_LENGTH]),
  )
  _, other_sown = local.compute_logits(params, other, mutable=['intermediates'])
  assert not np.array_equal(
      other_sown['intermediates']['retrieval_indices'][0], local_indices
  )

  np.testing.assert_allclose(
      t5x_scores, local.score_batch(params, batch), rtol=1e-5
  )
  # T5X's own intermediates are kept beside ours, with T5X's values.
  oracle = _model(t5x_models_lib.EncoderDecoderModel, module)
  oracle_scores, oracle_intermediates = oracle.score_batch(
      params, batch, return_intermediates=True
  )
  np.testing.assert_allclose(t5x_scores, oracle_scores, rtol=1e-5)
  for name in ('target_tokens', 'loss_weights', 'token_scores'):
    np.testing.assert_allclose(
        intermediates['decoder'][name][0],
        oracle_intermediates['decoder'][name][0],
        rtol=1e-5,
        atol=1e-6,
    )

  greedy = _model(
      t5x_models.SptEncoderDecoderModel,
      module,
      decode_fn=functools.partial(decoding.temperature_sample, temperature=0.0),
  )
  t5x_decodes = greedy.predict_batch(params, batch)
  local_decodes = local.predict_batch(params, batch)
  np.testing.assert_array_equal(t5x_decodes, local_decodes)
  beams, _ = t5x_model.predict_batch_with_aux(
      params, batch, num_decodes=2, return_all_decodes=True
  )
  assert beams.shape == (4, 2, 5)


def test_the_feature_converter_follows_the_network():
  model = _model(t5x_models.SptEncoderDecoderModel)
  converter = model.FEATURE_CONVERTER_CLS(pack=False)
  assert converter.prompt_length == PROMPT_LENGTH
  with pytest.raises(ValueError, match='feature_converter_cls'):
    _model(
        t5x_models.SptEncoderDecoderModel,
        feature_converter_cls=seqio.EncDecFeatureConverter,
    )


def test_assignment_map_keeps_or_drops_spt_parameters():
  assert t5x_models.spt_assignment_map(True) == ()
  ((pattern, target),) = t5x_models.spt_assignment_map(False)
  assert target is None
  import re  # pylint: disable=g-import-not-at-top

  assert re.match(pattern, 'target/memory_bank/values')
  assert re.match(pattern, 'target/soft_prompt/prompt')
  assert not re.match(pattern, 'target/encoder/layers_0/mlp/wi_0/kernel')


def test_partitioner_shards_the_bank_and_adafactor_factors_it():
  if jax.device_count() < 8:
    pytest.skip('needs 8 devices')
  # T5X's CPU mesh puts every local device on `model` (data=1, model=8); the
  # default rules split the bank over both axes, so over all 8. Vocabulary
  # and heads are multiples of 8 (T5 pads its 32100 pieces to 32128 for this).
  module = network.SptTransformer(
      config.t5_1_1_config('tiny', vocab_size=64, num_heads=8, head_dim=8),
      dataclasses.replace(SPT, soft_prompt_length=2),
  )
  model = _model(t5x_models.SptEncoderDecoderModel, module)
  partitioner = t5x_partitioning.PjitPartitioner(
      num_partitions=1,
      logical_axis_rules=t5x_partitioning.standard_logical_axis_rules(
          additional_rules=partitioning.spt_logical_axis_rules()
      ),
  )

  def init(rng):
    variables = model.get_initial_variables(rng, SHAPES)
    return train_state_lib.FlaxOptimTrainState.create(
        model.optimizer_def, variables
    )

  abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  axes = partitioner.get_mesh_axes(abstract)
  bank_axes = axes.params['memory_bank']
  assert bank_axes['values'][0] == bank_axes['keys'][0] == ('data', 'model')
  state = partitioner.partition(init, None, axes)(jax.random.PRNGKey(0))
  values = state.params['memory_bank']['values']
  assert values.shape == (8, 2, 64)
  assert {s.data.shape for s in values.addressable_shards} == {(1, 2, 64)}
  # Values are factored per memory; keys keep full second moments.
  slots = state.param_states['memory_bank']
  assert slots['values'].v_row.shape == (8, 64)
  assert slots['values'].v_col.shape == (8, 2)
  assert slots['keys'].v.shape == (8, 64)
