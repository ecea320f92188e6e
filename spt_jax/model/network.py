"""The T5 1.1 encoder-decoder with SPT's retrieved memory prompt and soft prompt.

`SptTransformer` keeps the method signatures of T5X's example network
(`__call__`, `encode`, `decode` with a cache), so it can be the `module` of
`t5x.models.EncoderDecoderModel`. The discrete prompt travels inside the
encoder tokens, in their last `SptConfig.prompt_length` positions, so that
training, scoring, decoding and beam search see it through any T5X code path.
In `encode`, the SPT prefix (`spt_prefix.py`) pools a query from the discrete
prompt and retrieves memory prompts from the bank; the prompt positions are
dropped, and the retrieved prompts are prepended to the embedded input after
the optional soft prompt:

    [soft prompt (S) | memory prompt (k*P or P) | input tokens (T)]

and every mask over encoder positions grows by the prefix length S + k*P.

Telemetry and auxiliary losses are sown, never returned, so the outputs stay
what T5X expects:
  * `intermediates`: `retrieval_indices` and `retrieval_scores` [B, k];
  * `losses`: `pull_loss` and `balance_loss`, unweighted; the model
    (`models.spt_loss`) weights them into the training loss.
Neither is written during `init`, so initial variables hold only `params`
(and `params_axes`), as T5X requires.

Shape letters: B batch, T encoder input length, T_p discrete-prompt length,
L decoder length, H model width, V vocabulary.
"""

import functools
from typing import Optional

from flax import linen as nn
import jax
import jax.numpy as jnp

from spt_jax.model.config import NO_SPT, SptConfig, T5Config
from spt_jax.model import layers
from spt_jax.model import prompts
from spt_jax.model import spt_prefix

Array = jax.Array

_REMAT_POLICIES = {
    'full': None,
    'dots': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _maybe_remat(layer_cls, policy: str, static_argnums):
  """Wraps a layer class for rematerialisation; flag arguments stay static."""
  if policy == 'none':
    return layer_cls
  if policy not in _REMAT_POLICIES:
    raise ValueError(
        f"Unknown remat_policy {policy!r}; expected 'none' or one of "
        f'{sorted(_REMAT_POLICIES)}.'
    )
  return nn.remat(
      layer_cls, policy=_REMAT_POLICIES[policy], static_argnums=static_argnums
  )


def _dropout(cfg: T5Config, broadcast_dims=(-2,)):
  return nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=broadcast_dims)


class EncoderLayer(nn.Module):
  """Pre-norm self-attention and gated MLP, each with a residual."""

  config: T5Config

  @nn.compact
  def __call__(
      self, inputs: Array, mask: Array, bias: Array, deterministic: bool
  ) -> Array:
    """[B, T, H] -> [B, T, H]; mask [B, 1, T, T], bias [1, N, T, T]."""
    cfg = self.config
    x = layers.RMSNorm(dtype=cfg.dtype, name='pre_attention_layer_norm')(inputs)
    x = layers.MultiHeadAttention(
        num_heads=cfg.num_heads,
        head_dim=cfg.head_dim,
        dtype=cfg.dtype,
        dropout_rate=cfg.dropout_rate,
        float32_logits=cfg.float32_attention_logits,
        name='attention',
    )(x, x, mask, bias, deterministic=deterministic)
    x = _dropout(cfg)(x, deterministic=deterministic) + inputs

    return _mlp_sublayer(cfg, x, deterministic)


def _mlp_sublayer(cfg: T5Config, x: Array, deterministic: bool) -> Array:
  """Pre-norm gated MLP with its residual, [B, L, H] -> [B, L, H].

  The last sublayer of both layer kinds; called inside their compact
  `__call__`, so its modules (`pre_mlp_layer_norm`, `mlp`) are theirs.
  """
  y = layers.RMSNorm(dtype=cfg.dtype, name='pre_mlp_layer_norm')(x)
  y = layers.MlpBlock(
      intermediate_dim=cfg.mlp_dim,
      activations=cfg.mlp_activations,
      intermediate_dropout_rate=cfg.dropout_rate,
      dtype=cfg.dtype,
      name='mlp',
  )(y, deterministic=deterministic)
  y = _dropout(cfg)(y, deterministic=deterministic) + x
  return layers.with_sharding_constraint(y, ('batch', 'length', 'embed'))


