"""T5X glue: SPT as a T5X `EncoderDecoderModel`, and its gin helpers.

Importable only where T5X is installed (it is not on PyPI).
`SptEncoderDecoderModel` is T5X's encoder-decoder model with two changes:

* its training loss is `models.spt_loss`, the local runner's loss: T5X's
  cross entropy plus SPT's auxiliary losses, weighted by constructor
  arguments (as T5X's mixture-of-experts model weights its router losses);
* its rank-classification scores are `models.sequence_scores`, the local
  runner's;
* its feature converter carries the discrete prompt inside the encoder
  tokens (`models.feature_converter_cls`), so T5X's own decoding and beam
  search retrieve with it unchanged.
"""

from typing import Mapping, Optional, Tuple

from clu import metrics as clu_metrics
import flax
import jax
import jax.numpy as jnp
from t5x import adafactor
from t5x import models

from spt_jax import models as spt_models
from spt_jax import spt_params

# Factoring of Adafactor's second moments for SPT's logical axes: values
# [memory, memory_length, embed] are factored per memory, keys are not.
SPT_FACTOR_RULES = {
    'memory': adafactor.FactorDim.BATCH,
    'memory_length': adafactor.FactorDim.COLUMN,
    'memory_embed': adafactor.FactorDim.ROW,
    'prompt': adafactor.FactorDim.COLUMN,
}

# Parameters that a checkpoint without SPT lacks (a pretrained T5).
SPT_PARAMS_PATTERN = rf'^.*({"|".join(spt_params.SPT_PARAM_GROUPS)}).*$'


def logical_factor_rules():
  """T5X's standard Adafactor factor rules plus SPT's axes."""
  rules = flax.core.unfreeze(adafactor.standard_logical_factor_rules())
  rules.update(SPT_FACTOR_RULES)
  return flax.core.freeze(rules)


def spt_assignment_map(restore_spt_params: bool):
  """`RestoreCheckpointConfig.assignment_map` for SPT's parameters.

  Args:
    restore_spt_params: True to take the memory bank and soft prompt from the
      checkpoint (a converted checkpoint, or an earlier SPT stage); False to
      start them from their initialisers and restore only the backbone.

  Returns:
    `()` (restore everything) or a map of SPT's parameters to None.
  """
  return () if restore_spt_params else ((SPT_PARAMS_PATTERN, None),)


class SptEncoderDecoderModel(models.EncoderDecoderModel):
  """`EncoderDecoderModel` with SPT's loss and discrete-prompt layout."""

  def __init__(
      self,
      module,
      input_vocabulary,
      output_vocabulary,
      optimizer_def,
      *,
      pull_loss_weight: float = spt_models.PULL_LOSS_WEIGHT,
      balance_loss_weight: float = spt_models.BALANCE_LOSS_WEIGHT,
      **kwargs,
  ):
    """As `EncoderDecoderModel`, plus the auxiliary loss weights.

    Args:
      module: an `SptTransformer`.
      input_vocabulary: as in T5X.
      output_vocabulary: as in T5X.
      optimizer_def: as in T5X.
      pull_loss_weight: weight of the key-query pull loss.
      balance_loss_weight: weight of the memory-usage balance loss.
      **kwargs: other `EncoderDecoderModel` arguments (`z_loss`,
        `loss_normalizing_factor`, `decode_fn`, ...). A `feature_converter_cls`
        is refused: the layout must match the network's `prompt_length`.
    """
    if kwargs.get('feature_converter_cls') is not None:
      raise ValueError(
          'SptEncoderDecoderModel builds its feature converter from the '
          "network's prompt_length; do not set feature_converter_cls.")
    kwargs['feature_converter_cls'] = spt_models.feature_converter_cls(module)
    super().__init__(
        module, input_vocabulary, output_vocabulary, optimizer_def, **kwargs)
    self.aux_loss_weights = {
        'pull_loss': pull_loss_weight,
        'balance_loss': balance_loss_weight,
    }

  def loss_fn(
      self,
      params,
      batch: Mapping[str, jnp.ndarray],
      dropout_rng: Optional[jax.Array],
  ) -> Tuple[jnp.ndarray, Mapping[str, clu_metrics.Metric]]:
    loss, (metrics, _) = self.loss_and_retrieval(params, batch, dropout_rng)
    return loss, metrics

  def loss_and_retrieval(
      self,
      params,
      batch: Mapping[str, jnp.ndarray],
      dropout_rng: Optional[jax.Array],
      other_variables=None,
  ):
    """`loss_fn`, plus the retrieved memory ids [B, k] (None without a bank).

    The row-sparse training path (`t5x_sparse.SparseBankTrainer`) passes the
    zero perturbation of the retrieved rows in `other_variables`.
    """
    logits, sown = self._compute_logits(
        params, batch, dropout_rng, mutable=['losses', 'intermediates'],
        other_variables=other_variables,
    )
    loss, terms = spt_models.spt_loss(
        logits, batch, sown.get('losses', {}),
        aux_loss_weights=self.aux_loss_weights,
        label_smoothing=self._label_smoothing,
        z_loss=self._z_loss,
        loss_normalizing_factor=self._loss_normalizing_factor,
    )
    segment_ids = {
        k: v != 0
        for k, v in batch.items()
        if k in ('encoder_input_tokens', 'decoder_target_tokens')
    }
    metrics = dict(
        self._compute_metrics(
            logits=logits,
            targets=batch['decoder_target_tokens'],
            mask=terms['weights'],
            loss=loss,
            z_loss=terms['z_loss'],
            segment_ids=segment_ids,
        )
    )
    for name in self.aux_loss_weights:
      if name in terms:
        metrics[f'spt/{name}'] = clu_metrics.Average.from_model_output(
            terms[name])
    return loss, (metrics, spt_models.retrieval_indices(sown))

  def score_batch(
      self,
      params,
      batch: Mapping[str, jnp.ndarray],
      return_intermediates: bool = False,
  ):
    """Summed target log-likelihood [B]; with `return_intermediates`, also
    what the network sowed (`retrieval_indices`, `retrieval_scores`)."""
    if not return_intermediates:
      return spt_models.sequence_scores(
          self._compute_logits(params, batch), batch)
    logits, variables = self._compute_logits(
        params, batch, mutable=['intermediates'])
    return (spt_models.sequence_scores(logits, batch),
            flax.core.unfreeze(variables.get('intermediates', {})))
