"""T5X glue: SPT as a T5X `EncoderDecoderModel`, and its gin helpers.

Importable only where T5X is installed (it is not on PyPI).
`SptEncoderDecoderModel` is T5X's encoder-decoder model with four changes:

* its training loss is `models.spt_loss`, the local runner's loss: T5X's
  cross entropy plus SPT's auxiliary losses, weighted by constructor
  arguments (as T5X's mixture-of-experts model weights its router losses);
* its metrics split that loss as the mixture-of-experts model does:
  `cross_ent_loss` is the token cross entropy alone, and `spt/aux_loss`
  (the weighted auxiliary losses), `spt/pull_loss` and `spt/balance_loss`
  (unweighted) sit beside it, under the names the local runner writes;
* its rank-classification scores are `models.sequence_scores`, the local
  runner's, and `score_batch`'s intermediates add what the network sowed
  (`retrieval_indices`, `retrieval_scores`) to T5X's own;
* its feature converter carries the discrete prompt inside the encoder
  tokens (`models.feature_converter_cls`), so T5X's own decoding and beam
  search retrieve with it unchanged.

`logical_factor_rules` gives T5X's Adafactor the factoring the local runner's
uses (spt_jax/optim/adafactor.py): the memory bank per memory.
"""

from typing import Mapping, Optional, Tuple

from clu import metrics as clu_metrics
import flax
import jax
import jax.numpy as jnp
from t5x import adafactor
from t5x import metrics as metrics_lib
from t5x import models

from spt_jax.checkpoints import spt_params
from spt_jax.model import models as spt_models
from spt_jax.optim import adafactor as spt_adafactor

# Parameters that a checkpoint without SPT lacks (a pretrained T5).
SPT_PARAMS_PATTERN = rf'^.*({"|".join(spt_params.SPT_PARAM_GROUPS)}).*$'


def logical_factor_rules():
  """T5X's standard Adafactor factor rules, with the local runner's table
  (`spt_jax.optim.adafactor.LOGICAL_FACTOR_RULES`, SPT's axes included) on top.
  """
  rules = flax.core.unfreeze(adafactor.standard_logical_factor_rules())
  rules.update(spt_adafactor.LOGICAL_FACTOR_RULES)
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
          "network's prompt_length; do not set feature_converter_cls."
      )
    kwargs['feature_converter_cls'] = spt_models.feature_converter_cls(module)
    super().__init__(
        module, input_vocabulary, output_vocabulary, optimizer_def, **kwargs
    )
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
    """`loss_fn`, plus the gathered memory ids (`models.retrieved_ids`).

    The row-sparse training path (`spt_jax.t5x_ext.sparse.SparseBankTrainer`) passes the
    zero perturbation of the retrieved rows in `other_variables`.
    """
    logits, loss, terms, ids = spt_models.loss_with_retrieval(
        self._compute_logits,
        params,
        batch,
        dropout_rng,
        other_variables,
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
    # As T5X's mixture-of-experts model: the cross entropy without the
    # auxiliary losses, which are reported beside it.
    num_tokens = batch['decoder_target_tokens'].size
    metrics['cross_ent_loss'] = metrics_lib.AveragePerStep(
        total=terms['cross_ent_loss']
    )
    metrics['cross_ent_loss_per_all_target_tokens'] = clu_metrics.Average(
        total=jnp.sum(terms['cross_ent_loss']), count=num_tokens
    )
    prefix = spt_models.AUX_METRICS_PREFIX
    for name in (*self.aux_loss_weights, 'aux_loss'):
      if name in terms:
        metrics[f'{prefix}{name}'] = metrics_lib.AveragePerStep(
            total=terms[name]
        )
    return loss, (metrics, ids)

  def score_batch(
      self,
      params,
      batch: Mapping[str, jnp.ndarray],
      return_intermediates: bool = False,
  ):
    """Summed target log-likelihood [B]; with `return_intermediates`, also
    T5X's intermediates (`decoder`: `target_tokens`, `loss_weights`,
    `token_scores`) and what the network sowed (`retrieval_indices`,
    `retrieval_scores`)."""
    if not return_intermediates:
      return spt_models.sequence_scores(
          self._compute_logits(params, batch), batch
      )
    logits, variables = self._compute_logits(
        params, batch, mutable=['intermediates']
    )
    intermediates = flax.core.unfreeze(variables.get('intermediates', {}))
    token_scores = spt_models.token_scores(logits, batch)
    # Singleton tuples, as every sown value (one per instantiation).
    intermediates.setdefault('decoder', {}).update(
        target_tokens=(batch['decoder_target_tokens'],),
        loss_weights=(batch['decoder_loss_weights'],),
        token_scores=(token_scores,),
    )
    return token_scores.sum(-1), intermediates
