"""T5 1.1 building blocks in Flax linen, annotated with logical axis names.

Every parameter is declared through `param_with_axes`, which also records its
logical axes in the `params_axes` collection that T5X's partitioner reads, and
activations carry `with_sharding_constraint` annotations that are no-ops unless
logical axis rules and a mesh are in scope. Parameter names and shapes follow the
T5X T5.1.1 checkpoints, so those restore into this network unchanged.

Shape letters: B batch, T/Q/K sequence lengths, H model width (`emb_dim`),
N heads, D head width, F MLP width, V vocabulary.
"""

import functools
from typing import Any, Callable, Iterable, Optional, Sequence, Tuple, Union

from flax import linen as nn
from flax.linen import partitioning as nn_partitioning
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
DType = Any
Initializer = Callable[..., Array]

param_with_axes = nn_partitioning.param_with_axes
with_sharding_constraint = nn_partitioning.with_sharding_constraint

default_kernel_init = nn.initializers.variance_scaling(
    1.0, 'fan_in', 'truncated_normal'
)


def _as_tuple(x: Union[int, Iterable[int]]) -> Tuple[int, ...]:
  return tuple(x) if isinstance(x, Iterable) else (x,)


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    bias: Optional[Array] = None,
    dropout_rng: Optional[Array] = None,
    dropout_rate: float = 0.0,
    deterministic: bool = True,
    dtype: DType = jnp.float32,
    float32_logits: bool = False,
) -> Array:
  """Attention weights from query and key, applied to value.

  T5 does not scale the logits by 1/sqrt(D): the scale is folded into the
  query initializer instead, which is what the pretrained checkpoints assume.

  Args:
    query: [B, Q, N, D].
    key: [B, K, N, D].
    value: [B, K, N, D].
    bias: additive bias broadcastable to [B, N, Q, K]; carries both the
      relative position bias and the mask (as large negative numbers).
    dropout_rng: key for attention dropout.
    dropout_rate: attention dropout probability.
    deterministic: disables dropout.
    dtype: dtype of the output.
    float32_logits: compute logits and softmax in float32.

  Returns:
    [B, Q, N, D].
  """
  if query.ndim != 4 or key.shape != value.shape:
    raise ValueError(
        f'Expected query [B, Q, N, D] and equal key/value shapes, got '
        f'{query.shape}, {key.shape}, {value.shape}.'
    )
  if float32_logits:
    query = query.astype(jnp.float32)
    key = key.astype(jnp.float32)
  logits = jnp.einsum('bqnd,bknd->bnqk', query, key)
  if bias is not None:
    logits = logits + bias.astype(logits.dtype)
  weights = jax.nn.softmax(logits).astype(dtype)
  if not deterministic and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
    weights = (
        weights * keep.astype(dtype) / jnp.asarray(1.0 - dropout_rate, dtype)
    )
  return jnp.einsum('bnqk,bknd->bqnd', weights, value.astype(dtype))


class DenseGeneral(nn.Module):
  """A linear map over the trailing `axis` dims onto `features` dims, no bias.

  The kernel is stored flattened as [prod(in), prod(out)], as T5X stores it, so
  that one pair of logical axes describes it.
  """

  features: Union[int, Sequence[int]]
  kernel_axes: Tuple[str, str]
  axis: Union[int, Sequence[int]] = -1
  dtype: DType = jnp.float32
  kernel_init: Initializer = default_kernel_init

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    features = _as_tuple(self.features)
    axis = tuple(a % inputs.ndim for a in _as_tuple(self.axis))
    in_shape = tuple(inputs.shape[a] for a in axis)
    kernel_shape = in_shape + features

    def init(rng, shape, dtype=jnp.float32):
      # Fan-in/fan-out follow the unflattened kernel, as in T5X.
      kernel = self.kernel_init(rng, kernel_shape, dtype)
      return jnp.reshape(kernel, shape)

    flat_shape = (int(np.prod(in_shape)), int(np.prod(features)))
    kernel = param_with_axes(
        'kernel', init, flat_shape, jnp.float32, axes=self.kernel_axes
    )
    kernel = jnp.asarray(kernel, self.dtype).reshape(kernel_shape)
    contract = (axis, tuple(range(len(axis))))
    return lax.dot_general(
        jnp.asarray(inputs, self.dtype), kernel, (contract, ((), ()))
    )


