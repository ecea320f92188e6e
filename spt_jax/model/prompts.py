"""The discrete-prompt query, the soft prompt, and injection into the encoder input.

The discrete prompt rides in the last T_p positions of the encoder tokens
(`split_prompt` takes it out). The query is pooled from token embeddings over
it or, without one (T_p = 0), over a span of the input derived from the tokens
themselves. Prompts are prepended to the embedded input and the padding mask
grows to cover them.

Shape letters: B batch, T encoder length, T_p prompt length, P prefix length,
H model width.
"""

from typing import Optional, Tuple

from flax import linen as nn
import jax
import jax.numpy as jnp

from spt_jax.model import layers

Array = jax.Array


def split_prompt(
    tokens: Array, prompt_length: int
) -> Tuple[Array, Optional[Array]]:
  """Encoder tokens [B, T + T_p] -> input [B, T] and prompt [B, T_p] or None."""
  if not prompt_length:
    return tokens, None
  return tokens[:, :-prompt_length], tokens[:, -prompt_length:]


def prompt_span_mask(
    tokens: Array, span: str = 'all_tokens', separator_id: Optional[int] = None
) -> Array:
  """Marks the discrete prompt inside encoder tokens [B, T] -> bool [B, T].

  `all_tokens` takes every non-padding token. `before_separator` takes the
  tokens before the first `separator_id` (inputs laid out as
  "instruction <sep> data"); a row without a separator counts as all prompt.
  `SptConfig` checks the span's name and that `before_separator` has an id.
  """
  not_pad = tokens > 0
  if span == 'all_tokens':
    return not_pad
  seen_separator = jnp.cumsum(tokens == separator_id, axis=-1) > 0
  return jnp.logical_and(not_pad, jnp.logical_not(seen_separator))


def pool_query(embedded: Array, mask: Array, pooling: str = 'mean') -> Array:
  """Pools embeddings [B, T, H] over mask [B, T] into queries [B, H].

  `pooling` is 'mean' or 'max' (`config.QUERY_POOLINGS`). A row whose mask is empty pools to zeros (and scores equally against every
  key) rather than to NaN.
  """
  if embedded.ndim != 3 or mask.shape != embedded.shape[:2]:
    raise ValueError(
        f'Expected embeddings [B, T, H] and a mask [B, T], got '
        f'{embedded.shape} and {mask.shape}.'
    )
  mask = mask.astype(jnp.float32)[..., None]
  embedded = embedded.astype(jnp.float32)
  if pooling == 'mean':
    return jnp.sum(embedded * mask, axis=1) / jnp.maximum(
        jnp.sum(mask, axis=1), 1.0
    )
  pooled = jnp.max(jnp.where(mask > 0, embedded, -jnp.inf), axis=1)
  return jnp.where(jnp.isfinite(pooled), pooled, 0.0)


def prepend(prefixes, embedded: Array) -> Array:
  """Concatenates prefixes [B, P_i, H] (None skipped) before embedded [B, T, H]."""
  parts = [p.astype(embedded.dtype) for p in prefixes if p is not None]
  x = jnp.concatenate(parts + [embedded], axis=1) if parts else embedded
  return layers.with_sharding_constraint(x, ('batch', 'length', 'embed'))


def input_mask_with_prefix(tokens: Array, prefix_length: int) -> Array:
  """Non-padding mask [B, P + T] of encoder tokens [B, T] after P prefix positions."""
  prefix = jnp.ones((tokens.shape[0], prefix_length), dtype=bool)
  return jnp.concatenate([prefix, tokens > 0], axis=1)


# Prompt tuning samples initial prompts from the most frequent tokens.
VOCAB_SAMPLE_POPULATION = 5000


def symmetric_uniform(scale: float):
  """Initializer drawing uniformly from [-scale, scale], as prompt tuning does."""

  def init(rng, shape, dtype=jnp.float32):
    return jax.random.uniform(rng, shape, dtype, -scale, scale)

  return init


def sample_vocab_embeddings(
    rng: Array,
    embedding_table: Array,
    shape: Tuple[int, ...],
    population: int = VOCAB_SAMPLE_POPULATION,
) -> Array:
  """Rows of `embedding_table` [V, H] drawn at random into `shape` [..., H]."""
  population = min(population, embedding_table.shape[0])
  ids = jax.random.randint(rng, shape[:-1], 0, population)
  return jnp.asarray(embedding_table, jnp.float32)[ids]


def prompt_initializer(
    memory_init: str, scale: float, embedding_table: Optional[Array] = None
):
  """The initializer of prompt vectors [..., H]: memory values, soft prompt.

  Args:
    memory_init: 'uniform' (in [-scale, scale]) or 'vocab_sample' (rows of
      the embedding table among its first `VOCAB_SAMPLE_POPULATION` tokens).
    scale: the bound of 'uniform'.
    embedding_table: [V, H], needed by 'vocab_sample'.

  Returns:
    A Flax initializer (rng, shape, dtype) -> array.
  """
  if memory_init == 'uniform':
    return symmetric_uniform(scale)
  if embedding_table is None:
    raise ValueError("memory_init='vocab_sample' needs the embedding table.")
  return lambda rng, shape, dtype=jnp.float32: sample_vocab_embeddings(
      rng, embedding_table, shape
  ).astype(dtype)


class SoftPrompt(nn.Module):
  """A parametric prompt [L, H] shared by every example (prompt tuning).

  Attributes:
    length: L.
    features: H.
    init_scale: bound of the 'uniform' initializer.
    memory_init: 'uniform' or 'vocab_sample' (see `prompt_initializer`).
  """

  length: int
  features: int
  init_scale: float = 0.5
  memory_init: str = 'uniform'

  @nn.compact
  def __call__(
      self,
      batch_size: int,
      dtype=jnp.float32,
      embedding_table: Optional[Array] = None,
  ) -> Array:
    """Returns the prompt broadcast to [B, L, H].

    Args:
      batch_size: B.
      dtype: activation dtype of the result.
      embedding_table: [V, H] token embeddings, needed at initialisation when
        `memory_init='vocab_sample'`.
    """
    prompt = layers.param_with_axes(
        'prompt',
        prompt_initializer(self.memory_init, self.init_scale, embedding_table),
        (self.length, self.features),
        jnp.float32,
        axes=('prompt', 'embed'),
    )
    prompt = jnp.asarray(prompt, dtype)
    return jnp.broadcast_to(prompt, (batch_size,) + prompt.shape)
