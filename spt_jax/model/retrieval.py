"""Differentiable top-k retrieval from a memory bank, as pure functions.

A query [B, D] scores every key [M, D]; the k best memories are selected and
given weights through which gradients reach the keys (via the scores) and the
values (via the gather). Strategies, selected by name:

* `softmax_topk` (default): hard top-k; weights are a softmax over the k
  selected scores.
* `straight_through`: hard top-k with unit weights in the forward pass; the
  backward pass uses the softmax over the selected scores.
* `perturbed_topk`: weights are the probabilities that each selected memory is
  in the top-k of Gaussian-perturbed scores, differentiated with the perturbed
  optimizer estimator (Berthet et al., 2020). Costs [B, S, M] for S samples, so
  it suits banks of thousands, not millions.

With k = 1, `softmax_topk` and `straight_through` give the single retrieved
memory a weight of 1 whatever its score, so the keys get no gradient from the
task loss (only from the pull loss); `SptConfig` warns about it.

For banks too large for exact top-k, `top_k(..., approx=True)` uses
`jax.lax.approx_max_k`, and `num_chunks > 1` does a two-stage top-k; when the
bank is split along `memory` over the device mesh, its first stage runs on
each shard (`shard_local_top_k`, a `shard_map`) and only the per-shard
winners are merged.

Shape letters: B batch, M memories, D key width, k selected, P memory length,
H model width, S perturbation samples.
"""

import functools
from typing import Callable, Dict, NamedTuple, Optional, Tuple, Union

import jax
from jax import lax
import jax.numpy as jnp

from spt_jax.model import layers
from spt_jax.model import partitioning

Array = jax.Array


class Retrieved(NamedTuple):
  """The outcome of one retrieval.

  Attributes:
    indices: [B, k] int32 ids of the selected memories, best first.
    scores: [B, k] their similarity scores (after the temperature).
    weights: [B, k] the differentiable weights applied to their values.
  """

  indices: Array
  scores: Array
  weights: Array


def similarity(
    query: Array, keys: Array, kind: str = 'cosine', temperature: float = 1.0
) -> Array:
  """Scores [B, M] of queries [B, D] against keys [M, D], divided by temperature.

  `kind` is 'cosine' or 'dot' (`config.SIMILARITIES`); `temperature` > 0.
  """
  if query.ndim != 2 or keys.ndim != 2 or query.shape[-1] != keys.shape[-1]:
    raise ValueError(
        f'Expected query [B, D] and keys [M, D] with equal D, got query '
        f'{query.shape} and keys {keys.shape}.'
    )
  # Scores follow the bank's sharding; queries are small enough to replicate.
  return layers.with_sharding_constraint(
      _pairwise_scores(query, keys, kind, temperature), (None, 'memory')
  )


def _pairwise_scores(query, keys, kind, temperature):
  """[B, N] scores of query [B, D] against keys [N, D] (any N)."""
  return (
      jnp.einsum('bd,nd->bn', _normalized(query, kind), _normalized(keys, kind))
      / temperature
  )


def _normalized(x: Array, kind: str) -> Array:
  """float32 `x`, unit-norm along its last axis for 'cosine'."""
  x = x.astype(jnp.float32)
  if kind == 'cosine':
    x = x * lax.rsqrt(jnp.sum(x**2, -1, keepdims=True) + 1e-12)
  return x


def row_similarity(
    query: Array, rows: Array, kind: str = 'cosine', temperature: float = 1.0
) -> Array:
  """Scores [B, N] of queries [B, D] against gathered keys [B, N, D].

  `similarity` on rows already gathered per query (the `sampled` keys'
  path recomputes the selected scores this way, differentiably).
  """
  return (
      jnp.einsum(
          'bd,bnd->bn', _normalized(query, kind), _normalized(rows, kind)
      )
      / temperature
  )


def top_k(
    scores: Array,
    k: int,
    approx: bool = False,
    recall_target: float = 0.95,
    num_chunks: int = 1,
) -> Tuple[Array, Array]:
  """The k largest scores of each row and their indices, best first.

  Args:
    scores: [B, M].
    k: how many to select; at most M (`SptConfig` checks it).
    approx: use `jax.lax.approx_max_k` (fast on TPU; exact on CPU).
    recall_target: the recall `approx_max_k` aims for.
    num_chunks: split M into this many chunks, select k in each, then k among
      the chunk winners; it divides M into chunks of at least k. When the
      bank is split along `memory` over S devices (a mesh and logical axis
      rules in scope) and S divides `num_chunks`, the first stage runs on
      each shard (`shard_local_top_k`): every device selects among its own
      M / S scores, and only the [S, B, k] winners are exchanged.

  Returns:
    values [B, k] and int32 indices [B, k].
  """
  select = _selector(approx, recall_target)
  if num_chunks > 1:
    shards = partitioning.logical_mesh_axis('memory')
    if shards is not None:
      mesh, axis, size = shards
      if num_chunks % size == 0 and scores.shape[-1] % num_chunks == 0:
        return shard_local_top_k(
            scores,
            k,
            mesh,
            axis,
            approx=approx,
            recall_target=recall_target,
            chunks_per_shard=num_chunks // size,
        )
  return _chunked_top_k(scores, k, select, num_chunks)


