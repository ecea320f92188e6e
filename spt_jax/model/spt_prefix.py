"""The SPT prefix: the soft prompt and the retrieved memory prompt before the input.

`SptPrefix` takes the embedded input and the discrete prompt, and returns the
encoder's input with the prefix prepended, and its padding mask:

    [soft prompt (S) | memory prompt (k*P or P) | input tokens (T)]

The memory prompt is retrieved from the bank by a query pooled over the
discrete prompt's embeddings (or the first encoder layer's output over them),
or, without a discrete prompt (T_p = 0), over `SptConfig.prompt_span` of the
input.

`SptTransformer` shares its scope with this module (`nn.share_scope`), so the
parameters stay top-level groups of the network (`memory_bank/keys`,
`memory_bank/values`, `memory_bank/query_projection/kernel`,
`soft_prompt/prompt`) and the sown `intermediates` (`retrieval_indices`,
`retrieval_scores`) and `losses` (`pull_loss`, `balance_loss`) top-level
entries of their collections.

Shape letters: B batch, T input length, T_p discrete-prompt length, S soft
prompt length, k retrieved memories, P memory length, H model width.
"""

from typing import Optional, Tuple

from flax import linen as nn
import jax
import jax.numpy as jnp

from spt_jax.model.config import SptConfig, T5Config
from spt_jax.model import layers
from spt_jax.model import memory_bank
from spt_jax.model import prompts

Array = jax.Array


class SptPrefix(nn.Module):
  """Soft prompt, query, memory bank and prefix mask.

  Attributes:
    config: the backbone (`T5Config`): width and activation dtype.
    spt: SPT's settings.
    token_embedder: the network's shared token embedding (`layers.Embed`), for
      the discrete prompt's embeddings and `memory_init='vocab_sample'`.
    encoder: the network's encoder, whose first layer is the query source
      when `query_source='first_layer'`.
  """

  config: T5Config
  spt: SptConfig
  token_embedder: nn.Module
  encoder: nn.Module

  def setup(self):
    cfg, spt = self.config, self.spt
    if spt.num_memories:
      self.memory_bank = memory_bank.MemoryBank(
          config=spt, features=cfg.emb_dim, dtype=cfg.dtype
      )
    if spt.soft_prompt_length:
      self.soft_prompt = prompts.SoftPrompt(
          length=spt.soft_prompt_length,
          features=cfg.emb_dim,
          init_scale=spt.memory_init_scale,
          memory_init=spt.memory_init,
      )

  def __call__(
      self,
      tokens: Array,
      embedded: Array,
      prompt_tokens: Optional[Array],
      deterministic: bool,
  ) -> Tuple[Array, Array]:
    """Prepends the prefix to the embedded input.

    Args:
      tokens: [B, T] input ids, 0 is padding.
      embedded: [B, T, H] their embeddings.
      prompt_tokens: [B, T_p] discrete-prompt ids, or None (T_p = 0).
      deterministic: evaluation mode.

    Returns:
      The encoder input [B, S + k*P + T, H] (k*P is P for `weighted_sum`) and
      its non-padding mask [B, S + k*P + T].
    """
    prefixes = []
    table = self.token_embedder.embedding
    if self.spt.soft_prompt_length:
      prefixes.append(
          self.soft_prompt(
              tokens.shape[0], self.config.dtype, embedding_table=table
          )
      )
    if self.spt.num_memories:
      query = self._query(tokens, embedded, prompt_tokens, deterministic)
      prefixes.append(self._retrieve(query, deterministic))
    x = prompts.prepend(prefixes, embedded)
    return x, prompts.input_mask_with_prefix(tokens, self.spt.prefix_length)

  def _query(self, tokens, embedded, prompt_tokens, deterministic) -> Array:
    """The retrieval query [B, H] pooled over the discrete prompt."""
    spt = self.spt
    if prompt_tokens is not None:
      source, span = self.token_embedder(prompt_tokens), prompt_tokens > 0
      context = span
    else:
      source, context = embedded, tokens > 0
      span = prompts.prompt_span_mask(
          tokens, spt.prompt_span, spt.prompt_separator_id
      )
    if spt.query_source == 'first_layer':
      mask = layers.make_attention_mask(
          context, context, dtype=self.config.dtype
      )
      source = self.encoder.first_layer(source, mask, deterministic)
    query = prompts.pool_query(source, span, spt.query_pooling)
    if spt.query_stop_gradient:
      query = jax.lax.stop_gradient(query)
    return query

  def _retrieve(self, query: Array, deterministic: bool) -> Array:
    """The combined memory prompt [B, k*P or P, H]; sows telemetry and losses."""
    prompt, retrieved, aux_losses = self.memory_bank(
        query,
        deterministic=deterministic,
        embedding_table=self.token_embedder.embedding,
    )
    if not self.is_initializing():
      self.sow('intermediates', 'retrieval_indices', retrieved.indices)
      self.sow('intermediates', 'retrieval_scores', retrieved.scores)
      # Unweighted: the model (models.py) owns the loss weights.
      for name, value in aux_losses.items():
        self.sow('losses', name, value, init_fn=lambda: 0.0, reduce_fn=jnp.add)
    return prompt
