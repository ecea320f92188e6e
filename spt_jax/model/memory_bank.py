"""SPT's memory bank: memory prompts with keys, retrieved by a query.

Parameters (under `memory_bank/` in `params`):
  keys    [M, D]     logical axes ('memory', 'memory_embed')
  values  [M, P, H]  logical axes ('memory', 'memory_length', 'embed')
and, when the key width D differs from the model width H, a query projection
[H, D] ('embed', 'memory_embed'). The `memory` axis is what shards the bank over
the device mesh (see partitioning.py).

The retrieved rows [B, k, P, H] pass through Flax's `perturb`
(`perturbations/memory_bank/retrieved_values`), the hook of the row-sparse
training path (sparse_updates.py).

How the keys learn (`SptConfig.key_gradient`): 'dense' scores all M keys with
gradient, and the balance loss's softmax spans them all, so the keys'
gradient is [M, D] every step. 'sampled' selects on scores without gradient,
recomputes the k selected scores from their gathered keys (the weights of
`softmax_topk` and `straight_through` depend on those alone), and estimates
the balance loss's partition gradient from `key_samples` uniformly drawn
keys (`retrieval.sampled_balance_loss`, same value, unbiased gradient): the
gradient reaches B*k + S rows, which pass through the same hook
(`retrieved_keys`, `sampled_keys`; the draw is sown as
`intermediates/memory_bank/sampled_key_indices`), so that the row-sparse
path updates only those keys.
"""

from typing import Any, Dict, Optional, Tuple

from flax import linen as nn
import jax
import jax.numpy as jnp

from spt_jax.model.config import SptConfig
from spt_jax.model import layers
from spt_jax.model import prompts
from spt_jax.model import retrieval
from spt_jax.optim import sparse_updates

Array = jax.Array