def _selector(approx: bool, recall_target: float):
  return (
      functools.partial(lax.approx_max_k, recall_target=recall_target)
      if approx
      else lax.top_k
  )


def _chunked_top_k(scores, k, select, num_chunks, constrain=True):
  """Two-stage top-k of [B, M] on one device (or left to XLA's sharding).

  `constrain=False` inside `shard_map`, where the mesh axes are manual.
  """
  if num_chunks == 1:
    values, indices = select(scores, k)
    return values, indices.astype(jnp.int32)
  batch, num_memories = scores.shape
  chunk = num_memories // num_chunks
  chunked = scores.reshape(batch, num_chunks, chunk)
  if constrain:
    chunked = layers.with_sharding_constraint(chunked, (None, 'memory', None))
  # [B, C, k] local winners, then [B, C*k] -> [B, k].
  local_values, local_indices = select(chunked, k)
  offsets = (jnp.arange(num_chunks, dtype=jnp.int32) * chunk)[None, :, None]
  candidates = (local_indices.astype(jnp.int32) + offsets).reshape(batch, -1)
  values, positions = select(local_values.reshape(batch, -1), k)
  indices = jnp.take_along_axis(candidates, positions, axis=-1)
  return values, indices


def shard_local_top_k(
    scores: Array,
    k: int,
    mesh,
    axis: Union[str, Tuple[str, ...]],
    approx: bool = False,
    recall_target: float = 0.95,
    chunks_per_shard: int = 1,
) -> Tuple[Array, Array]:
  """Top-k of scores [B, M] split along M over `axis` (one or more) of `mesh`.

  Each of the S shards selects k among its [B, M / S] scores (in
  `chunks_per_shard` chunks), with global indices; the [S, B, k] candidates
  are then merged by a top-k over [B, S*k]. No device holds more than its
  own M / S scores: per-device memory for the selection is divided by S.
  The selected values stay differentiable w.r.t. `scores`.

  Returns:
    values [B, k] and int32 indices [B, k].
  """
  select = _selector(approx, recall_target)
  batch, num_memories = scores.shape
  size = partitioning.mesh_axis_size(mesh, axis)
  local_memories = num_memories // size

  def local(shard):  # [B, M / S] -> [1, B, k] twice.
    values, indices = _chunked_top_k(
        shard, k, select, chunks_per_shard, constrain=False
    )
    offset = lax.axis_index(axis).astype(jnp.int32) * local_memories
    return values[None], (indices + offset)[None]

  spec = jax.sharding.PartitionSpec
  values, indices = jax.shard_map(
      local,
      mesh=mesh,
      in_specs=spec(None, axis),
      out_specs=(spec(axis), spec(axis)),
  )(scores)
  # [S, B, k] -> [B, S*k] -> [B, k].
  values = jnp.moveaxis(values, 0, 1).reshape(batch, size * k)
  indices = jnp.moveaxis(indices, 0, 1).reshape(batch, size * k)
  best, positions = select(values, k)
  return best, jnp.take_along_axis(indices, positions, axis=-1)


def _straight_through_weights(selected_scores: Array, combine: str) -> Array:
  """`straight_through`'s weights: constant forward, softmax backward."""
  k = selected_scores.shape[-1]
  soft = _selected_softmax(selected_scores, combine)
  hard = jnp.full_like(soft, 1.0 if combine == 'concat' else 1.0 / k)
  return hard + soft - lax.stop_gradient(soft)


def _selected_softmax(selected_scores: Array, combine: str) -> Array:
  """Softmax over the k selected scores; times k for `concat`, so weights average 1."""
  probs = jax.nn.softmax(selected_scores, axis=-1)
  return probs * probs.shape[-1] if combine == 'concat' else probs


def softmax_topk(
    scores: Array, k: int, combine: str = 'concat', **top_k_kwargs
) -> Retrieved:
  """Hard top-k selection weighted by a softmax over the selected scores."""
  values, indices = top_k(scores, k, **top_k_kwargs)
  return Retrieved(indices, values, _selected_softmax(values, combine))


