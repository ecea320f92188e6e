"""T5X glue for row-sparse training of the memory values (sparse_updates.py).

Importable only where T5X is installed. Two pieces, both chosen in gin
(gin_configs/runs/sparse_bank.gin):

* `LazyRowOptimizer`, a T5X `OptimizerDef` for `memory_bank/values` (and
  `memory_bank/keys` with `SptConfig.key_gradient='sampled'`) alone:
  it takes a `sparse_updates.RowSparse` gradient and updates the retrieved
  rows and their slots (lazy SGD or LazyAdam). Inside T5X's
  `MultiOptimizer` it sits beside the dense optimizer (Adafactor) of every
  other parameter, so checkpoints, partitioning (`derive_logical_axes`: the
  slots are split along `memory` like the values) and learning-rate
  schedules work as for any T5X optimizer.
* `SparseBankTrainer`, T5X's `Trainer` with one change: its step computes
  the gradients with `sparse_updates.value_and_grad`, so that the values'
  gradient reaches the optimizer as the retrieved rows; the [M, P, H]
  gradient is never built. T5X's `Trainer` differentiates `model.loss_fn`
  over the whole tree inside `train_with_lr`, which offers no hook for
  this; the rest (`apply_grads`, metrics, partitioning of the step) is
  T5X's own.

Microbatching (`num_microbatches > 1`) and weight metrics are refused by the
sparse trainer: both assume dense gradients of every parameter.
"""

import functools
from typing import Any, Optional

import flax
from flax import traverse_util
import jax
import jax.numpy as jnp
from t5x import optimizers
from t5x import trainer as t5x_trainer

from spt_jax.checkpoints import spt_params
from spt_jax.optim import sparse_updates


def is_bank_row_param(
    path: str, value: Any = None, sparse_keys: bool = False
) -> bool:
  """`filter_fn` of the lazy row optimizer's `ModelParamTraversal`: the
  values, and the keys with `sparse_keys` (`SptConfig.key_gradient =
  'sampled'`, gin_configs/runs/sampled_keys.gin)."""
  del value
  names = sparse_updates.row_sparse_names(sparse_keys)
  return path.strip('/') in {f'{sparse_updates.BANK}/{n}' for n in names}


def is_dense_param(
    path: str, value: Any = None, sparse_keys: bool = False
) -> bool:
  """Every parameter but the bank's rows: the dense optimizer's traversal."""
  return not is_bank_row_param(path, value, sparse_keys)


def is_dense_spt_param(
    path: str, value: Any = None, sparse_keys: bool = False
) -> bool:
  """The SPT parameters but the bank's rows: the dense traversal of a frozen
  backbone (gin_configs/runs/frozen_backbone.gin)."""
  return spt_params.is_spt_param(path) and not is_bank_row_param(
      path, value, sparse_keys
  )


@flax.struct.dataclass
class _RowHyperParams:
  learning_rate: Optional[float]


