"""Top-k strategies, their gradients, combination and auxiliary losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spt_jax.model import retrieval


def _scores(batch=3, memories=12, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (batch, memories))


def test_similarity_cosine_and_dot():
  query = jnp.array([[3.0, 4.0]])
  keys = jnp.array([[1.0, 0.0], [0.0, 2.0]])
  np.testing.assert_allclose(
      retrieval.similarity(query, keys, 'cosine', 0.5), [[1.2, 1.6]], rtol=1e-6
  )
  np.testing.assert_allclose(
      retrieval.similarity(query, keys, 'dot'), [[3.0, 8.0]]
  )
  with pytest.raises(ValueError, match='equal D'):
    retrieval.similarity(query, jnp.ones((2, 3)))


@pytest.mark.parametrize('approx', [False, True])
@pytest.mark.parametrize('num_chunks', [1, 3])
def test_top_k_finds_the_largest(approx, num_chunks):
  """Exact and approximate top-k, whole and chunked.

  XLA approximates `lax.approx_max_k` only on TPU; on CPU (and GPU) it lowers
  to an exact top-k, so here `approx=True` checks the wiring (the chunked
  two-stage selection and its indices), not a recall below 1. There is no CPU
  case where XLA approximates, so recall against `recall_target` is not
  measured here.
  """
  scores = _scores()
  values, indices = retrieval.top_k(
      scores, 4, approx=approx, num_chunks=num_chunks
  )
  expected = np.argsort(-np.asarray(scores), axis=-1)[:, :4]
  np.testing.assert_array_equal(indices, expected)
  np.testing.assert_allclose(
      values, np.take_along_axis(np.asarray(scores), expected, -1)
  )


def test_softmax_weights():
  scores = _scores()
  concat = retrieval.retrieve(scores, 3, 'softmax_topk', 'concat')
  summed = retrieval.retrieve(scores, 3, 'softmax_topk', 'weighted_sum')
  np.testing.assert_allclose(jnp.sum(concat.weights, -1), 3.0, rtol=1e-6)
  np.testing.assert_allclose(jnp.sum(summed.weights, -1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(
      summed.weights, jax.nn.softmax(summed.scores, axis=-1), rtol=1e-6
  )


def test_straight_through_is_hard_forward_soft_backward():
  scores = _scores()
  hard = retrieval.retrieve(scores, 3, 'straight_through', 'concat')
  np.testing.assert_allclose(hard.weights, 1.0, rtol=1e-6)

  def weighted(s, strategy):
    r = retrieval.retrieve(s, 3, strategy, 'concat')
    return jnp.sum(r.weights * jnp.arange(3.0))

  np.testing.assert_allclose(
      jax.grad(weighted)(scores, 'straight_through'),
      jax.grad(weighted)(scores, 'softmax_topk'),
      rtol=1e-6,
  )


def test_perturbed_marginals_and_their_gradient():
  scores = jnp.array([[2.0, 1.0, 0.5, -1.0]])
  noise = jax.random.normal(jax.random.PRNGKey(0), (1, 4000, 4))
  marginals = retrieval.perturbed_topk_marginals(scores, noise, 2, 0.5)
  np.testing.assert_allclose(jnp.sum(marginals), 2.0, rtol=1e-6)
  assert marginals[0, 0] > marginals[0, 1] > marginals[0, 2] > marginals[0, 3]
  # The estimator's gradient agrees with finite differences of the smoothed
  # (fixed-noise) marginal within Monte-Carlo error.
  cotangent = jnp.array([[0.0, 1.0, 0.0, 0.0]])
  grad = jax.grad(
      lambda s: jnp.sum(
          retrieval.perturbed_topk_marginals(s, noise, 2, 0.5) * cotangent
      )
  )(scores)
  eps = 0.1
  finite = []
  for m in range(4):
    delta = jnp.zeros_like(scores).at[0, m].set(eps)
    up = retrieval.perturbed_topk_marginals(scores + delta, noise, 2, 0.5)[0, 1]
    down = retrieval.perturbed_topk_marginals(scores - delta, noise, 2, 0.5)[
        0, 1
    ]
    finite.append((up - down) / (2 * eps))
  np.testing.assert_allclose(grad[0], finite, atol=0.08)
  assert grad[0, 1] > 0 > grad[0, 0]


def test_perturbed_needs_an_rng():
  with pytest.raises(ValueError, match='needs an rng'):
    retrieval.retrieve(_scores(), 2, 'perturbed_topk')


@pytest.mark.parametrize(
    'combine, length', [('concat', 6), ('weighted_sum', 3)]
)
def test_combine_values(combine, length):
  values = jnp.arange(12 * 3 * 2, dtype=jnp.float32).reshape(12, 3, 2)
  retrieved = retrieval.Retrieved(
      indices=jnp.array([[4, 7]]),
      scores=jnp.zeros((1, 2)),
      weights=jnp.array([[0.25, 0.75]]),
  )
  out = retrieval.combine_values(values, retrieved, combine)
  assert out.shape == (1, length, 2)
  if combine == 'concat':
    np.testing.assert_allclose(out[0, :3], 0.25 * values[4])
    np.testing.assert_allclose(out[0, 3:], 0.75 * values[7])
  else:
    np.testing.assert_allclose(out[0], 0.25 * values[4] + 0.75 * values[7])


def test_pull_loss_is_zero_for_aligned_keys_and_pulls_them():
  keys = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
  query = jnp.array([[2.0, 0.0]])
  assert float(
      retrieval.pull_loss(query, keys, jnp.array([[0]]))
  ) == pytest.approx(0.0, abs=1e-6)
  assert float(
      retrieval.pull_loss(query, keys, jnp.array([[2]]))
  ) == pytest.approx(2.0)
  grad = jax.grad(lambda k: retrieval.pull_loss(query, k, jnp.array([[1]])))(
      keys
  )
  assert grad[1, 0] < 0  # Moving key 1 towards the query lowers the loss.
  np.testing.assert_allclose(np.asarray(grad)[[0, 2]], 0.0)


def test_balance_loss_prefers_uniform_usage():
  scores = jnp.zeros((4, 4))
  uniform = retrieval.balance_loss(scores, jnp.array([[0], [1], [2], [3]]))
  collapsed = retrieval.balance_loss(
      scores + jnp.array([5.0, 0, 0, 0]), jnp.zeros((4, 1), jnp.int32)
  )
  assert float(uniform) == pytest.approx(1.0)
  assert float(collapsed) > 3.0


@pytest.mark.parametrize('num_chunks', [8, 16])
def test_shard_local_top_k_equals_one_device_and_divides_its_memory(num_chunks):
  """With the bank split over 8 devices, top_k(num_chunks=8 or 16) selects on
  each shard (shard_map; 16: two chunks per shard): same values, indices and gradients as one device, and
  the compiled step holds about 1/8 of the [B, M] scores per device."""
  if jax.device_count() < 8:
    pytest.skip('needs 8 devices')
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  from spt_jax.model import partitioning  # pylint: disable=g-import-not-at-top

  batch, memories, width = 64, 8 * 4096, 8
  query = jax.random.normal(jax.random.PRNGKey(0), (batch, width))
  keys = jax.random.normal(jax.random.PRNGKey(1), (memories, width))

  def loss(keys, query, num_chunks):
    scores = retrieval.similarity(query, keys, 'cosine', 0.1)
    values, indices = retrieval.top_k(scores, 4, num_chunks=num_chunks)
    return jnp.sum(values * jnp.arange(1.0, 5.0)), indices

  grad_fn = jax.value_and_grad(loss, has_aux=True)
  (expected, expected_indices), expected_grad = jax.jit(
      grad_fn, static_argnums=2
  )(keys, query, 1)
  mesh = partitioning.create_mesh()
  sharding = NamedSharding(mesh, PartitionSpec('data', None))
  temp = {}
  with partitioning.mesh_and_rules(mesh, partitioning.default_rules()):
    for chunks in (1, num_chunks):
      compiled = (
          jax.jit(
              grad_fn, static_argnums=2, out_shardings=((None, None), sharding)
          )
          .lower(jax.device_put(keys, sharding), query, chunks)
          .compile()
      )
      temp[chunks] = compiled.memory_analysis().temp_size_in_bytes
    (value, indices), grad = compiled(jax.device_put(keys, sharding), query)
  np.testing.assert_array_equal(indices, expected_indices)
  np.testing.assert_allclose(value, expected, rtol=1e-6)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)
  # [64, 32768] float32 scores are 8 MiB; one shard's are 1 MiB.
  assert temp[num_chunks] * 4 < temp[1], temp


def _sampled_and_dense_balance(num_memories=40, batch=3, k=2, width=8):
  """(dense loss of keys, sampled loss of (keys, ids)) on random queries."""
  rng = np.random.default_rng(0)
  query = jnp.asarray(rng.normal(size=(batch, width)), jnp.float32)
  keys = jnp.asarray(rng.normal(size=(num_memories, width)), jnp.float32)

  def dense(keys):
    scores = retrieval.similarity(query, keys, 'cosine', 0.5)
    _, indices = retrieval.top_k(jax.lax.stop_gradient(scores), k)
    return retrieval.balance_loss(scores, indices)

  def sampled(keys, ids):
    scores = jax.lax.stop_gradient(
        retrieval.similarity(query, keys, 'cosine', 0.5)
    )
    _, indices = retrieval.top_k(scores, k)
    return retrieval.sampled_balance_loss(
        query,
        jnp.take(keys, indices, axis=0),
        jnp.take(keys, ids, axis=0),
        jax.nn.logsumexp(scores, axis=-1),
        num_memories,
        'cosine',
        0.5,
    )

  return keys, dense, sampled


def test_sampled_balance_loss_has_the_dense_value_and_an_unbiased_gradient():
  keys, dense, sampled = _sampled_and_dense_balance()
  num_memories = keys.shape[0]
  every = jnp.arange(num_memories)
  np.testing.assert_allclose(sampled(keys, every), dense(keys), rtol=1e-6)
  np.testing.assert_allclose(
      sampled(keys, every[:5]), dense(keys), rtol=1e-6
  )  # The value: any draw.
  dense_grad = jax.grad(dense)(keys)
  # Every memory drawn once: the estimate is the gradient.
  np.testing.assert_allclose(
      jax.grad(sampled)(keys, every), dense_grad, rtol=1e-4, atol=1e-7
  )
  # Uniform draws of 8: the mean of many estimates converges to it.
  draws = jax.random.randint(jax.random.PRNGKey(0), (4000, 8), 0, num_memories)
  mean = jax.jit(jax.vmap(jax.grad(sampled), (None, 0)))(keys, draws).mean(0)
  scale = np.abs(dense_grad).max()
  assert np.abs(mean - dense_grad).max() < 0.05 * scale
  # One draw of 8 touches at most B*k + 8 rows.
  touched = np.abs(jax.grad(sampled)(keys, draws[0])).sum(-1) > 0
  assert touched.sum() <= 3 * 2 + 8


def test_rescored_selection_keeps_indices_and_refuses_perturbed():
  scores = jnp.asarray([[0.1, 0.9, 0.4], [0.3, 0.2, 0.8]])
  hard = retrieval.softmax_topk(scores, 2)
  again = retrieval.rescored(hard, hard.scores, 'softmax_topk', 'concat')
  np.testing.assert_array_equal(again.indices, hard.indices)
  np.testing.assert_allclose(again.weights, hard.weights)
  straight = retrieval.rescored(hard, hard.scores, 'straight_through', 'concat')
  np.testing.assert_allclose(straight.weights, 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match='perturbed_topk'):
    retrieval.rescored(hard, hard.scores, 'perturbed_topk', 'concat')