def straight_through(
    scores: Array, k: int, combine: str = 'concat', **top_k_kwargs
) -> Retrieved:
  """Hard top-k with constant weights forward and softmax gradients backward."""
  values, indices = top_k(scores, k, **top_k_kwargs)
  return Retrieved(indices, values, _straight_through_weights(values, combine))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def perturbed_topk_marginals(
    scores: Array, noise: Array, k: int, sigma: float
) -> Array:
  """P(memory in top-k) under scores + sigma * noise, averaged over samples.

  Args:
    scores: [B, M].
    noise: [B, S, M] standard normal samples.
    k: number selected.
    sigma: perturbation scale.

  Returns:
    [B, M] marginal selection probabilities; they sum to k over M.
  """
  return _perturbed_forward(scores, noise, k, sigma)[0]


def _perturbed_forward(scores, noise, k, sigma):
  perturbed = scores[:, None, :] + sigma * noise
  _, indices = lax.top_k(perturbed, k)
  # [B, S, M] indicator of each sample's top-k set.
  indicators = jnp.sum(
      jax.nn.one_hot(indices, scores.shape[-1], dtype=scores.dtype), axis=-2
  )
  return jnp.mean(indicators, axis=1), (indicators, noise)


def _perturbed_bwd(k, sigma, residuals, cotangent):
  del k
  indicators, noise = residuals
  # d E[y(s + sigma Z)] / ds = E[y(s + sigma Z) Z^T] / sigma.
  projected = jnp.einsum('bsm,bm->bs', indicators, cotangent)
  grad_scores = jnp.einsum('bs,bsm->bm', projected, noise) / (
      sigma * noise.shape[1]
  )
  return grad_scores, jnp.zeros_like(noise)


perturbed_topk_marginals.defvjp(_perturbed_forward, _perturbed_bwd)


def perturbed_topk(
    scores: Array,
    k: int,
    combine: str = 'concat',
    *,
    rng: Array,
    num_samples: int = 16,
    sigma: float = 0.1,
    **top_k_kwargs,
) -> Retrieved:
  """Hard top-k ids; weights are their perturbed top-k marginal probabilities."""
  values, indices = top_k(scores, k, **top_k_kwargs)
  noise = jax.random.normal(
      rng, (scores.shape[0], num_samples, scores.shape[1]), scores.dtype
  )
  marginals = perturbed_topk_marginals(scores, noise, k, sigma)
  weights = jnp.take_along_axis(marginals, indices, axis=-1)
  if combine == 'weighted_sum':
    weights = weights / (jnp.sum(weights, axis=-1, keepdims=True) + 1e-9)
  return Retrieved(indices, values, weights)


STRATEGIES: Dict[str, Callable[..., Retrieved]] = {
    'softmax_topk': softmax_topk,
    'straight_through': straight_through,
    'perturbed_topk': perturbed_topk,
}


# Strategies whose weights are a function of the k selected scores alone, so
# that the scores of the other M - k memories need no gradient (the
# `sampled` keys' path, `rescored`).
SELECTED_SCORE_WEIGHTS: Dict[str, Callable[[Array, str], Array]] = {
    'softmax_topk': _selected_softmax,
    'straight_through': _straight_through_weights,
}


def rescored(
    retrieved: Retrieved, selected_scores: Array, strategy: str, combine: str
) -> Retrieved:
  """`retrieved` with its scores and weights from `selected_scores` [B, k].

  The selection was made on scores without gradient; `selected_scores`,
  recomputed from the gathered keys, carry it, so the keys' gradient
  reaches only the selected rows.
  """
  if strategy not in SELECTED_SCORE_WEIGHTS:
    raise ValueError(
        f'{strategy!r} weights depend on every score; rescoring the selected '
        f'ones needs one of {list(SELECTED_SCORE_WEIGHTS)}.'
    )
  weights = SELECTED_SCORE_WEIGHTS[strategy](selected_scores, combine)
  return Retrieved(retrieved.indices, selected_scores, weights)


def retrieve(
    scores: Array,
    k: int,
    strategy: str = 'softmax_topk',
    combine: str = 'concat',
    rng: Optional[Array] = None,
    **kwargs,
) -> Retrieved:
  """Selects k memories per row of `scores` [B, M] with the named strategy.

  `strategy` is a key of `STRATEGIES` (`config.RETRIEVAL_STRATEGIES`) and
  `combine` one of `config.COMBINATIONS`.
  """
  if strategy == 'perturbed_topk':
    if rng is None:
      raise ValueError('The perturbed_topk strategy needs an rng.')
    kwargs['rng'] = rng
  return STRATEGIES[strategy](scores, k, combine, **kwargs)


def combine_values(values: Array, retrieved: Retrieved, combine: str) -> Array:
  """Gathers and combines the selected memory prompts.

  Args:
    values: [M, P, H] memory prompts.
    retrieved: selection with indices and weights [B, k].
    combine: `concat` -> [B, k*P, H]; `weighted_sum` -> [B, P, H].

  Returns:
    The memory prompt to prepend.
  """
  selected = jnp.take(values, retrieved.indices, axis=0)  # [B, k, P, H]
  return combine_rows(selected, retrieved.weights, combine)


