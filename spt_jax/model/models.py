"""SPT's training loss, rank-classification scores and decoding.

One implementation serves both runners: `SptModel` is the local runner's
model, and `t5x_models.SptEncoderDecoderModel` (T5X's `EncoderDecoderModel`)
computes its loss with the same `spt_loss`. Batches are dicts of the features
of `spt_jax.model.feature_converters.SptEncDecFeatureConverter`:

  encoder_input_tokens   [B, T + T_p] int32 (input, then the discrete prompt)
  decoder_input_tokens   [B, L] int32
  decoder_target_tokens  [B, L] int32
  decoder_loss_weights   [B, L] (0 on padding)

The loss follows T5X's conventions (`t5x.losses`): a token cross entropy with
label smoothing and z-loss, summed and divided by `loss_normalizing_factor`
(None, a number, or one of `LOSS_NORMALIZING_FACTORS`), plus SPT's auxiliary
losses, which the network sows unweighted and the model weights. Each
auxiliary loss counts as much per target token as the mean token cross
entropy does, whatever the normalisation.
"""

import functools
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from spt_jax.model import network

Array = jax.Array
Batch = Mapping[str, Array]
Params = Any
LossNormalizingFactor = Optional[Union[float, int, str]]

# Weights of the key-query pull loss (a mean over the B x k pairs; see
# `retrieval.pull_loss` for L2P's sum) and the usage balance loss, relative
# to the mean token cross entropy (the defaults of both model classes).
PULL_LOSS_WEIGHT = 0.1
BALANCE_LOSS_WEIGHT = 0.01

# Both runners' training metrics: T5X's (`loss`, `cross_ent_loss`, `z_loss`,
# `accuracy`), and SPT's under this prefix: `pull_loss` and `balance_loss`
# unweighted, `aux_loss` their weighted share of `loss`.
AUX_METRICS_PREFIX = 'spt/'

# T5X's `SpecialLossNormalizingFactor` names (packing aside, which SPT
# refuses): divide the summed loss by the number of real target tokens, by all
# target positions, or average per sequence first.
LOSS_NORMALIZING_FACTORS = (
    'NUM_REAL_TARGET_TOKENS',
    'NUM_TOTAL_TARGET_TOKENS',
    'AVERAGE_PER_SEQUENCE',
)


def loss_normalizing_factor_and_weights(
    loss_normalizing_factor: LossNormalizingFactor, batch: Batch
) -> Tuple[Optional[Union[float, Array]], Array]:
  """The loss divisor and per-token weights [B, L], as T5X computes them.

  Args:
    loss_normalizing_factor: None (no division), a number, or a name from
      `LOSS_NORMALIZING_FACTORS` (T5X's enum members are accepted by name).
    batch: needs `decoder_target_tokens`; `decoder_loss_weights` if present.

  Returns:
    The divisor (None, a Python number, or a traced scalar) and float32
    weights.
  """
  targets = batch['decoder_target_tokens']
  weights = batch.get('decoder_loss_weights')
  weights = jnp.asarray(
      targets > 0 if weights is None else weights, jnp.float32
  )
  name = getattr(loss_normalizing_factor, 'name', loss_normalizing_factor)
  if name is None or not isinstance(name, str):
    return loss_normalizing_factor, weights
  if name == 'NUM_REAL_TARGET_TOKENS':
    return jnp.sum(weights), weights
  if name == 'NUM_TOTAL_TARGET_TOKENS':
    return float(np.prod(targets.shape)), weights
  if name == 'AVERAGE_PER_SEQUENCE':
    per_sequence = jnp.sum(weights, axis=-1, keepdims=True)
    weights = jnp.where(
        per_sequence > 0, weights / jnp.maximum(per_sequence, 1e-9), 0.0
    )
    return jnp.sum(weights), weights
  raise ValueError(
      f'Unknown loss_normalizing_factor {loss_normalizing_factor!r}; expected '
      f'None, a number, or one of {LOSS_NORMALIZING_FACTORS}.'
  )


def token_cross_entropy(
    logits: Array,
    targets: Array,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
) -> Tuple[Array, Array]:
  """Per-token loss [B, L] (z-loss included) and z-loss [B, L], as T5X's.

  With label smoothing the targets put 1 - s on the label and s / (V - 1)
  elsewhere, and the smoothed targets' entropy is subtracted so that a
  perfect prediction costs 0.
  """
  logits = logits.astype(jnp.float32)
  vocab_size = logits.shape[-1]
  log_z = jax.nn.logsumexp(logits, axis=-1)
  log_probs = logits - log_z[..., None]
  target_log_probs = jnp.take_along_axis(log_probs, targets[..., None], -1)[
      ..., 0
  ]
  if label_smoothing:
    confidence = 1.0 - label_smoothing
    low = label_smoothing / max(vocab_size - 1, 1)
    entropy = -(
        confidence * np.log(confidence)
        + (vocab_size - 1) * low * np.log(low + 1e-20)
    )
    loss = (
        -(confidence - low) * target_log_probs
        - low * jnp.sum(log_probs, axis=-1)
        - entropy
    )
  else:
    loss = -target_log_probs
  z = z_loss * jnp.square(log_z)
  return loss + z, z