class MultiHeadAttention(nn.Module):
  """Multi-head attention with an autoregressive key/value cache.

  The cache lives in the `cache` collection as `cached_key`, `cached_value`
  ([B, L, N, D]) and `cache_index`, the names T5X's decoding utilities expect.
  """

  num_heads: int
  head_dim: int
  dtype: DType = jnp.float32
  dropout_rate: float = 0.0
  kernel_init: Initializer = default_kernel_init
  float32_logits: bool = False

  @nn.compact
  def __call__(
      self,
      inputs_q: Array,
      inputs_kv: Array,
      mask: Optional[Array] = None,
      bias: Optional[Array] = None,
      *,
      decode: bool = False,
      deterministic: bool = True,
  ) -> Array:
    """Attends from `inputs_q` [B, Q, H] to `inputs_kv` [B, K, H].

    Args:
      inputs_q: [B, Q, H].
      inputs_kv: [B, K, H].
      mask: [B, 1, Q, K], 1 where attention is allowed.
      bias: [B or 1, N, Q, K] additive bias. While decoding, Q is the full
        decode length and the row of the current step is used.
      decode: use and update the cache; Q must then be 1.
      deterministic: disables dropout.

    Returns:
      [B, Q, H].
    """
    projection = functools.partial(
        DenseGeneral,
        axis=-1,
        features=(self.num_heads, self.head_dim),
        kernel_axes=('embed', 'joined_kv'),
        dtype=self.dtype,
    )

    def query_init(*args):
      return self.kernel_init(*args) / jnp.sqrt(self.head_dim).astype(args[-1])

    query = projection(kernel_init=query_init, name='query')(inputs_q)
    key = projection(kernel_init=self.kernel_init, name='key')(inputs_kv)
    value = projection(kernel_init=self.kernel_init, name='value')(inputs_kv)
    heads_axes = ('batch', 'length', 'heads', 'kv')
    query = with_sharding_constraint(query, heads_axes)
    key = with_sharding_constraint(key, heads_axes)
    value = with_sharding_constraint(value, heads_axes)

    if decode:
      key, value, mask, bias = self._update_cache(key, value, mask, bias)

    attention_bias = None
    if mask is not None:
      attention_bias = jnp.where(mask > 0, 0.0, -1e10).astype(jnp.float32)
    if bias is not None:
      attention_bias = bias if attention_bias is None else attention_bias + bias

    dropout_rng = None
    if not deterministic and self.dropout_rate > 0.0:
      dropout_rng = self.make_rng('dropout')
    x = dot_product_attention(
        query,
        key,
        value,
        bias=attention_bias,
        dropout_rng=dropout_rng,
        dropout_rate=self.dropout_rate,
        deterministic=deterministic,
        dtype=self.dtype,
        float32_logits=self.float32_logits,
    )
    out = DenseGeneral(
        features=inputs_q.shape[-1],
        axis=(-2, -1),
        kernel_init=self.kernel_init,
        kernel_axes=('joined_kv', 'embed'),
        dtype=self.dtype,
        name='out',
    )(x)
    return with_sharding_constraint(out, ('batch', 'length', 'embed'))

  def _update_cache(self, key, value, mask, bias):
    """Writes one step into the cache; returns the full keys/values, mask, bias."""
    is_initialized = self.has_variable('cache', 'cached_key')
    cached_key = self.variable(
        'cache', 'cached_key', jnp.zeros, key.shape, key.dtype
    )
    cached_value = self.variable(
        'cache', 'cached_value', jnp.zeros, value.shape, value.dtype
    )
    cache_index = self.variable(
        'cache', 'cache_index', lambda: jnp.array(0, dtype=jnp.int32)
    )
    if not is_initialized:
      # The cache-initialising call sees the full decode length; nothing to do.
      return key, value, mask, bias
    batch, max_length, num_heads, head_dim = cached_key.value.shape
    if key.shape != (batch, 1, num_heads, head_dim):
      raise ValueError(
          'Cached decoding takes one token per step: expected key shape '
          f'{(batch, 1, num_heads, head_dim)}, got {key.shape}.'
      )
    index = cache_index.value
    zero = jnp.array(0, dtype=index.dtype)
    start = (zero, index, zero, zero)
    cached_key.value = lax.dynamic_update_slice(cached_key.value, key, start)
    cached_value.value = lax.dynamic_update_slice(
        cached_value.value, value, start
    )
    cache_index.value = index + 1
    # The step may attend to every position written so far.
    step_mask = (jnp.arange(max_length) <= index)[None, None, None, :]
    step_mask = jnp.broadcast_to(step_mask, (batch, 1, 1, max_length))
    mask = step_mask if mask is None else combine_masks(mask, step_mask)
    if bias is not None:
      bias = lax.dynamic_slice_in_dim(bias, index, 1, axis=-2)
    return cached_key.value, cached_value.value, mask, bias


