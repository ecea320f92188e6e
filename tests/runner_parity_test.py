"""The two runners train SPT identically: one step of each, side by side.

From the same parameters and batch, one step of the local runner
(`trainer.make_train_step` with `trainer.adafactor`) and one step of T5X
(`t5x.trainer.train_with_lr` with T5X's Adafactor and SPT's factor rules)
give the same parameters, bank and backbone, and the same metrics under the
same names; dense, with the values row-sparse (lazy Adam under both), and
with values and sampled keys row-sparse.
T5X's Adafactor is also the oracle of `spt_jax.optim.adafactor` on its own.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests import t5x_test_utils

t5x = t5x_test_utils.import_t5x()
from flax import traverse_util  # pylint: disable=g-import-not-at-top
from flax.linen import partitioning as nn_partitioning
from t5x import adafactor as t5x_adafactor
from t5x import optimizers
from t5x import train_state as train_state_lib
from t5x import trainer as t5x_trainer
import seqio

from spt_jax.local import trainer
from spt_jax.model import config
from spt_jax.model import models
from spt_jax.model import network
from spt_jax.optim import adafactor  # pylint: disable=g-import-not-at-top
from spt_jax.optim import sparse_updates
from spt_jax.t5x_ext import models as t5x_models
from spt_jax.t5x_ext import sparse as t5x_sparse

VOCAB = seqio.SentencePieceVocabulary(t5x_test_utils.SEQIO_TEST_VOCAB)
PROMPT_LENGTH = 3
BATCH = 4
LEARNING_RATE = 0.05
NORMALIZING_FACTOR = 'NUM_REAL_TARGET_TOKENS'
AUX_WEIGHTS = dict(pull_loss_weight=0.5, balance_loss_weight=0.25)
# Width 128 and vocabulary 160, so that some matrices are large enough for
# the heuristic to factor them (min_dim_size_to_factor = 128) and some not.
SPT = config.SptConfig(
    num_memories=16,
    memory_length=2,
    top_k=2,
    soft_prompt_length=2,
    prompt_length=PROMPT_LENGTH,
)
T5 = config.t5_1_1_config(
    'tiny', emb_dim=128, mlp_dim=256, vocab_size=160, dropout_rate=0.0
)
MODULE = network.SptTransformer(T5, SPT)
# The keys' path of gin_configs/*/sampled_keys.gin: its draw comes from the
# step's rng, which both runners fold in from the step number.
SAMPLED_KEYS_MODULE = network.SptTransformer(
    T5, dataclasses.replace(SPT, key_gradient='sampled', key_samples=5)
)
# The metrics both runners write.
METRICS = (
    'loss',
    'cross_ent_loss',
    'z_loss',
    'accuracy',
    'spt/aux_loss',
    'spt/pull_loss',
    'spt/balance_loss',
)


@pytest.fixture(scope='module')
def batch():
  rng = np.random.default_rng(0)
  targets = rng.integers(3, 160, size=(BATCH, 5))
  targets[:, 4] = 1
  targets[0, 3:] = 0
  encoder = rng.integers(3, 160, size=(BATCH, 10 + PROMPT_LENGTH))
  encoder[:, 8:10] = 0
  return {
      'encoder_input_tokens': jnp.asarray(encoder, jnp.int32),
      'decoder_input_tokens': jnp.asarray(
          np.concatenate([np.zeros((BATCH, 1), int), targets[:, :-1]], 1),
          jnp.int32,
      ),
      'decoder_target_tokens': jnp.asarray(targets, jnp.int32),
      'decoder_loss_weights': jnp.asarray(targets > 0, jnp.float32),
  }


@pytest.fixture(scope='module')
def variables(batch):
  local = models.SptModel(MODULE)
  shapes = {k: v.shape for k, v in batch.items()}
  return jax.jit(lambda rng: local.get_initial_variables(rng, shapes))(
      jax.random.PRNGKey(0)
  )


def _t5x_adafactor():
  return t5x_adafactor.Adafactor(
      decay_rate=0.8, logical_factor_rules=t5x_models.logical_factor_rules()
  )


def _traversal(fn):
  return traverse_util.ModelParamTraversal(filter_fn=fn)


def _local_step(variables, batch, optimizer, module=MODULE):
  model = models.SptModel(
      module, loss_normalizing_factor=NORMALIZING_FACTOR, **AUX_WEIGHTS
  )
  optimizer = adafactor.with_param_axes(optimizer, variables['params_axes'])
  state = trainer.TrainState.create(dict(variables['params']), optimizer)
  step = jax.jit(trainer.make_train_step(model, optimizer))
  state, metrics = step(state, batch, jax.random.PRNGKey(1))
  return state.params, {k: float(v) for k, v in metrics.items()}


def _t5x_step(
    variables, batch, optimizer_def, sparse, module=MODULE, sparse_keys=False
):
  model = t5x_models.SptEncoderDecoderModel(
      module,
      VOCAB,
      VOCAB,
      optimizer_def,
      z_loss=1e-4,
      loss_normalizing_factor=NORMALIZING_FACTOR,
      **AUX_WEIGHTS,
  )
  state = train_state_lib.FlaxOptimTrainState.create(optimizer_def, variables)
  if sparse:
    step = functools.partial(
        t5x_sparse.sparse_train_with_lr, model=model, sparse_keys=sparse_keys
    )
  else:
    step = functools.partial(
        t5x_trainer.train_with_lr, model=model, num_microbatches=None
    )
  # As T5X's Trainer (`_get_step_rng`) and the local step: the rng of step 0.
  rng = jax.random.fold_in(jax.random.PRNGKey(1), 0)
  state, metrics = jax.jit(step)(state, batch, LEARNING_RATE, rng)
  return state.params, {k: float(metrics[k].compute()) for k in METRICS}


def _assert_same_params(local, t5x_params):
  local = traverse_util.flatten_dict(dict(local))
  t5x_params = traverse_util.flatten_dict(dict(t5x_params))
  assert local.keys() == t5x_params.keys()
  for key, value in local.items():
    np.testing.assert_allclose(
        value, t5x_params[key], rtol=1e-5, atol=1e-6, err_msg='/'.join(key)
    )


@pytest.mark.parametrize(
    'sparse, sparse_keys',
    [(False, False), (True, False), (True, True)],
    ids=['dense', 'row_sparse', 'row_sparse_sampled_keys'],
)
def test_one_step_of_each_runner_gives_the_same_parameters_and_metrics(
    sparse, sparse_keys, variables, batch
):
  module = SAMPLED_KEYS_MODULE if sparse_keys else MODULE
  dense = trainer.adafactor(learning_rate=LEARNING_RATE)
  if sparse:
    local_optimizer = sparse_updates.sparse_bank_optimizer(
        dense, rows='adam', learning_rate=LEARNING_RATE, keys=sparse_keys
    )
    is_dense = functools.partial(
        t5x_sparse.is_dense_param, sparse_keys=sparse_keys
    )
    is_row = functools.partial(
        t5x_sparse.is_bank_row_param, sparse_keys=sparse_keys
    )
    t5x_optimizer = optimizers.MultiOptimizer(
        (
            (_traversal(is_dense), _t5x_adafactor()),
            (_traversal(is_row), t5x_sparse.LazyRowOptimizer('adam')),
        )
    )
  else:
    local_optimizer, t5x_optimizer = dense, _t5x_adafactor()

  local_params, local_metrics = _local_step(
      variables, batch, local_optimizer, module
  )
  t5x_params, t5x_metrics = _t5x_step(
      variables, batch, t5x_optimizer, sparse, module, sparse_keys
  )

  # The step moved the bank and the backbone, and both runners alike.
  before = variables['params']
  for path in (
      ('memory_bank', 'values'),
      ('memory_bank', 'keys'),
      ('decoder', 'logits_dense', 'kernel'),
  ):
    moved = functools.reduce(lambda tree, k: tree[k], path, local_params)
    assert not np.allclose(
        moved, functools.reduce(lambda tree, k: tree[k], path, before)
    )
  _assert_same_params(local_params, t5x_params)

  for name in METRICS:
    np.testing.assert_allclose(
        local_metrics[name],
        t5x_metrics[name],
        rtol=1e-5,
        atol=1e-7,
        err_msg=name,
    )
  np.testing.assert_allclose(
      local_metrics['loss'],
      local_metrics['cross_ent_loss']
      + local_metrics['z_loss']
      + local_metrics['spt/aux_loss'],
      rtol=1e-6,
  )
  assert local_metrics['spt/aux_loss'] > 0


def test_local_adafactor_is_t5x_adafactor_with_spt_rules(variables):
  """Three steps of random gradients on the network's parameters."""
  params = dict(variables['params'])
  axes = variables['params_axes']
  ours = trainer.adafactor(learning_rate=LEARNING_RATE).with_param_axes(axes)
  oracle = _t5x_adafactor()
  oracle.set_param_axes(nn_partitioning.get_axis_names(axes))
  ours_state, oracle_state = ours.init(params), oracle.init_state(params)
  hyper_params = oracle.hyper_params.replace(learning_rate=LEARNING_RATE)

  @jax.jit
  def steps(params, ours_state, oracle_state):
    ours_params = oracle_params = params
    for seed in range(3):
      leaves, treedef = jax.tree.flatten(params)
      keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
      grads = jax.tree.unflatten(
          treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
      )
      updates, ours_state = ours.update(grads, ours_state, ours_params)
      ours_params = optax.apply_updates(ours_params, updates)
      oracle_params, oracle_state = oracle.apply_gradient(
          hyper_params, oracle_params, oracle_state, grads
      )
    return ours_params, oracle_params

  ours_params, oracle_params = steps(params, ours_state, oracle_state)
  _assert_same_params(ours_params, oracle_params)
  # The same factoring: the values' statistics are per memory.
  values_moments = ours_state.moments['memory_bank']['values']
  assert values_moments['v_row'].shape == (16, 128)
  assert values_moments['v_col'].shape == (16, 2)
  oracle_values = oracle_state.param_states['memory_bank']['values']
  assert oracle_values.v_row.shape == (16, 128)