class DecoderLayer(nn.Module):
  """Causal self-attention, attention to the encoder, and gated MLP."""

  config: T5Config

  @nn.compact
  def __call__(
      self,
      inputs: Array,
      encoded: Array,
      decoder_mask: Optional[Array],
      encoder_decoder_mask: Array,
      bias: Array,
      deterministic: bool,
      decode: bool,
  ) -> Array:
    """[B, L, H] attending to encoded [B, T', H] -> [B, L, H]."""
    cfg = self.config
    attention = functools.partial(
        layers.MultiHeadAttention,
        num_heads=cfg.num_heads,
        head_dim=cfg.head_dim,
        dtype=cfg.dtype,
        dropout_rate=cfg.dropout_rate,
        float32_logits=cfg.float32_attention_logits,
    )
    x = layers.RMSNorm(dtype=cfg.dtype, name='pre_self_attention_layer_norm')(
        inputs
    )
    x = attention(name='self_attention')(
        x, x, decoder_mask, bias, decode=decode, deterministic=deterministic
    )
    x = _dropout(cfg)(x, deterministic=deterministic) + inputs

    y = layers.RMSNorm(dtype=cfg.dtype, name='pre_cross_attention_layer_norm')(
        x
    )
    y = attention(name='encoder_decoder_attention')(
        y, encoded, encoder_decoder_mask, deterministic=deterministic
    )
    y = _dropout(cfg)(y, deterministic=deterministic) + x

    return _mlp_sublayer(cfg, y, deterministic)


def _relative_position_biases(cfg: T5Config) -> layers.RelativePositionBiases:
  return layers.RelativePositionBiases(
      num_buckets=cfg.relative_attention_num_buckets,
      max_distance=cfg.relative_attention_max_distance,
      num_heads=cfg.num_heads,
      dtype=cfg.dtype,
      name='relpos_bias',
  )


class Encoder(nn.Module):
  """The encoder stack over embedded inputs, so prompts can be prepended first."""

  config: T5Config

  def setup(self):
    cfg = self.config
    self.relpos_bias = _relative_position_biases(cfg)
    # Arguments count from `self`: `deterministic` is the fourth.
    layer_cls = _maybe_remat(
        EncoderLayer, cfg.remat_policy, static_argnums=(4,)
    )
    # Setup names list entries `layers_0`, `layers_1`, ...
    self.layers = [layer_cls(config=cfg) for _ in range(cfg.num_encoder_layers)]
    self.encoder_norm = layers.RMSNorm(dtype=cfg.dtype)
    self.dropout = _dropout(cfg)

  def __call__(
      self, embedded: Array, mask: Array, deterministic: bool
  ) -> Array:
    """Embedded inputs [B, T, H] with mask [B, 1, T, T] -> encodings [B, T, H]."""
    length = embedded.shape[1]
    bias = self.relpos_bias(length, length, True)
    x = self.dropout(embedded, deterministic=deterministic)
    x = x.astype(self.config.dtype)
    for layer in self.layers:
      x = layer(x, mask, bias, deterministic)
    x = self.encoder_norm(x)
    return self.dropout(x, deterministic=deterministic)

  def first_layer(self, embedded: Array, mask: Array, deterministic: bool):
    """The first layer's output [B, T, H], a contextual source for the query."""
    length = embedded.shape[1]
    bias = self.relpos_bias(length, length, True)
    return self.layers[0](
        embedded.astype(self.config.dtype), mask, bias, deterministic
    )