class RMSNorm(nn.Module):
  """T5's layer norm: scale only, no mean subtraction, no bias."""

  epsilon: float = 1e-6
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[..., H] -> [..., H], normalised in float32."""
    x = jnp.asarray(x, jnp.float32)
    variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    y = x * lax.rsqrt(variance + self.epsilon)
    scale = param_with_axes(
        'scale',
        nn.initializers.ones,
        (x.shape[-1],),
        jnp.float32,
        axes=('embed',),
    )
    return jnp.asarray(y * scale, self.dtype)


def _activation(name: str) -> Callable[[Array], Array]:
  if name == 'linear':
    return lambda x: x
  if name == 'gelu':
    # T5 1.1 uses the tanh approximation ("gelu_new" in transformers).
    return functools.partial(jax.nn.gelu, approximate=True)
  if hasattr(nn, name):
    return getattr(nn, name)
  raise ValueError(f'Unknown MLP activation {name!r}.')


class MlpBlock(nn.Module):
  """Gated MLP: the product of one projection per activation, then `wo`.

  With activations ('gelu', 'linear') this is T5 1.1's gated-GELU; the input
  projections are named `wi_0`, `wi_1`, ... (or `wi` for a single one).
  """

  intermediate_dim: int = 2048
  activations: Sequence[str] = ('gelu', 'linear')
  kernel_init: Initializer = default_kernel_init
  intermediate_dropout_rate: float = 0.1
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, deterministic: bool = True) -> Array:
    """[B, T, H] -> [B, T, H]."""
    hidden = None
    for i, name in enumerate(self.activations):
      dense_name = 'wi' if len(self.activations) == 1 else f'wi_{i}'
      x = DenseGeneral(
          self.intermediate_dim,
          kernel_axes=('embed', 'mlp'),
          kernel_init=self.kernel_init,
          dtype=self.dtype,
          name=dense_name,
      )(inputs)
      x = _activation(name)(x)
      hidden = x if hidden is None else hidden * x
    hidden = with_sharding_constraint(hidden, ('batch', 'length', 'mlp'))
    hidden = nn.Dropout(self.intermediate_dropout_rate, broadcast_dims=(-2,))(
        hidden, deterministic=deterministic
    )
    out = DenseGeneral(
        inputs.shape[-1],
        kernel_axes=('mlp', 'embed'),
        kernel_init=self.kernel_init,
        dtype=self.dtype,
        name='wo',
    )(hidden)
    return with_sharding_constraint(out, ('batch', 'length', 'embed'))


class Embed(nn.Module):
  """Token embedding table [V, H], usable for lookup and for output logits."""

  num_embeddings: int
  features: int
  dtype: DType = jnp.float32
  attend_dtype: Optional[DType] = None
  embedding_init: Initializer = nn.initializers.normal(stddev=1.0)

  def setup(self):
    self.embedding = param_with_axes(
        'embedding',
        self.embedding_init,
        (self.num_embeddings, self.features),
        jnp.float32,
        axes=('vocab', 'embed'),
    )

  def __call__(self, inputs: Array) -> Array:
    """[B, T] int -> [B, T, H]."""
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
      raise ValueError(f'Token ids must be integers, got {inputs.dtype}.')
    output = jnp.asarray(self.embedding, self.dtype)[inputs]
    return with_sharding_constraint(output, ('batch', 'length', 'embed'))

  def attend(self, query: Array) -> Array:
    """[..., H] -> [..., V], the dot product with every embedding."""
    dtype = self.attend_dtype or self.dtype
    return jnp.dot(
        jnp.asarray(query, dtype), jnp.asarray(self.embedding, dtype).T
    )


class RelativePositionBiases(nn.Module):
  """T5's bucketed relative position bias, one scalar per (head, bucket)."""

  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: DType = jnp.float32
  embedding_init: Initializer = nn.initializers.variance_scaling(
      1.0, 'fan_avg', 'uniform'
  )

  @staticmethod
  def relative_position_bucket(
      relative_position: np.ndarray,
      bidirectional: bool,
      num_buckets: int,
      max_distance: int,
  ) -> np.ndarray:
    """Maps `memory_position - query_position` to a bucket id.

    Half the buckets hold exact small distances, the rest log-spaced distances
    up to `max_distance`; bidirectional buckets split again by sign.
    """
    bucket = np.zeros_like(relative_position)
    n = -relative_position
    if bidirectional:
      num_buckets //= 2
      bucket += (n < 0).astype(np.int32) * num_buckets
      n = np.abs(n)
    else:
      n = np.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    log_ratio = np.log(np.maximum(n, 1) / max_exact) / np.log(
        max_distance / max_exact
    )
    val_if_large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(
        np.int32
    )
    val_if_large = np.minimum(val_if_large, num_buckets - 1)
    return bucket + np.where(is_small, n, val_if_large)

  @nn.compact
  def __call__(self, qlen: int, klen: int, bidirectional: bool = True) -> Array:
    """Returns the bias [1, N, qlen, klen] for static lengths."""
    context = np.arange(qlen, dtype=np.int32)[:, None]
    memory = np.arange(klen, dtype=np.int32)[None, :]
    buckets = self.relative_position_bucket(
        memory - context, bidirectional, self.num_buckets, self.max_distance
    )
    table = param_with_axes(
        'rel_embedding',
        self.embedding_init,
        (self.num_heads, self.num_buckets),
        jnp.float32,
        axes=('heads', 'relpos_buckets'),
    )
    table = jnp.asarray(table, self.dtype)
    # A one-hot contraction instead of a gather: cheap, and shards over heads.
    # Only the int32 [Q, K] buckets are a constant; the one-hot is built on
    # the device, so long sequences do not embed a [Q, K, buckets] constant.
    iota = lax.broadcasted_iota(jnp.int32, (1, 1, self.num_buckets), 2)
    one_hot = jnp.asarray(jnp.asarray(buckets)[..., None] == iota, self.dtype)
    bias = jnp.einsum('nb,qkb->nqk', table, one_hot)
    return bias[None]