def combine_rows(selected: Array, weights: Array, combine: str) -> Array:
  """Weights and combines gathered memory prompts [B, k, P, H].

  `combine_values` after the gather, for callers that gather the rows
  themselves (the row-sparse training path, sparse_updates.py).
  """
  weighted = selected * weights[..., None, None].astype(selected.dtype)
  if combine == 'concat':
    batch, k, length, width = weighted.shape
    return weighted.reshape(batch, k * length, width)
  return jnp.sum(weighted, axis=1)


def pull_loss(query: Array, keys: Array, indices: Array) -> Array:
  """L2P's surrogate loss: 1 - cosine(query, key), a mean over the B x k pairs.

  L2P sums over the k selected keys (and averages over the batch); the mean
  here keeps a weight's strength fixed when top_k is swept, so L2P's weight
  w corresponds to w * k here (`models.PULL_LOSS_WEIGHT` = 0.1 is L2P's 0.1
  at k = 1, a k times weaker pull than L2P's at k > 1).

  Args:
    query: [B, D].
    keys: [M, D].
    indices: [B, k] selected memories.

  Returns:
    Scalar; minimising it pulls the selected keys towards their queries.
  """
  # Gathered before normalising: k rows per query, not the whole bank, in
  # both the forward pass and its gradient.
  return pull_loss_of_rows(query, jnp.take(keys, indices, axis=0))


def pull_loss_of_rows(query: Array, selected_keys: Array) -> Array:
  """`pull_loss` of keys already gathered: query [B, D], keys [B, k, D]."""
  return jnp.mean(1.0 - row_similarity(query, selected_keys, 'cosine'))


def balance_loss(scores: Array, indices: Array) -> Array:
  """Switch-Transformer style usage balance over the bank.

  M * sum_m f_m * p_m, where f_m is the fraction of selections that chose
  memory m and p_m its mean softmax probability; 1 when usage is uniform.

  Args:
    scores: [B, M].
    indices: [B, k].

  Returns:
    Scalar, minimised by spreading selections over the bank.
  """
  num_memories = scores.shape[-1]
  probs = jnp.mean(jax.nn.softmax(scores.astype(jnp.float32), axis=-1), axis=0)
  counts = (
      jnp.zeros((num_memories,), jnp.float32).at[indices.reshape(-1)].add(1.0)
  )
  fraction = counts / indices.size
  return num_memories * jnp.sum(lax.stop_gradient(fraction) * probs)


def sampled_balance_loss(
    query: Array,
    selected_keys: Array,
    sampled_keys: Array,
    log_partition: Array,
    num_memories: int,
    kind: str = 'cosine',
    temperature: float = 1.0,
) -> Array:
  """`balance_loss` whose gradient reaches only selected and sampled keys.

  The value is `balance_loss`'s: M * sum_m f_m * mean_b p_bm, with f_m > 0
  only for the B*k selections, so it needs p_bm only for the selected
  memories: the scores [B, B*k] of every query against the batch's selected
  keys, and each query's log-partition log Z_b over all M scores, given
  without gradient. The gradient of log Z_b, sum_m p_bm ds_bm, is estimated
  without bias from S keys drawn uniformly (with replacement) from the
  bank: (M / S) sum_j p_bj ds_bj. With every memory drawn once it is exact.

  Args:
    query: [B, D].
    selected_keys: [B, k, D] the keys of the selected memories.
    sampled_keys: [S, D] keys drawn uniformly from the bank.
    log_partition: [B] logsumexp over the M scores (treated as a constant).
    num_memories: M.
    kind: the similarity.
    temperature: the scores' temperature.

  Returns:
    Scalar; its value equals `balance_loss(scores, indices)`.
  """
  batch, k, width = selected_keys.shape
  log_partition = lax.stop_gradient(log_partition)
  # [B, B*k]: p_{b, m} for every query b and every selection m of the batch.
  selected_scores = _pairwise_scores(
      query, selected_keys.reshape(batch * k, width), kind, temperature
  )
  sampled_scores = _pairwise_scores(query, sampled_keys, kind, temperature)
  sampled_probs = lax.stop_gradient(
      jnp.exp(sampled_scores - log_partition[:, None])
  )
  # Value log Z_b; gradient the sampled estimate of d log Z_b.
  num_samples = sampled_keys.shape[0]
  log_z = log_partition + (num_memories / num_samples) * jnp.sum(
      sampled_probs * (sampled_scores - lax.stop_gradient(sampled_scores)),
      axis=-1,
  )
  probs = jnp.exp(selected_scores - log_z[:, None])
  return num_memories * jnp.sum(probs) / (batch * batch * k)