def spt_loss(
    logits: Array,
    batch: Batch,
    aux_losses: Mapping[str, Array],
    *,
    aux_loss_weights: Mapping[str, float],
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    loss_normalizing_factor: LossNormalizingFactor = None,
) -> Tuple[Array, Dict[str, Array]]:
  """The training loss: weighted cross entropy + weighted auxiliary losses.

  Args:
    logits: [B, L, V].
    batch: the targets and their weights.
    aux_losses: scalar losses the network sowed (`pull_loss`, ...).
    aux_loss_weights: weight of each; a loss without weight is left out.
    label_smoothing: as in T5X.
    z_loss: weight of the log-partition regulariser, as in T5X.
    loss_normalizing_factor: see `loss_normalizing_factor_and_weights`.

  Returns:
    The scalar loss and its terms, normalised as the loss is:
    `cross_ent_loss` (the token cross entropy alone), `z_loss`, `aux_loss`
    (the weighted auxiliary losses' share of the loss, so that `loss =
    cross_ent_loss + z_loss + aux_loss`, as T5X's mixture-of-experts model
    splits its loss); per weighted auxiliary loss, its unweighted value;
    `weight_sum` and `weights` [B, L].
  """
  factor, weights = loss_normalizing_factor_and_weights(
      loss_normalizing_factor, batch
  )
  token_loss, token_z = token_cross_entropy(
      logits, batch['decoder_target_tokens'], label_smoothing, z_loss
  )
  weight_sum = jnp.sum(weights)
  divisor = 1.0 if factor is None else factor
  cross_entropy_and_z = jnp.sum(token_loss * weights) / divisor
  z = jnp.sum(token_z * weights) / divisor
  terms = {
      'cross_ent_loss': cross_entropy_and_z - z,
      'z_loss': z,
      'weight_sum': weight_sum,
      'weights': weights,
  }
  # The cross entropy counts weight_sum / divisor tokens' worth of loss.
  tokens_per_loss_unit = weight_sum / divisor
  aux_loss = jnp.zeros((), jnp.float32)
  for name, value in aux_losses.items():
    weight = aux_loss_weights.get(name, 0.0)
    if weight:
      terms[name] = value
      aux_loss = aux_loss + weight * value * tokens_per_loss_unit
  terms['aux_loss'] = aux_loss
  return cross_entropy_and_z + aux_loss, terms


def token_scores(logits: Array, batch: Batch) -> Array:
  """Target log-likelihood per token [B, L] of logits [B, L, V], 0 on padding."""
  targets = batch['decoder_target_tokens']
  weights = batch.get('decoder_loss_weights', targets > 0)
  token_loss, _ = token_cross_entropy(logits, targets)
  return -token_loss * jnp.asarray(weights, jnp.float32)


def sequence_scores(logits: Array, batch: Batch) -> Array:
  """Summed target log-likelihood [B] of logits [B, L, V], for rank classification."""
  return jnp.sum(token_scores(logits, batch), axis=-1)


def retrieved_ids(collections: Mapping[str, Any]) -> Optional[Dict[str, Array]]:
  """The memory ids a forward pass gathered, None without a bank.

  `indices` [B, k] the retrieved memories and, with
  `SptConfig.key_gradient='sampled'`, `sampled_key_indices` [S] the keys
  drawn for the balance loss (the rows the row-sparse path updates).
  """
  sown = collections.get('intermediates', {})
  if 'retrieval_indices' not in sown:
    return None
  ids = {'indices': sown['retrieval_indices'][0]}
  sampled = sown.get('memory_bank', {}).get('sampled_key_indices')
  if sampled is not None:
    ids['sampled_key_indices'] = sampled[0]
  return ids


def loss_with_retrieval(
    compute_logits: Callable[..., Tuple[Array, Mapping[str, Any]]],
    params: Params,
    batch: Batch,
    dropout_rng: Optional[Array],
    other_variables: Optional[Mapping[str, Any]],
    **loss_settings: Any,
) -> Tuple[Array, Array, Dict[str, Array], Optional[Dict[str, Array]]]:
  """The forward pass and `spt_loss` that both models' `loss_and_retrieval` run.

  Args:
    compute_logits: the model's `(params, batch, dropout_rng, mutable=,
      other_variables=)` -> (logits, collections).
    params: the parameters.
    batch: the model features.
    dropout_rng: the dropout key, or None for no dropout.
    other_variables: extra variable collections (the row-sparse path's zero
      perturbation of the retrieved rows).
    **loss_settings: `spt_loss`'s keyword settings.

  Returns:
    (logits, loss, the loss terms of `spt_loss`, `retrieved_ids`); each model
    reports the terms as its runner's metrics.
  """
  logits, collections = compute_logits(
      params,
      batch,
      dropout_rng,
      mutable=['losses', 'intermediates'],
      other_variables=other_variables,
  )
  loss, terms = spt_loss(
      logits, batch, collections.get('losses', {}), **loss_settings
  )
  return logits, loss, terms, retrieved_ids(collections)