class MemoryBank(nn.Module):
  """`num_memories` memory prompts and keys; returns the retrieved prompt.

  Attributes:
    config: SPT settings (bank size, retrieval strategy, ...).
    features: model width H.
    dtype: activation dtype of the returned prompt.
  """

  config: SptConfig
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self,
      query: Array,
      *,
      deterministic: bool = True,
      embedding_table: Optional[Array] = None,
  ) -> Tuple[Array, retrieval.Retrieved, Dict[str, Array]]:
    """Retrieves and combines memory prompts for each query.

    Args:
      query: [B, H] pooled discrete-prompt embeddings.
      deterministic: evaluation mode (fixed perturbation noise).
      embedding_table: [V, H] token embeddings, needed at initialisation when
        `memory_init='vocab_sample'`.

    Returns:
      prompt: [B, k*P, H] (`concat`) or [B, P, H] (`weighted_sum`).
      retrieved: selected indices, scores and weights, each [B, k].
      aux_losses: unweighted scalar `pull_loss` and `balance_loss`.
    """
    cfg = self.config
    if query.ndim != 2 or query.shape[-1] != self.features:
      raise ValueError(
          f'Expected a query of shape [B, {self.features}], got {query.shape}.'
      )
    key_dim = cfg.key_dim or self.features
    keys, values = self._keys_and_values(key_dim, embedding_table)
    if key_dim != self.features:
      query = layers.DenseGeneral(
          key_dim,
          kernel_axes=('embed', 'memory_embed'),
          name='query_projection',
      )(query)

    scores = retrieval.similarity(query, keys, cfg.similarity, cfg.temperature)
    sampled = cfg.key_gradient == 'sampled'
    if sampled:
      # Selection only: the keys' gradient comes from the gathered rows.
      scores = jax.lax.stop_gradient(scores)
    retrieved = self._retrieve(scores, deterministic)
    rows = self._perturb(
        sparse_updates.RETRIEVED_VALUES,
        jnp.take(values, retrieved.indices, axis=0),
    )  # [B, k, P, H]
    if sampled:
      retrieved, aux_losses = self._sampled_key_losses(
          query, keys, scores, retrieved, deterministic
      )
    else:
      aux_losses = {
          'pull_loss': retrieval.pull_loss(query, keys, retrieved.indices),
          'balance_loss': retrieval.balance_loss(scores, retrieved.indices),
      }
    prompt = retrieval.combine_rows(
        rows.astype(self.dtype), retrieved.weights, cfg.combine
    )
    prompt = layers.with_sharding_constraint(
        prompt, ('batch', 'length', 'embed')
    )
    return prompt, retrieved, aux_losses

  def _keys_and_values(
      self, key_dim: int, embedding_table: Optional[Array]
  ) -> Tuple[Array, Array]:
    """The bank's parameters: keys [M, D] and values [M, P, H]."""
    cfg = self.config
    keys = layers.param_with_axes(
        'keys',
        prompts.symmetric_uniform(1.0),
        (cfg.num_memories, key_dim),
        jnp.float32,
        axes=('memory', 'memory_embed'),
    )
    values = layers.param_with_axes(
        'values',
        prompts.prompt_initializer(
            cfg.memory_init, cfg.memory_init_scale, embedding_table
        ),
        (cfg.num_memories, cfg.memory_length, self.features),
        jnp.float32,
        axes=('memory', 'memory_length', 'embed'),
    )
    return keys, values

  def _retrieve(
      self, scores: Array, deterministic: bool
  ) -> retrieval.Retrieved:
    """Top-k of `scores` [B, M] by the configured strategy."""
    cfg = self.config
    rng = None
    if cfg.retrieval == 'perturbed_topk':
      rng = jax.random.PRNGKey(0) if deterministic else self.make_rng('dropout')
    return retrieval.retrieve(
        scores,
        cfg.top_k,
        strategy=cfg.retrieval,
        combine=cfg.combine,
        rng=rng,
        approx=cfg.approx_top_k,
        recall_target=cfg.approx_recall_target,
        num_chunks=cfg.top_k_chunks,
        **(
            dict(num_samples=cfg.perturbed_samples, sigma=cfg.perturbed_sigma)
            if cfg.retrieval == 'perturbed_topk'
            else {}
        ),
    )

  def _perturb(self, name: str, rows: Array) -> Array:
    """Gathered rows through the row-sparse path's hook (`perturbations`).

    The row-sparse training step (sparse_updates.py) passes a zero
    perturbation of the rows and differentiates w.r.t. it instead of the
    bank; without one (dense training, evaluation) this adds nothing.
    """
    return rows if self.is_initializing() else self.perturb(name, rows)

  def _sampled_key_losses(
      self, query, keys, scores, retrieved, deterministic
  ) -> Tuple[retrieval.Retrieved, Dict[str, Array]]:
    """`key_gradient='sampled'`: gradients reach B*k + S rows of the keys.

    Args:
      query: [B, D].
      keys: [M, D].
      scores: [B, M] without gradient.
      retrieved: the selection made on them.
      deterministic: evaluation (a fixed draw of the sampled keys).

    Returns:
      The selection rescored from its gathered keys, and the pull and
      (sampled) balance losses.
    """
    cfg = self.config
    selected_keys = self._perturb(
        sparse_updates.RETRIEVED_KEYS, jnp.take(keys, retrieved.indices, axis=0)
    )  # [B, k, D]
    rng = jax.random.PRNGKey(0) if deterministic else self.make_rng('dropout')
    sampled_ids = jax.random.randint(
        rng, (cfg.key_samples,), 0, cfg.num_memories, jnp.int32
    )
    if not self.is_initializing():
      self.sow('intermediates', sparse_updates.SAMPLED_KEY_INDICES, sampled_ids)
    sampled_keys = self._perturb(
        sparse_updates.SAMPLED_KEYS, jnp.take(keys, sampled_ids, axis=0)
    )
    selected_scores = retrieval.row_similarity(
        query, selected_keys, cfg.similarity, cfg.temperature
    )
    retrieved = retrieval.rescored(
        retrieved, selected_scores, cfg.retrieval, cfg.combine
    )
    return retrieved, {
        'pull_loss': retrieval.pull_loss_of_rows(query, selected_keys),
        'balance_loss': retrieval.sampled_balance_loss(
            query,
            selected_keys,
            sampled_keys,
            jax.nn.logsumexp(scores, axis=-1),
            cfg.num_memories,
            cfg.similarity,
            cfg.temperature,
        ),
    }
