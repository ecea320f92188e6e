"""Row-sparse gradients and lazy updates of the memory values (sparse_updates.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from spt_jax.local import trainer
from spt_jax.model import config
from spt_jax.model import models
from spt_jax.model import network
from spt_jax.model import partitioning
from spt_jax.optim import sparse_updates
from tests import params_test_utils

BATCH = 8
SHAPES = {
    'encoder_input_tokens': (BATCH, 8),
    'decoder_input_tokens': (BATCH, 4),
    'decoder_target_tokens': (BATCH, 4),
}
NUM_MEMORIES = 16


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  inputs = rng.integers(2, 64, size=(BATCH, 8))
  inputs[1] = inputs[0]  # Two equal examples retrieve the same memories.
  if seed == 1:
    inputs[:] = inputs[0]  # k memories only: most of step 0's are left out.
  targets = rng.integers(2, 64, size=(BATCH, 4))
  return {
      'encoder_input_tokens': jnp.asarray(inputs),
      'decoder_input_tokens': jnp.asarray(
          np.concatenate([np.zeros((BATCH, 1), int), targets[:, :-1]], 1)
      ),
      'decoder_target_tokens': jnp.asarray(targets),
  }


@pytest.fixture(scope='module')
def model_and_params():
  t5 = config.t5_1_1_config('tiny', vocab_size=64, dropout_rate=0.0)
  spt = config.SptConfig(
      num_memories=NUM_MEMORIES, memory_length=2, top_k=2, soft_prompt_length=2
  )
  model = models.SptModel(network.SptTransformer(t5, spt))
  params = params_test_utils.initial_params(model, SHAPES)
  return model, params


@pytest.fixture(scope='module')
def retrieved_ids(model_and_params):
  """(params, batch) -> the ids [B, k] the batch retrieves, jitted once."""
  model, _ = model_and_params
  return jax.jit(
      lambda p, b: model.loss_and_retrieval(p, b, None)[1][1]['indices']
  )


def test_dedup_sums_duplicate_rows_into_the_dense_gradient():
  indices = jnp.asarray([[3, 1], [3, 0], [1, 3]])
  row_grads = jnp.arange(6 * 2 * 2, dtype=jnp.float32).reshape(3, 2, 2, 2)
  grad = sparse_updates.dedup(indices, row_grads, num_memories=5)
  np.testing.assert_array_equal(grad.rows, [0, 1, 3, 5, 5, 5])
  oracle = np.zeros((5, 2, 2), np.float32)
  np.add.at(
      oracle,
      np.asarray(indices).reshape(-1),
      np.asarray(row_grads).reshape(6, 2, 2),
  )
  np.testing.assert_array_equal(sparse_updates.to_dense(grad, 5), oracle)
  np.testing.assert_array_equal(grad.grads[3:], 0.0)


def test_lazy_adam_matches_a_numpy_oracle_and_leaves_other_rows():
  rng = np.random.default_rng(0)
  values = rng.normal(size=(6, 2, 3)).astype(np.float32)
  state = sparse_updates.lazy_adam_init(jnp.asarray(values))
  grads = []
  for rows in ([0, 2], [2, 4]):
    g = rng.normal(size=(2, 2, 3)).astype(np.float32)
    grads.append((rows, g))
    new_values, state = sparse_updates.lazy_adam_update(
        jnp.asarray(values) if not grads[:-1] else new_values,
        state,
        sparse_updates.RowSparse(jnp.asarray(rows, jnp.int32), jnp.asarray(g)),
        learning_rate=0.1,
    )
  # Oracle: tf LazyAdam with the global step for bias correction.
  v, mu, nu = values.copy(), np.zeros_like(values), np.zeros_like(values)
  for t, (rows, g) in enumerate(grads, start=1):
    mu[rows] = 0.9 * mu[rows] + 0.1 * g
    nu[rows] = 0.999 * nu[rows] + 0.001 * g * g
    lr_t = 0.1 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t)
    v[rows] -= lr_t * mu[rows] / (np.sqrt(nu[rows]) + 1e-8)
  new_values, state = jax.tree.map(np.asarray, (new_values, state))
  np.testing.assert_allclose(new_values, v, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(state.mu, mu, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(state.nu, nu, rtol=1e-6, atol=1e-9)
  # Rows 1, 3, 5 were never retrieved: values and slots untouched.
  np.testing.assert_array_equal(new_values[[1, 3, 5]], values[[1, 3, 5]])
  np.testing.assert_array_equal(state.mu[[1, 3, 5]], 0.0)


def test_row_sparse_gradient_equals_the_dense_gradient(model_and_params):
  model, params = model_and_params
  batch = _batch()
  dense_fn = jax.jit(
      jax.value_and_grad(lambda p: model.loss_fn(p, batch, None)[0])
  )
  sparse_fn = jax.jit(
      lambda p: sparse_updates.value_and_grad(
          lambda q, other: model.loss_and_retrieval(q, batch, None, other),
          p,
          top_k=2,
          batch_size=BATCH,
      )
  )
  dense_loss, dense = dense_fn(params)
  (loss, _), sparse = sparse_fn(params)
  np.testing.assert_allclose(loss, dense_loss, rtol=1e-6)
  values_grad = sparse['memory_bank']['values']
  assert isinstance(values_grad, sparse_updates.RowSparse)
  # The equal examples retrieved the same rows, which were summed.
  assert int(jnp.sum(values_grad.rows < NUM_MEMORIES)) < BATCH * 2
  np.testing.assert_allclose(
      sparse_updates.to_dense(values_grad, NUM_MEMORIES),
      dense['memory_bank']['values'],
      rtol=1e-5,
      atol=1e-7,
  )
  rest = sparse_updates.split_values(sparse)[0]
  dense_rest = sparse_updates.split_values(dense)[0]
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
      rest,
      dense_rest,
  )


def _steps(model, params, optimizer, retrieved_ids=None, num_steps=2):
  """The state after `num_steps`, and the ids each step retrieved."""
  step = jax.jit(trainer.make_train_step(model, optimizer))
  state = trainer.TrainState.create(params, optimizer)
  retrieved = []
  for i in range(num_steps):
    if retrieved_ids is not None:
      indices = retrieved_ids(state.params, _batch(i))
      retrieved.append(set(np.asarray(indices).reshape(-1).tolist()))
    state, metrics = step(state, _batch(i), jax.random.PRNGKey(0))
  return state, metrics, retrieved


def test_sparse_sgd_equals_dense_sgd(model_and_params):
  model, params = model_and_params
  dense, dense_metrics, _ = _steps(model, params, optax.sgd(0.5))
  sparse, sparse_metrics, _ = _steps(
      model,
      params,
      sparse_updates.sparse_bank_optimizer(optax.sgd(0.5), 'sgd', 0.5),
  )
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
      dense.params,
      sparse.params,
  )
  np.testing.assert_allclose(
      dense_metrics['grad_norm'], sparse_metrics['grad_norm'], rtol=1e-5
  )
  assert not np.allclose(
      sparse.params['memory_bank']['values'], params['memory_bank']['values']
  )


def test_lazy_adam_differs_from_dense_adam_only_where_documented(
    model_and_params, retrieved_ids
):
  """Rows retrieved every step: as dense Adam. Rows retrieved only in step 1:
  dense Adam moves them again in step 2 by their momentum, lazy Adam does not.
  """
  model, params = model_and_params
  dense, _, retrieved = _steps(model, params, optax.adam(0.01), retrieved_ids)
  sparse, _, sparse_retrieved = _steps(
      model,
      params,
      sparse_updates.sparse_bank_optimizer(optax.adam(0.01), 'adam', 0.01),
      retrieved_ids,
  )
  assert retrieved == sparse_retrieved
  both = sorted(retrieved[0] & retrieved[1])
  only_first = sorted(retrieved[0] - retrieved[1])
  jax.tree.map(
      # Adam normalises near-zero gradients: float noise shows at 1e-4 (2% of a step).
      lambda a, b: np.testing.assert_allclose(a, b, atol=2e-4),
      sparse_updates.split_values(dense.params)[0],
      sparse_updates.split_values(sparse.params)[0],
  )
  dense_v = np.asarray(dense.params['memory_bank']['values'])
  sparse_v = np.asarray(sparse.params['memory_bank']['values'])
  init_v = np.asarray(params['memory_bank']['values'])
  never = sorted(set(range(NUM_MEMORIES)) - retrieved[0] - retrieved[1])
  np.testing.assert_array_equal(sparse_v[never], init_v[never])
  np.testing.assert_allclose(dense_v[never], init_v[never], atol=1e-7)
  assert both and only_first, (retrieved, 'the batches must overlap in part')
  np.testing.assert_allclose(sparse_v[both], dense_v[both], atol=2e-4)
  # Dense Adam's second step moves them by about lr * b1 = 9e-3.
  assert np.abs(sparse_v[only_first] - dense_v[only_first]).max() > 2e-3


def test_local_gin_mix_in_builds_the_sparse_optimizer():
  import gin  # pylint: disable=g-import-not-at-top
  from spt_jax import gin_utils  # pylint: disable=g-import-not-at-top
  from spt_jax.local import train  # pylint: disable=g-import-not-at-top

  gin.clear_config()
  try:
    gin_utils.parse_gin(
        [
            'gin_configs/local/synthetic.gin',
            'gin_configs/local/sparse_bank.gin',
        ],
        ['MODEL_DIR = "/tmp/unused"'],
    )
    optimizer = gin.query_parameter(
        'train.train.optimizer'
    ).scoped_configurable_fn()
  finally:
    gin.clear_config()
  del train
  assert isinstance(optimizer, sparse_updates.SparseBankOptimizer)
  assert optimizer.learning_rate == 0.01  # synthetic.gin's LEARNING_RATE.
  assert optimizer.rows.init is sparse_updates.lazy_adam_init


def test_sharded_sparse_step_equals_one_device():
  """8 devices, the bank split along `memory`, shard-local top-k: the same
  parameters as the single-device step (lazy Adam, two steps)."""
  if jax.device_count() < 8:
    pytest.skip('needs 8 devices')
  t5 = config.t5_1_1_config('tiny', vocab_size=64, dropout_rate=0.0)
  spt = config.SptConfig(
      num_memories=NUM_MEMORIES, memory_length=2, top_k=2, top_k_chunks=8
  )
  model = models.SptModel(network.SptTransformer(t5, spt))
  params = params_test_utils.initial_params(model, SHAPES)
  optimizer = sparse_updates.sparse_bank_optimizer(optax.sgd(0.5), 'adam', 0.01)
  single, _, _ = _steps(model, params, optimizer)
  sharded = trainer.ShardedTrainer(
      model, optimizer, partitioning.create_mesh(), partitioning.default_rules()
  )
  sharded.init_state(jax.random.PRNGKey(0), SHAPES)
  state = sharded.state_from_params(params)
  for i in range(2):
    state, _ = sharded.train_step(
        state, sharded.shard_batch(_batch(i)), jax.random.PRNGKey(0)
    )
  values = state.params['memory_bank']['values']
  mu = state.opt_state.rows['values'].mu
  for array in (values, mu):
    assert {s.data.shape for s in array.addressable_shards} == {(2, 2, 64)}
  # Sums over 8 shards run in another order; Adam's normalised steps (lr
  # 0.01) carry that to 1e-5 on near-zero gradients.
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, atol=2e-4),
      jax.tree.map(np.asarray, state.params),
      single.params,
  )


@pytest.fixture(scope='module')
def sampled_model():
  t5 = config.t5_1_1_config('tiny', vocab_size=64, dropout_rate=0.0)
  spt = config.SptConfig(
      num_memories=NUM_MEMORIES,
      memory_length=2,
      top_k=2,
      soft_prompt_length=2,
      key_gradient='sampled',
      key_samples=3,
  )
  return models.SptModel(network.SptTransformer(t5, spt))


def test_sampled_keys_row_sparse_gradient_equals_the_dense_gradient(
    model_and_params, sampled_model
):
  _, params = model_and_params
  batch, rng = _batch(), jax.random.PRNGKey(3)  # rng: the keys' draw.
  dense_fn = jax.jit(
      jax.grad(lambda p: sampled_model.loss_fn(p, batch, rng)[0])
  )
  sparse_fn = jax.jit(
      lambda p: sparse_updates.value_and_grad(
          lambda q, other: sampled_model.loss_and_retrieval(
              q, batch, rng, other
          ),
          p,
          top_k=2,
          batch_size=BATCH,
          key_samples=3,
      )
  )
  dense = dense_fn(params)
  _, sparse = sparse_fn(params)
  for name in ('values', 'keys'):
    grad = sparse['memory_bank'][name]
    assert isinstance(grad, sparse_updates.RowSparse), name
    np.testing.assert_allclose(
        sparse_updates.to_dense(grad, NUM_MEMORIES),
        dense['memory_bank'][name],
        rtol=1e-5,
        atol=1e-7,
        err_msg=name,
    )
  keys_grad = sparse['memory_bank']['keys']
  assert keys_grad.rows.shape == (BATCH * 2 + 3,)
  assert np.any(np.abs(np.asarray(dense['memory_bank']['keys'])) > 0)


def test_sampled_keys_lazy_sgd_equals_dense_sgd(
    model_and_params, sampled_model
):
  _, params = model_and_params
  dense, _, _ = _steps(sampled_model, params, optax.sgd(0.5))
  sparse, _, _ = _steps(
      sampled_model,
      params,
      sparse_updates.sparse_bank_optimizer(
          optax.sgd(0.5), 'sgd', 0.5, keys=True
      ),
  )
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
      dense.params,
      sparse.params,
  )
  assert set(sparse.opt_state.rows) == {'values', 'keys'}
  assert not np.allclose(
      sparse.params['memory_bank']['keys'], params['memory_bank']['keys']
  )


def test_row_sparse_keys_need_the_sampled_key_gradient(model_and_params):
  model, _ = model_and_params
  with pytest.raises(ValueError, match="key_gradient = 'sampled'"):
    trainer.make_train_step(
        model,
        sparse_updates.sparse_bank_optimizer(
            optax.sgd(0.5), 'sgd', 0.5, keys=True
        ),
    )