def make_attention_mask(
    query_input: Array,
    key_input: Array,
    pairwise_fn: Callable[[Array, Array], Array] = jnp.multiply,
    dtype: DType = jnp.float32,
) -> Array:
  """[B, Q] x [B, K] -> [B, 1, Q, K] mask from a pairwise predicate."""
  mask = pairwise_fn(query_input[..., :, None], key_input[..., None, :])
  return mask[..., None, :, :].astype(dtype)


def make_causal_mask(x: Array, dtype: DType = jnp.float32) -> Array:
  """[B, T] -> [B, 1, T, T] lower-triangular mask."""
  idxs = jnp.broadcast_to(jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape)
  return make_attention_mask(idxs, idxs, jnp.greater_equal, dtype=dtype)


def combine_masks(*masks: Optional[Array], dtype: DType = jnp.float32):
  """Logical AND of the masks that are not None."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  mask = masks[0]
  for other in masks[1:]:
    mask = jnp.logical_and(mask, other)
  return mask.astype(dtype)


def make_decoder_mask(
    decoder_target_tokens: Array,
    dtype: DType = jnp.float32,
    decoder_segment_ids: Optional[Array] = None,
) -> Array:
  """Causal mask over non-padding targets, within segments when packed."""
  masks = [
      make_causal_mask(decoder_target_tokens, dtype=dtype),
      make_attention_mask(
          decoder_target_tokens > 0, decoder_target_tokens > 0, dtype=dtype
      ),
  ]
  if decoder_segment_ids is not None:
    masks.append(
        make_attention_mask(
            decoder_segment_ids, decoder_segment_ids, jnp.equal, dtype=dtype
        )
    )
  return combine_masks(*masks, dtype=dtype)