class Decoder(nn.Module):
  """The decoder stack and the output projection to vocabulary logits."""

  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(
      self,
      encoded: Array,
      decoder_input_tokens: Array,
      decoder_mask: Optional[Array],
      encoder_decoder_mask: Array,
      deterministic: bool,
      decode: bool = False,
      max_decode_length: Optional[int] = None,
  ) -> Array:
    """Tokens [B, L] attending to encoded [B, T', H] -> logits [B, L, V]."""
    cfg = self.config
    length = (
        max_decode_length
        if decode and max_decode_length
        else decoder_input_tokens.shape[-1]
    )
    bias = _relative_position_biases(cfg)(length, length, False)
    y = self.shared_embedding(decoder_input_tokens.astype(jnp.int32))
    y = _dropout(cfg)(y, deterministic=deterministic).astype(cfg.dtype)
    layer_cls = _maybe_remat(
        DecoderLayer, cfg.remat_policy, static_argnums=(6, 7)
    )
    for i in range(cfg.num_decoder_layers):
      y = layer_cls(config=cfg, name=f'layers_{i}')(
          y,
          encoded,
          decoder_mask,
          encoder_decoder_mask,
          bias,
          deterministic,
          decode,
      )
    y = layers.RMSNorm(dtype=cfg.dtype, name='decoder_norm')(y)
    y = _dropout(cfg)(y, deterministic=deterministic)
    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(y) / jnp.sqrt(y.shape[-1])
    else:
      logits = layers.DenseGeneral(
          cfg.vocab_size,
          dtype=jnp.float32,  # Logits in float32 for a stable softmax.
          kernel_axes=('embed', 'vocab'),
          name='logits_dense',
      )(y)
    return layers.with_sharding_constraint(logits, ('batch', 'length', 'vocab'))


def _refuse_packing(**packing_features):
  given = sorted(k for k, v in packing_features.items() if v is not None)
  if given:
    raise ValueError(
        f'SPT prepends a prompt to each example, so packed inputs are not '
        f'supported, but {", ".join(given)} were given. Turn packing off '
        f'(utils.DatasetConfig.pack = False in T5X, pack=False in seqio).'
    )


