"""Row-sparse values under T5X: LazyRowOptimizer, SparseBankTrainer's step, gin.

T5X's own dense step (`trainer.train_with_lr`) is the oracle: with SGD on
the values, the sparse step gives the same parameters, on one device and on
8 devices with the bank split along `memory`.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import t5x_test_utils

t5x = t5x_test_utils.import_t5x()
from flax import traverse_util  # pylint: disable=g-import-not-at-top
from t5x import adafactor
from t5x import optimizers
from t5x import partitioning as t5x_partitioning
from t5x import train_state as train_state_lib
from t5x import trainer as t5x_trainer
import seqio

from spt_jax.model import config  # pylint: disable=g-import-not-at-top
from spt_jax.model import network
from spt_jax.model import partitioning
from spt_jax.optim import sparse_updates
from spt_jax.t5x_ext import models as t5x_models
from spt_jax.t5x_ext import sparse as t5x_sparse

BATCH = 8
SHAPES = {
    'encoder_input_tokens': (BATCH, 10),
    'decoder_input_tokens': (BATCH, 4),
    'decoder_target_tokens': (BATCH, 4),
    'decoder_loss_weights': (BATCH, 4),
}
NUM_MEMORIES = 16
VOCAB = seqio.SentencePieceVocabulary(t5x_test_utils.SEQIO_TEST_VOCAB)
LEARNING_RATE = 0.5


@flax.struct.dataclass
class _HyperParams:
  learning_rate: float = None


class _DenseSgd(optimizers.OptimizerDef):
  """Dense SGD on the values: the oracle of the lazy rows."""

  def __init__(self):
    super().__init__(_HyperParams())

  def init_state(self, params):
    return optimizers.OptimizerState(
        jnp.asarray(0, jnp.int32), jax.tree.map(lambda p: (), params)
    )

  def apply_gradient(self, hyper_params, params, state, grads):
    new = jax.tree.map(
        lambda p, g: p - hyper_params.learning_rate * g, params, grads
    )
    return new, optimizers.OptimizerState(state.step + 1, state.param_states)


def _traversal(fn):
  return traverse_util.ModelParamTraversal(filter_fn=fn)


def _model(values_optimizer):
  module = network.SptTransformer(
      config.t5_1_1_config(
          'tiny', vocab_size=64, num_heads=8, head_dim=8, dropout_rate=0.0
      ),
      config.SptConfig(num_memories=NUM_MEMORIES, memory_length=2, top_k=2),
  )
  optimizer = optimizers.MultiOptimizer(
      (
          (
              _traversal(t5x_sparse.is_dense_param),
              adafactor.Adafactor(
                  decay_rate=0.8,
                  logical_factor_rules=t5x_models.logical_factor_rules(),
              ),
          ),
          (_traversal(t5x_sparse.is_bank_row_param), values_optimizer),
      )
  )
  return t5x_models.SptEncoderDecoderModel(
      module=module,
      input_vocabulary=VOCAB,
      output_vocabulary=VOCAB,
      optimizer_def=optimizer,
      z_loss=1e-4,
  )


def _batch():
  rng = np.random.default_rng(0)
  targets = rng.integers(3, 64, size=(BATCH, 4))
  inputs = rng.integers(3, 64, size=SHAPES['encoder_input_tokens'])
  inputs[1] = inputs[0]  # The same memories twice: their rows are summed.
  return {
      'encoder_input_tokens': jnp.asarray(inputs),
      'decoder_input_tokens': jnp.asarray(
          np.concatenate([np.zeros((BATCH, 1), int), targets[:, :-1]], 1)
      ),
      'decoder_target_tokens': jnp.asarray(targets),
      'decoder_loss_weights': jnp.ones((BATCH, 4), jnp.float32),
  }


def _init(model):
  def init(rng):
    variables = model.get_initial_variables(rng, SHAPES)
    return train_state_lib.FlaxOptimTrainState.create(
        model.optimizer_def, variables
    )

  return init


def _dense_step(model):
  return lambda state, batch: t5x_trainer.train_with_lr(
      state, batch, LEARNING_RATE, jax.random.PRNGKey(1), model, None
  )


def _sparse_step(model):
  return lambda state, batch: t5x_sparse.sparse_train_with_lr(
      state, batch, LEARNING_RATE, jax.random.PRNGKey(1), model
  )


@pytest.fixture(scope='module')
def dense_result():
  """Parameters after two steps of T5X's own dense step, on one device."""
  model = _model(_DenseSgd())
  state = jax.jit(_init(model))(jax.random.PRNGKey(0))
  step = jax.jit(_dense_step(model))
  for _ in range(2):
    state, _ = step(state, _batch())
  return jax.tree.map(np.asarray, flax.core.unfreeze(state.params))


def _assert_params_close(actual, expected):
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
      flax.core.unfreeze(actual),
      expected,
  )