def test_factor_rules_given_to_t5x_are_the_local_runners():
  rules = t5x_models.logical_factor_rules()
  for axis, dim in adafactor.LOGICAL_FACTOR_RULES.items():
    assert t5x_adafactor.factor_name_to_factordim(rules[axis]) == (
        t5x_adafactor.factor_name_to_factordim(dim)
    ), axis
  standard = t5x_adafactor.standard_logical_factor_rules()
  for axis in (
      'vocab',
      'embed',
      'mlp',
      'heads',
      'kv',
      'joined_kv',
      'relpos_buckets',
      'layers',
      'stack',
  ):
    assert (
        t5x_adafactor.factor_name_to_factordim(
            adafactor.LOGICAL_FACTOR_RULES[axis]
        )
        == standard[axis]
    ), axis


def test_lazy_row_optimizer_takes_the_schedules_learning_rate():
  optimizer = t5x_sparse.LazyRowOptimizer('sgd')
  values = {'values': jnp.ones((4, 2, 3))}
  state = optimizer.init_state(values)
  grads = {
      'values': sparse_updates.RowSparse(
          rows=jnp.array([1, 4]), grads=jnp.ones((2, 2, 3))
      )
  }
  with pytest.raises(ValueError, match='no learning rate'):
    optimizer.apply_gradient(optimizer.hyper_params, values, state, grads)
  new, _ = optimizer.apply_gradient(
      optimizer.update_hyper_params(learning_rate=0.5), values, state, grads
  )
  np.testing.assert_allclose(new['values'][1], 0.5)
  np.testing.assert_allclose(new['values'][0], 1.0)
  with pytest.raises(TypeError):
    t5x_sparse.LazyRowOptimizer('adam', learning_rate=0.1)
