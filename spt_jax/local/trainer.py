"""Train state, optimizers and the sharded training step of the local runner.

Parameters and optimizer state are laid out on a ('data', 'model') mesh by the
logical axis rules (see partitioning.py); batches are split along `data`. The
frozen-backbone setting (`trainable='spt_only'`) trains only the SPT
parameters (memory bank and soft prompt): the optimizer sees that subtree
alone, so the backbone gets no optimizer state, no gradient and no update,
as under T5X's `MultiOptimizer` (gin_configs/runs/frozen_backbone.gin).
With a `sparse_updates.SparseBankOptimizer` (gin_configs/local/sparse_bank.gin)
the memory bank's values are differentiated and updated row-sparse.
"""

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax
import flax.linen as nn
from flax.linen import partitioning as nn_partitioning
import jax
import jax.numpy as jnp
import optax

from spt_jax.checkpoints import spt_params
from spt_jax.model import models
from spt_jax.model import partitioning
from spt_jax.optim import adafactor as spt_adafactor
from spt_jax.optim import sparse_updates

Array = jax.Array
Params = Any

TRAINABLE_CHOICES = ('all', 'spt_only')


def split_trained(params: Params, trainable: str) -> Tuple[Params, Params]:
  """(trained, frozen) parameter groups; `{**frozen, **trained}` is `params`.

  Args:
    params: the whole parameter tree.
    trainable: 'all' (full fine-tuning: nothing frozen) or 'spt_only'
      (frozen backbone: only the SPT groups train).
  """
  if trainable == 'all':
    return params, {}
  if trainable == 'spt_only':
    return spt_params.split_spt_params(params)
  raise ValueError(
      f'Unknown trainable={trainable!r}; expected one of {TRAINABLE_CHOICES}.'
  )


@flax.struct.dataclass
class TrainState:
  """Step, parameters and the optimizer state of the trained ones, sharded together."""

  step: Array
  params: Params
  opt_state: optax.OptState

  @classmethod
  def create(
      cls,
      params: Params,
      optimizer: optax.GradientTransformation,
      trainable: str = 'all',
  ):
    """Step 0, with optimizer slots for the `trainable` parameters only."""
    trained, _ = split_trained(params, trainable)
    return cls(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(trained),
    )


def adafactor(
    learning_rate: float = 1e-3,
    decay_rate: float = 0.8,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: Optional[float] = 1.0,
) -> spt_adafactor.Adafactor:
  """T5X's Adafactor with its defaults (T0 trains at a constant 1e-3).

  Factored by the model's logical axes once `ShardedTrainer` binds them, as
  under T5X (`adafactor.LOGICAL_FACTOR_RULES`: the bank per memory).
  """
  return spt_adafactor.Adafactor(
      learning_rate=learning_rate,
      decay_rate=decay_rate,
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold,
  )


def make_train_step(
    model: models.SptModel,
    optimizer: optax.GradientTransformation,
    trainable: str = 'all',
) -> Callable[
    [TrainState, Mapping[str, Array], Array], Tuple[TrainState, Dict]
]:
  """A pure training step: (state, batch, dropout rng) -> (state, metrics).

  Only the `trainable` parameters are differentiated and updated (with
  'spt_only', the backbone's weight gradients are never computed). The state
  comes from `TrainState.create(params, optimizer, trainable)`. `grad_norm` is
  the norm of the trained parameters' gradients. A
  `sparse_updates.SparseBankOptimizer` selects the row-sparse path: the
  values' gradient is the retrieved rows, and only those rows (and their
  optimizer state) are updated.
  """
  split_trained({}, trainable)  # Fails early on an unknown choice.

  sparse = isinstance(optimizer, sparse_updates.SparseBankOptimizer)
  spt = model.module.spt
  key_samples = None
  if sparse and optimizer.keys:
    if spt.key_gradient != 'sampled':
      raise ValueError(
          'sparse_bank_optimizer(keys=True) needs SptConfig.key_gradient = '
          f"'sampled' (got {spt.key_gradient!r}): dense keys' gradients "
          'reach every memory (gin_configs/local/sampled_keys.gin sets both).'
      )
    key_samples = spt.key_samples

  def train_step(state: TrainState, batch, dropout_rng):
    rng = jax.random.fold_in(dropout_rng, state.step)
    trained, frozen = split_trained(state.params, trainable)
    if sparse:
      # The values' (and keys') gradient comes out as the gathered rows alone.
      (_, metrics), grads = sparse_updates.value_and_grad(
          lambda t, other: model.loss_and_retrieval(
              {**frozen, **t}, batch, rng, other
          ),
          trained,
          top_k=spt.top_k,
          batch_size=batch['encoder_input_tokens'].shape[0],
          key_samples=key_samples,
      )
      trained, opt_state = optimizer.apply(grads, state.opt_state, trained)
      params = {**frozen, **trained}
    else:
      (_, metrics), grads = jax.value_and_grad(
          lambda t: model.loss_fn({**frozen, **t}, batch, rng), has_aux=True
      )(trained)
      updates, opt_state = optimizer.update(grads, state.opt_state, trained)
      params = {**frozen, **optax.apply_updates(trained, updates)}
    metrics['grad_norm'] = sparse_updates.global_norm(grads)
    return (
        TrainState(step=state.step + 1, params=params, opt_state=opt_state),
        metrics,
    )

  return train_step