def test_sparse_step_with_lazy_sgd_equals_t5x_dense_step(dense_result):
  model = _model(t5x_sparse.LazyRowOptimizer('sgd'))
  state = jax.jit(_init(model))(jax.random.PRNGKey(0))
  initial = np.asarray(state.params['memory_bank']['values'])
  step = jax.jit(_sparse_step(model))
  for _ in range(2):
    state, metrics = step(state, _batch())
  assert 'loss' in metrics
  _assert_params_close(state.params, dense_result)
  assert not np.allclose(state.params['memory_bank']['values'], initial)


def _partitioned(row_optimizer):
  """(model, partitioner, state axes, state) over 8 devices, bank on all 8.

  T5X's CPU mesh puts every device on `model` (data=1); the default rules
  split the bank over both axes.
  """
  if jax.device_count() < 8:
    pytest.skip('needs 8 devices')
  partitioner = t5x_partitioning.PjitPartitioner(
      num_partitions=1,
      logical_axis_rules=t5x_partitioning.standard_logical_axis_rules(
          additional_rules=partitioning.spt_logical_axis_rules()
      ),
  )
  model = _model(row_optimizer)
  init = _init(model)
  axes = partitioner.get_mesh_axes(jax.eval_shape(init, jax.random.PRNGKey(0)))
  state = partitioner.partition(init, None, axes)(jax.random.PRNGKey(0))
  return model, partitioner, axes, state


def test_sparse_step_partitioned_over_8_devices_equals_one_device(dense_result):
  model, partitioner, axes, state = _partitioned(
      t5x_sparse.LazyRowOptimizer('sgd')
  )
  step = partitioner.partition(
      _sparse_step(model),
      in_axis_resources=(axes, partitioner.data_partition_spec),
      out_axis_resources=(axes, None),
      donate_argnums=(0,),
  )
  for _ in range(2):
    state, _ = step(state, _batch())
  values = state.params['memory_bank']['values']
  assert {s.data.shape for s in values.addressable_shards} == {(2, 2, 64)}
  np.testing.assert_allclose(
      values, dense_result['memory_bank']['values'], rtol=1e-6, atol=1e-6
  )
  # The backbone is split over `model` too: its matmuls sum in another
  # order, and Adafactor's normalised steps carry that to 1e-5.
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4),
      flax.core.unfreeze(state.params),
      dense_result,
  )


def test_lazy_adam_slots_are_split_along_memory_like_the_values():
  _, _, axes, state = _partitioned(t5x_sparse.LazyRowOptimizer('adam'))
  slots = axes.param_states['memory_bank']['values']
  assert isinstance(slots, sparse_updates.LazyAdamState)
  assert slots.mu[0] == slots.nu[0] == ('data', 'model')
  mu = state.param_states['memory_bank']['values'].mu
  assert {s.data.shape for s in mu.addressable_shards} == {(2, 2, 64)}


@pytest.mark.parametrize('sampled_keys', [False, True])
def test_gin_mix_in_selects_the_sparse_trainer_and_optimizer(
    sampled_keys, monkeypatch
):
  import importlib  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import gin  # pylint: disable=g-import-not-at-top
  from t5x import gin_utils as t5x_gin_utils  # pylint: disable=g-import-not-at-top

  t5x_root = os.path.dirname(os.path.dirname(t5x.__file__))
  monkeypatch.setenv('SPT_VOCAB_PATH', t5x_test_utils.SEQIO_TEST_VOCAB)
  # T5X run files import `__main__` as the script they configure.
  monkeypatch.setitem(
      sys.modules, '__main__', importlib.import_module('t5x.train')
  )
  gin.clear_config()
  try:
    t5x_gin_utils.parse_gin_flags(
        [t5x_test_utils.REPO, t5x_root],
        [
            'gin_configs/models/spt_t5_1_1_tiny.gin',
            'gin_configs/runs/spt_pretrain.gin',
            'gin_configs/mixtures/synthetic.gin',
            'gin_configs/runs/sparse_bank.gin',
        ]
        + (['gin_configs/runs/sampled_keys.gin'] if sampled_keys else []),
        ['MODEL_DIR = "/tmp/unused"'],
    )
    model = gin.get_configurable(t5x_models.SptEncoderDecoderModel)()
    trainer_cls = gin.query_parameter('train_script.train.trainer_cls')
    sparse_keys = gin.query_parameter('%SPARSE_KEYS')
    filters = {
        scope: gin.query_parameter(
            f'{scope}/traverse_util.ModelParamTraversal.filter_fn'
        )
        for scope in ('dense', 'values')
    }
    keys_are_rows = filters['values'].scoped_configurable_fn('memory_bank/keys')
    keys_are_dense = filters['dense'].scoped_configurable_fn('memory_bank/keys')
  finally:
    gin.clear_config()
  assert sparse_keys is sampled_keys
  assert keys_are_rows is sampled_keys and keys_are_dense is not sampled_keys
  assert model.module.spt.key_gradient == (
      'sampled' if sampled_keys else 'dense'
  )
  optimizer = model.optimizer_def
  assert isinstance(optimizer, optimizers.MultiOptimizer)
  assert [type(o) for o in optimizer.sub_optimizers] == [
      adafactor.Adafactor,
      t5x_sparse.LazyRowOptimizer,
  ]
  assert trainer_cls.selector.endswith('SparseBankTrainer')