class SptTransformer(nn.Module):
  """T5 1.1 encoder-decoder with SPT's memory bank and soft prompt.

  Attributes:
    config: the backbone (`T5Config`).
    spt: memory bank, retrieval and prompt settings (`SptConfig`); the default
      `NO_SPT` is the plain T5 network.
  """

  config: T5Config
  spt: SptConfig = NO_SPT

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(
        num_embeddings=cfg.vocab_size,
        features=cfg.emb_dim,
        dtype=cfg.dtype,
        attend_dtype=jnp.float32,
        embedding_init=nn.initializers.normal(stddev=1.0),
    )
    self.encoder = Encoder(config=cfg)
    self.decoder = Decoder(config=cfg, shared_embedding=self.token_embedder)
    if self.spt.prefix_length:
      self.prefix = spt_prefix.SptPrefix(
          config=cfg,
          spt=self.spt,
          token_embedder=self.token_embedder,
          encoder=self.encoder,
      )
      # The prefix's parameters and sown values stay top-level groups
      # (`memory_bank`, `soft_prompt`), as checkpoints and T5X expect.
      nn.share_scope(self, self.prefix)

  def encode(
      self,
      encoder_input_tokens: Array,
      encoder_segment_ids: Optional[Array] = None,
      enable_dropout: bool = True,
  ) -> Array:
    """Retrieves memory prompts, prepends them, and encodes.

    Args:
      encoder_input_tokens: [B, T + T_p] ids, 0 is padding: the input, then
        the discrete prompt in the last T_p = `SptConfig.prompt_length`
        positions (`spt_jax.model.feature_converters.SptEncDecFeatureConverter` lays
        them out). With T_p = 0 the query is pooled over
        `SptConfig.prompt_span` of the input.
      encoder_segment_ids: must be None (packing is not supported).
      enable_dropout: training mode.

    Returns:
      Encodings [B, prefix_length + T, H].
    """
    _refuse_packing(encoder_segment_ids=encoder_segment_ids)
    deterministic = not enable_dropout
    tokens, prompt_tokens = self._split_prompt(encoder_input_tokens)
    embedded = self.token_embedder(tokens)
    if self.spt.prefix_length:
      x, input_mask = self.prefix(
          tokens, embedded, prompt_tokens, deterministic
      )
    else:
      x, input_mask = embedded, tokens > 0
    mask = layers.make_attention_mask(
        input_mask, input_mask, dtype=self.config.dtype
    )
    return self.encoder(x, mask, deterministic)

  def _split_prompt(self, encoder_input_tokens: Array):
    """Input tokens [B, T] and prompt tokens [B, T_p] (None when T_p = 0)."""
    if encoder_input_tokens.ndim != 2:
      raise ValueError(
          'Expected encoder_input_tokens of shape [batch, length], got '
          f'{encoder_input_tokens.shape}.'
      )
    prompt_length = self.spt.prompt_length
    if encoder_input_tokens.shape[1] <= prompt_length:
      raise ValueError(
          f'encoder_input_tokens has {encoder_input_tokens.shape[1]} '
          f'positions, but SptConfig.prompt_length={prompt_length} of them '
          'should be the discrete prompt after the input: convert the task '
          'with SptEncDecFeatureConverter(prompt_length='
          f"{prompt_length}) (the model's FEATURE_CONVERTER_CLS)."
      )
    return prompts.split_prompt(
        encoder_input_tokens.astype(jnp.int32), prompt_length
    )

  def decode(
      self,
      encoded: Array,
      encoder_input_tokens: Array,
      decoder_input_tokens: Array,
      decoder_target_tokens: Array,
      encoder_segment_ids: Optional[Array] = None,
      decoder_segment_ids: Optional[Array] = None,
      decoder_positions: Optional[Array] = None,
      enable_dropout: bool = True,
      decode: bool = False,
      max_decode_length: Optional[int] = None,
  ) -> Array:
    """Decodes against encodings that include the prompt prefix.

    Args:
      encoded: [B, prefix_length + T, H] from `encode`.
      encoder_input_tokens: [B, T + T_p] as given to `encode`, only for the
        padding mask.
      decoder_input_tokens: [B, L] (L = 1 per step when `decode`).
      decoder_target_tokens: [B, L], for the padding mask.
      encoder_segment_ids: must be None.
      decoder_segment_ids: must be None.
      decoder_positions: unused (relative positions); accepted for T5X.
      enable_dropout: training mode.
      decode: one autoregressive step with the `cache` collection.
      max_decode_length: decode length the cache was built for.

    Returns:
      Logits [B, L, V].
    """
    del decoder_positions
    _refuse_packing(
        encoder_segment_ids=encoder_segment_ids,
        decoder_segment_ids=decoder_segment_ids,
    )
    dtype = self.config.dtype
    tokens, _ = self._split_prompt(encoder_input_tokens)
    input_mask = prompts.input_mask_with_prefix(tokens, self.spt.prefix_length)
    if encoded.shape[:2] != input_mask.shape:
      raise ValueError(
          f'encoded has shape {encoded.shape}, but encoder_input_tokens '
          f'{encoder_input_tokens.shape} (of which {self.spt.prompt_length} '
          f'prompt positions) plus the prefix of {self.spt.prefix_length} '
          f'positions needs {input_mask.shape + (self.config.emb_dim,)}.'
      )
    if decode:
      decoder_mask = None
      encoder_decoder_mask = layers.make_attention_mask(
          jnp.ones_like(decoder_target_tokens), input_mask, dtype=dtype
      )
    else:
      decoder_mask = layers.make_decoder_mask(
          decoder_target_tokens, dtype=dtype
      )
      encoder_decoder_mask = layers.make_attention_mask(
          decoder_target_tokens > 0, input_mask, dtype=dtype
      )
    return self.decoder(
        encoded,
        decoder_input_tokens,
        decoder_mask,
        encoder_decoder_mask,
        deterministic=not enable_dropout,
        decode=decode,
        max_decode_length=max_decode_length,
    )

  def __call__(
      self,
      encoder_input_tokens: Array,
      decoder_input_tokens: Array,
      decoder_target_tokens: Array,
      encoder_segment_ids: Optional[Array] = None,
      decoder_segment_ids: Optional[Array] = None,
      encoder_positions: Optional[Array] = None,
      decoder_positions: Optional[Array] = None,
      *,
      enable_dropout: bool = True,
      decode: bool = False,
  ) -> Array:
    """Teacher-forced logits [B, L, V]; see `encode` and `decode` for inputs."""
    _refuse_packing(
        encoder_segment_ids=encoder_segment_ids,
        decoder_segment_ids=decoder_segment_ids,
        encoder_positions=encoder_positions,
        decoder_positions=decoder_positions,
    )
    encoded = self.encode(encoder_input_tokens, enable_dropout=enable_dropout)
    return self.decode(
        encoded,
        encoder_input_tokens,
        decoder_input_tokens,
        decoder_target_tokens,
        enable_dropout=enable_dropout,
        decode=decode,
    )
