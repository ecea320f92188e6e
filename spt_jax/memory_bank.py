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
"""

from typing import Any, Dict, Optional, Tuple

from flax import linen as nn
import jax
import jax.numpy as jnp

from spt_jax import layers
from spt_jax import prompts
from spt_jax import retrieval
from spt_jax import sparse_updates
from spt_jax.config import SptConfig

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
    if key_dim != self.features:
      query = layers.DenseGeneral(
          key_dim,
          kernel_axes=('embed', 'memory_embed'),
          name='query_projection',
      )(query)

    scores = retrieval.similarity(query, keys, cfg.similarity, cfg.temperature)
    rng = None
    if cfg.retrieval == 'perturbed_topk':
      rng = jax.random.PRNGKey(0) if deterministic else self.make_rng('dropout')
    retrieved = retrieval.retrieve(
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
    rows = jnp.take(values, retrieved.indices, axis=0)  # [B, k, P, H]
    if not self.is_initializing():
      # The row-sparse training step (sparse_updates.py) passes a zero
      # perturbation of the rows and differentiates w.r.t. it instead of the
      # values; without one (dense training, evaluation) this adds nothing.
      rows = self.perturb(sparse_updates.RETRIEVED_VALUES, rows)
    prompt = retrieval.combine_rows(
        rows.astype(self.dtype), retrieved.weights, cfg.combine
    )
    prompt = layers.with_sharding_constraint(prompt, ('batch', 'length', 'embed'))
    aux_losses = {
        'pull_loss': retrieval.pull_loss(query, keys, retrieved.indices),
        'balance_loss': retrieval.balance_loss(scores, retrieved.indices),
    }
    return prompt, retrieved, aux_losses