def feature_converter_cls(module: network.SptTransformer):
  """The feature converter that lays batches out for `module`."""
  # Imported here: the network, loss and training step need neither seqio nor
  # TensorFlow (an accelerator image without them runs the benchmarks).
  from spt_jax.model import feature_converters  # pylint: disable=g-import-not-at-top

  return functools.partial(
      feature_converters.SptEncDecFeatureConverter,
      prompt_length=module.spt.prompt_length,
  )


class SptModel:
  """The local runner's model: loss, scores and greedy decoding.

  Attributes:
    module: the network.
    FEATURE_CONVERTER_CLS: builds the feature converter for `module`'s batch
      layout (its discrete-prompt length), as T5X models do.
  """

  def __init__(
      self,
      module: network.SptTransformer,
      *,
      z_loss: float = 1e-4,
      label_smoothing: float = 0.0,
      loss_normalizing_factor: LossNormalizingFactor = 'NUM_REAL_TARGET_TOKENS',
      pull_loss_weight: float = PULL_LOSS_WEIGHT,
      balance_loss_weight: float = BALANCE_LOSS_WEIGHT,
  ):
    self.module = module
    self.z_loss = z_loss
    self.label_smoothing = label_smoothing
    self.loss_normalizing_factor = loss_normalizing_factor
    self.aux_loss_weights = {
        'pull_loss': pull_loss_weight,
        'balance_loss': balance_loss_weight,
    }

  @property
  def FEATURE_CONVERTER_CLS(self):  # pylint: disable=invalid-name
    # A property: built on first use, so that training and benchmarks need
    # no seqio (see `feature_converter_cls`).
    return feature_converter_cls(self.module)

  def get_initial_variables(
      self, rng: Array, input_shapes: Mapping[str, Tuple[int, ...]]
  ) -> Dict[str, Any]:
    """`params` and `params_axes` for batches of the given feature shapes."""

    def ones(name):
      return jnp.ones(input_shapes[name], jnp.int32)

    variables = self.module.init(
        rng,
        ones('encoder_input_tokens'),
        ones('decoder_input_tokens'),
        ones('decoder_target_tokens'),
        decode=False,
        enable_dropout=False,
    )
    return dict(variables)

  def compute_logits(
      self,
      params: Params,
      batch: Batch,
      dropout_rng: Optional[Array] = None,
      mutable=False,
      other_variables: Optional[Mapping[str, Any]] = None,
  ):
    """Teacher-forced logits [B, L, V] (and mutated collections if asked).

    `other_variables`: collections besides `params` (the `perturbations` of
    the row-sparse training path), as T5X's `_compute_logits` takes them.
    """
    return self.module.apply(
        {'params': params, **(other_variables or {})},
        batch['encoder_input_tokens'],
        batch['decoder_input_tokens'],
        batch['decoder_target_tokens'],
        enable_dropout=dropout_rng is not None,
        rngs={'dropout': dropout_rng} if dropout_rng is not None else None,
        mutable=mutable,
    )

  def loss_fn(
      self, params: Params, batch: Batch, dropout_rng: Optional[Array]
  ) -> Tuple[Array, Dict[str, Array]]:
    """`spt_loss` of a batch.

    Returns:
      The scalar loss and a dict of metrics named as under T5X
      (`AUX_METRICS_PREFIX`).
    """
    loss, (metrics, _) = self.loss_and_retrieval(params, batch, dropout_rng)
    return loss, metrics

  def loss_and_retrieval(
      self,
      params: Params,
      batch: Batch,
      dropout_rng: Optional[Array],
      other_variables: Optional[Mapping[str, Any]] = None,
  ) -> Tuple[Array, Tuple[Dict[str, Array], Optional[Array]]]:
    """`loss_fn`, plus the gathered memory ids (`retrieved_ids`).

    The row-sparse training path (sparse_updates.value_and_grad) passes the
    zero perturbation of the retrieved rows in `other_variables`.
    """
    logits, loss, terms, ids = loss_with_retrieval(
        self.compute_logits,
        params,
        batch,
        dropout_rng,
        other_variables,
        aux_loss_weights=self.aux_loss_weights,
        label_smoothing=self.label_smoothing,
        z_loss=self.z_loss,
        loss_normalizing_factor=self.loss_normalizing_factor,
    )
    weights = terms['weights']
    targets = batch['decoder_target_tokens']
    metrics = {
        'loss': loss,
        'cross_ent_loss': terms['cross_ent_loss'],
        'z_loss': terms['z_loss'],
        'accuracy': jnp.sum((jnp.argmax(logits, -1) == targets) * weights)
        / jnp.maximum(terms['weight_sum'], 1.0),
        **{
            f'{AUX_METRICS_PREFIX}{name}': terms[name]
            for name in (*self.aux_loss_weights, 'aux_loss')
            if name in terms
        },
    }
    return loss, (metrics, ids)

  def score_batch(self, params: Params, batch: Batch) -> Array:
    """Summed target log-likelihood [B], for rank classification."""
    return sequence_scores(self.compute_logits(params, batch), batch)

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
    )

    def step(carry, unused_index):
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