class LazyRowOptimizer(optimizers.OptimizerDef):
  """Lazy SGD or LazyAdam of `RowSparse` gradients (sparse_updates.py).

  Only the rows a step retrieved change, values and slots alike; see
  sparse_updates.py for how this differs from dense Adam and Adafactor.
  The learning rate is the run's schedule (`Trainer.learning_rate_fn`),
  which T5X hands every optimizer at every step, as it does Adafactor's.
  """

  def __init__(self, rows: str = 'adam', **row_kwargs):
    """Args:

    rows: 'sgd' or 'adam' (`sparse_updates.ROW_OPTIMIZERS`).
    **row_kwargs: e.g. b1, b2, eps of LazyAdam.
    """
    if rows not in sparse_updates.ROW_OPTIMIZERS:
      raise ValueError(
          f'Unknown row optimizer {rows!r}; expected one of '
          f'{list(sparse_updates.ROW_OPTIMIZERS)}.'
      )
    self.rows = sparse_updates.ROW_OPTIMIZERS[rows](**row_kwargs)
    super().__init__(_RowHyperParams(learning_rate=None))

  def init_state(self, params):
    return optimizers.OptimizerState(
        jnp.asarray(0, jnp.int32), jax.tree.map(self.rows.init, params)
    )

  def apply_gradient(self, hyper_params, params, state, grads):
    if hyper_params.learning_rate is None:
      raise ValueError(
          "LazyRowOptimizer: no learning rate; T5X's trainer passes its "
          "schedule's (apply_gradient(..., learning_rate=...))."
      )
    flat_params = traverse_util.flatten_dict(flax.core.unfreeze(params))
    flat_grads = traverse_util.flatten_dict(flax.core.unfreeze(grads))
    flat_states = traverse_util.flatten_dict(
        flax.core.unfreeze(state.param_states)
    )
    new_params, new_states = {}, {}
    for key, value in flat_params.items():
      grad = flat_grads[key]
      if not isinstance(grad, sparse_updates.RowSparse):
        raise TypeError(
            f'LazyRowOptimizer takes row-sparse gradients; {"/".join(key)} '
            'got a dense one. Train with t5x_sparse.SparseBankTrainer '
            '(gin_configs/runs/sparse_bank.gin).'
        )
      new_params[key], new_states[key] = self.rows.update(
          value, flat_states[key], grad, hyper_params.learning_rate
      )
    new_params = traverse_util.unflatten_dict(new_params)
    new_states = traverse_util.unflatten_dict(new_states)
    if isinstance(params, flax.core.FrozenDict):
      new_params, new_states = flax.core.freeze(new_params), flax.core.freeze(
          new_states
      )
    return new_params, optimizers.OptimizerState(state.step + 1, new_states)

  def derive_logical_axes(self, optimizer, param_logical_axes):
    """Slots [M, P, H] take the values' axes; scalars are replicated."""
    flat_axes = traverse_util.flatten_dict(
        flax.core.unfreeze(param_logical_axes)
    )
    states = traverse_util.unflatten_dict(
        {k: self.rows.state_axes(axes) for k, axes in flat_axes.items()}
    )
    return optimizers.Optimizer(
        optimizer.optimizer_def,
        optimizers.OptimizerState(None, states),
        param_logical_axes,
    )


def sparse_train_with_lr(
    train_state,
    batch,
    learning_rate,
    dropout_rng,
    model,
    sparse_keys: bool = False,
):
  """T5X's `train_with_lr` with the values' (and keys') gradient row-sparse."""
  spt = model.module.spt
  (_, metrics), grads = sparse_updates.value_and_grad(
      lambda params, other: model.loss_and_retrieval(
          params, batch, dropout_rng, other
      ),
      train_state.params,
      top_k=spt.top_k,
      batch_size=batch['encoder_input_tokens'].shape[0],
      key_samples=spt.key_samples if sparse_keys else None,
  )
  return t5x_trainer.apply_grads(
      train_state, grads, metrics, learning_rate, weight_metrics_computer=None
  )


class SparseBankTrainer(t5x_trainer.Trainer):
  """T5X's `Trainer`, differentiating the memory values row-sparse.

  Pair it with an optimizer that gives `memory_bank/values` to a
  `LazyRowOptimizer` (gin_configs/runs/sparse_bank.gin).
  """

  def __init__(self, *args, sparse_keys: bool = False, **kwargs):
    """As T5X's `Trainer`; `sparse_keys` also differentiates the keys
    row-sparse (with `SptConfig.key_gradient='sampled'`)."""
    super().__init__(*args, **kwargs)
    self._sparse_keys = sparse_keys
    key_gradient = self._model.module.spt.key_gradient
    if sparse_keys and key_gradient != 'sampled':
      raise ValueError(
          'SparseBankTrainer.sparse_keys needs SptConfig.key_gradient = '
          f"'sampled' (got {key_gradient!r}): dense keys' gradients reach "
          'every memory (gin_configs/runs/sampled_keys.gin sets both).'
      )
    if self._num_microbatches is not None and self._num_microbatches > 1:
      raise ValueError(
          'SparseBankTrainer does not accumulate microbatches; set '
          'num_microbatches = None.'
      )
    if self._weight_metrics_computer is not None:
      raise ValueError(
          'SparseBankTrainer: weight metrics need dense gradients of every '
          'parameter; leave weight_metrics_computer unset.'
      )

  @functools.cached_property
  def _partitioned_train_step(self):
    def train_step(train_state, batch):
      return sparse_train_with_lr(
          train_state,
          batch,
          learning_rate=self._learning_rate_fn(train_state.step),
          dropout_rng=self._get_step_rng(train_state.step),
          model=self._model,
          sparse_keys=self._sparse_keys,
      )

    return self._partitioner.partition(
        train_step,
        in_axis_resources=(
            self._train_state_axes,
            self._partitioner.data_partition_spec,
        ),
        out_axis_resources=(self._train_state_axes, None),
        donate_argnums=(0,),
    )