def params_axes(model: models.SptModel) -> Any:
  """The `params_axes` collection of `model`'s parameters.

  Parameter shapes do not depend on sequence lengths, so a one-token batch
  (after the discrete prompt's positions) gives them.
  """
  shapes = {
      'encoder_input_tokens': (1, model.module.spt.prompt_length + 1),
      'decoder_input_tokens': (1, 1),
      'decoder_target_tokens': (1, 1),
  }
  abstract = jax.eval_shape(
      lambda rng: model.get_initial_variables(rng, shapes),
      jax.random.PRNGKey(0),
  )
  return abstract['params_axes']


def state_shardings(
    params: Params,
    params_axes: Any,
    optimizer: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    rules: partitioning.LogicalRules,
    trainable: str = 'all',
) -> TrainState:
  """The `NamedSharding` of every leaf of `TrainState.create(params, ...)`.

  Parameters follow their logical axes, optimizer slots their parameters'
  (`adafactor.state_axes`), as T5X's partitioner lays them out.

  Args:
    params: the parameters, or their `jax.ShapeDtypeStruct`s.
    params_axes: their `params_axes` collection.
    optimizer: the transformation `TrainState.create` initialises.
    mesh: ('data', 'model') mesh.
    rules: logical axis rules.
    trainable: which parameters have optimizer slots (`split_trained`).
  """
  axes = flax.core.unfreeze(nn_partitioning.get_axis_names(params_axes))
  trained, _ = split_trained(flax.core.unfreeze(params), trainable)
  trained_axes, _ = split_trained(axes, trainable)
  logical = TrainState(
      step=jax.sharding.PartitionSpec(),
      params=axes,
      opt_state=spt_adafactor.state_axes(optimizer, trained, trained_axes),
  )
  return nn.logical_to_mesh_sharding(logical, mesh, rules)


class ShardedTrainer:
  """Initialises and steps a `TrainState` laid out over a device mesh.

  Attributes:
    model: loss and network.
    optimizer: the optax transformation of the trained parameters.
    trainable: 'all' (full fine-tuning) or 'spt_only' (frozen backbone).
    mesh: ('data', 'model') mesh.
    rules: logical axis rules mapping parameter and activation axes to it.
  """

  def __init__(
      self,
      model: models.SptModel,
      optimizer: optax.GradientTransformation,
      mesh: jax.sharding.Mesh,
      rules: partitioning.LogicalRules,
      trainable: str = 'all',
  ):
    self.model = model
    self.trainable = trainable
    split_trained({}, trainable)  # Fails early on an unknown choice.
    self.params_axes = params_axes(model)
    # As T5X's `set_param_axes`: Adafactor factors by the logical axes.
    self.optimizer = spt_adafactor.with_param_axes(optimizer, self.params_axes)
    self.mesh = mesh
    self.rules = rules
    self.state_shardings = None
    self._train_step = None

  def _create_state(self, params: Params) -> TrainState:
    return TrainState.create(params, self.optimizer, self.trainable)

  def _context(self):
    return partitioning.mesh_and_rules(self.mesh, self.rules)

  def init_state(
      self, rng: Array, input_shapes: Mapping[str, Tuple[int, ...]]
  ) -> TrainState:
    """A sharded initial state, created in place on the mesh."""

    def init_params(rng):
      return self.model.get_initial_variables(rng, input_shapes)['params']

    self.state_shardings = state_shardings(
        jax.eval_shape(init_params, rng),
        self.params_axes,
        self.optimizer,
        self.mesh,
        self.rules,
        self.trainable,
    )
    with self._context():
      params = jax.jit(init_params, out_shardings=self.state_shardings.params)(
          rng
      )
      return jax.jit(self._create_state, out_shardings=self.state_shardings)(
          params
      )

  def state_from_params(self, params: Params) -> TrainState:
    """A fresh state (step 0, new optimizer slots) around given parameters."""
    create = jax.jit(
        self._create_state,
        in_shardings=(self.state_shardings.params,),
        out_shardings=self.state_shardings,
    )
    return create(params)

  def shard_batch(self, local_batch: Mapping[str, Any]) -> Dict[str, Array]:
    """This host's rows of a batch, as global arrays split along `data`."""
    return partitioning.global_batch(local_batch, self.mesh)

  def train_step(
      self, state: TrainState, batch: Mapping[str, Array], dropout_rng: Array
  ) -> Tuple[TrainState, Dict[str, Array]]:
    """One jitted, sharded step; the state is donated."""
    if self._train_step is None:
      step = make_train_step(self.model, self.optimizer, self.trainable)
      self._train_step = jax.jit(
          step,
          in_shardings=(
              self.state_shardings,
              partitioning.data_sharding(self.mesh),
              None,
          ),
          out_shardings=(self.state_shardings, None),
          donate_argnums=(0,),
      )
    with self._context():
      return self._train_step(state, batch, dropout_rng)
