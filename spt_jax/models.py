"""Loss, scoring and decoding around `SptTransformer`, for the local runner.

The shape of T5X's `EncoderDecoderModel` without T5X: batches are dicts of the
seqio `EncDecFeatureConverter` features, plus the optional discrete-prompt
feature `encoder_prompt_tokens`:

  encoder_input_tokens   [B, T] int32
  decoder_input_tokens   [B, L] int32
  decoder_target_tokens  [B, L] int32
  decoder_loss_weights   [B, L] (0 on padding)
  encoder_prompt_tokens  [B, T_p] int32, optional

The training loss adds the SPT auxiliary losses the network sows into the
`losses` collection.
"""

from typing import Any, Dict, Mapping, Optional, Tuple

import jax
from jax import lax
import jax.numpy as jnp

from spt_jax import network

Array = jax.Array
Batch = Mapping[str, Array]
Params = Any


def prompt_kwargs(batch: Batch) -> Dict[str, Array]:
  """The optional discrete-prompt feature of a batch, as network keywords."""
  if 'encoder_prompt_tokens' in batch:
    return {'encoder_prompt_tokens': batch['encoder_prompt_tokens']}
  return {}


def token_cross_entropy(
    logits: Array, targets: Array, z_loss: float = 0.0
) -> Tuple[Array, Array]:
  """Per-token cross entropy [B, L] and z-loss [B, L] from logits [B, L, V]."""
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return log_z - target_logits, z_loss * jnp.square(log_z)


class SptModel:
  """Training loss, rank-classification scores and greedy decoding.

  Attributes:
    module: the network.
    z_loss: weight of the log-partition regulariser, as in T5X.
  """

  def __init__(self, module: network.SptTransformer, z_loss: float = 1e-4):
    self.module = module
    self.z_loss = z_loss

  def get_initial_variables(
      self,
      rng: Array,
      input_shapes: Mapping[str, Tuple[int, ...]],
  ) -> Dict[str, Any]:
    """`params` and `params_axes` for batches of the given feature shapes."""
    def ones(name):
      return jnp.ones(input_shapes[name], jnp.int32)

    kwargs = {}
    if 'encoder_prompt_tokens' in input_shapes:
      kwargs['encoder_prompt_tokens'] = ones('encoder_prompt_tokens')
    variables = self.module.init(
        rng,
        ones('encoder_input_tokens'),
        ones('decoder_input_tokens'),
        ones('decoder_target_tokens'),
        decode=False,
        enable_dropout=False,
        **kwargs,
    )
    return dict(variables)

  def compute_logits(
      self,
      params: Params,
      batch: Batch,
      dropout_rng: Optional[Array] = None,
      mutable=False,
  ):
    """Teacher-forced logits [B, L, V] (and mutated collections if asked)."""
    return self.module.apply(
        {'params': params},
        batch['encoder_input_tokens'],
        batch['decoder_input_tokens'],
        batch['decoder_target_tokens'],
        enable_dropout=dropout_rng is not None,
        rngs={'dropout': dropout_rng} if dropout_rng is not None else None,
        mutable=mutable,
        **prompt_kwargs(batch),
    )

  def loss_fn(
      self, params: Params, batch: Batch, dropout_rng: Optional[Array]
  ) -> Tuple[Array, Dict[str, Array]]:
    """Mean token cross entropy + z-loss + SPT auxiliary losses.

    Returns:
      The scalar loss and a dict of metrics (`cross_entropy`, `accuracy`,
      `z_loss`, and each auxiliary loss).
    """
    logits, collections = self.compute_logits(
        params, batch, dropout_rng, mutable=['losses']
    )
    targets = batch['decoder_target_tokens']
    weights = batch.get('decoder_loss_weights', (targets > 0).astype(jnp.float32))
    weights = weights.astype(jnp.float32)
    denominator = jnp.maximum(jnp.sum(weights), 1.0)
    cross_entropy, z_loss = token_cross_entropy(logits, targets, self.z_loss)
    metrics = {
        'cross_entropy': jnp.sum(cross_entropy * weights) / denominator,
        'z_loss': jnp.sum(z_loss * weights) / denominator,
        'accuracy': jnp.sum((jnp.argmax(logits, -1) == targets) * weights)
        / denominator,
    }
    aux_losses = collections.get('losses', {})
    for name, value in aux_losses.items():
      metrics[name] = value
    loss = metrics['cross_entropy'] + metrics['z_loss'] + sum(
        aux_losses.values(), jnp.zeros((), jnp.float32)
    )
    metrics['loss'] = loss
    return loss, metrics

  def score_batch(self, params: Params, batch: Batch) -> Array:
    """Summed target log-likelihood [B], for rank classification."""
    logits = self.compute_logits(params, batch)
    targets = batch['decoder_target_tokens']
    weights = batch.get('decoder_loss_weights', targets > 0)
    cross_entropy, _ = token_cross_entropy(logits, targets)
    return -jnp.sum(cross_entropy * weights.astype(jnp.float32), axis=-1)

  def predict_batch(
      self,
      params: Params,
      batch: Batch,
      max_decode_length: Optional[int] = None,
      eos_id: int = 1,
  ) -> Array:
    """Greedy decoding with the key/value cache; [B, L] ids, 0 after EOS."""
    encoder_tokens = batch['encoder_input_tokens']
    length = max_decode_length or batch['decoder_target_tokens'].shape[1]
    batch_size = encoder_tokens.shape[0]
    encoded = self.module.apply(
        {'params': params},
        encoder_tokens,
        enable_dropout=False,
        method=self.module.encode,
        **prompt_kwargs(batch),
    )
    shape = (batch_size, length)
    _, initial = self.module.apply(
        {'params': params},
        encoder_input_tokens=jnp.ones_like(encoder_tokens),
        decoder_input_tokens=jnp.ones(shape, jnp.int32),
        decoder_target_tokens=jnp.ones(shape, jnp.int32),
        mutable=['cache'],
        decode=True,
        enable_dropout=False,
        **prompt_kwargs(batch),
    )

    def step(carry, index):
      cache, previous, done = carry
      ids = previous[:, None]
      logits, variables = self.module.apply(
          {'params': params, 'cache': cache},
          encoded,
          encoder_tokens,
          ids,
          ids,
          enable_dropout=False,
          decode=True,
          max_decode_length=length,
          mutable=['cache'],
          method=self.module.decode,
      )
      token = jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)
      token = jnp.where(done, 0, token)
      return (variables['cache'], token, done | (token == eos_id)), token

    start = jnp.zeros((batch_size,), jnp.int32)
    done = jnp.zeros((batch_size,), bool)
    _, tokens = lax.scan(
        step, (initial['cache'], start, done), jnp.arange(length)
    )
    return tokens.T
