"""T5X glue: an `EncoderDecoderModel` that adds SPT's auxiliary losses.

Importable only where T5X is installed (it is not on PyPI). The plain
`t5x.models.EncoderDecoderModel(module=SptTransformer(...))` trains SPT too;
this subclass also adds the pull and balance losses the network sows into the
`losses` collection, scaled so that each counts as much per target token as in
the local runner's mean-token loss.
"""

from typing import Mapping, Optional, Tuple

from clu import metrics as clu_metrics
import flax
import jax
import jax.numpy as jnp
from t5x import adafactor
from t5x import losses
from t5x import models

# Factoring of Adafactor's second moments for SPT's logical axes: values
# [memory, memory_length, embed] are factored per memory, keys are not.
SPT_FACTOR_RULES = {
    'memory': adafactor.FactorDim.BATCH,
    'memory_length': adafactor.FactorDim.COLUMN,
    'memory_embed': adafactor.FactorDim.ROW,
    'prompt': adafactor.FactorDim.COLUMN,
}


def logical_factor_rules():
  """T5X's standard Adafactor factor rules plus SPT's axes."""
  rules = flax.core.unfreeze(adafactor.standard_logical_factor_rules())
  rules.update(SPT_FACTOR_RULES)
  return flax.core.freeze(rules)


class SptEncoderDecoderModel(models.EncoderDecoderModel):
  """`EncoderDecoderModel` whose training loss includes SPT's auxiliary losses."""

  def loss_fn(
      self,
      params,
      batch: Mapping[str, jnp.ndarray],
      dropout_rng: Optional[jax.Array],
  ) -> Tuple[jnp.ndarray, Mapping[str, clu_metrics.Metric]]:
    logits, sown = self._compute_logits(
        params, batch, dropout_rng, mutable=['losses']
    )
    loss_normalizing_factor, weights = (
        losses.get_loss_normalizing_factor_and_weights(
            self._loss_normalizing_factor, batch
        )
    )
    targets = batch['decoder_target_tokens']
    loss, z_loss, weight_sum = losses.compute_weighted_cross_entropy(
        logits,
        targets=targets,
        weights=weights,
        label_smoothing=self._label_smoothing,
        z_loss=self._z_loss,
        loss_normalizing_factor=loss_normalizing_factor,
    )
    tokens_per_loss_unit = weight_sum / (loss_normalizing_factor or 1.0)
    aux_losses = sown.get('losses', {})
    for value in aux_losses.values():
      loss = loss + value * tokens_per_loss_unit
    segment_ids = {
        k: v != 0
        for k, v in batch.items()
        if k in ('encoder_input_tokens', 'decoder_target_tokens')
    }
    metrics = dict(
        self._compute_metrics(
            logits=logits,
            targets=targets,
            mask=weights,
            loss=loss,
            z_loss=z_loss,
            segment_ids=segment_ids,
        )
    )
    for name, value in aux_losses.items():
      metrics[f'spt/{name}'] = clu_metrics.Average.from_model_output(value)
    return loss, metrics
