"""Train state, optimizers and the sharded training step of the local runner.

Parameters and optimizer state are laid out on a ('data', 'model') mesh by the
logical axis rules (see partitioning.py); batches are split along `data`. The
frozen-backbone setting trains only the SPT parameters (memory bank and soft
prompt) through `optax.multi_transform`, the counterpart of T5X's
`MultiOptimizer`: the backbone gets no optimizer state and no update.
"""

import functools
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax
from flax import traverse_util
import jax
import jax.numpy as jnp
import optax

from spt_jax import models
from spt_jax import partitioning
from spt_jax import spt_params

Array = jax.Array
Params = Any

TRAINABLE_CHOICES = ('all', 'spt_only')


@flax.struct.dataclass
class TrainState:
  """Step, parameters and optimizer state, sharded together."""

  step: Array
  params: Params
  opt_state: optax.OptState

  @classmethod
  def create(cls, params: Params, optimizer: optax.GradientTransformation):
    return cls(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
    )


def param_labels(params: Params) -> Params:
  """'spt' for memory bank and soft prompt leaves, 'backbone' for the rest."""
  flat = traverse_util.flatten_dict(flax.core.unfreeze(params))
  labels = {
      path: 'spt' if spt_params.is_spt_param('/'.join(path)) else 'backbone'
      for path in flat
  }
  return traverse_util.unflatten_dict(labels)


def adafactor(
    learning_rate: float = 1e-3,
    decay_rate: float = 0.8,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: Optional[float] = 1.0,
) -> optax.GradientTransformation:
  """Adafactor with T5X's defaults (T0 trains at a constant 1e-3)."""
  return optax.adafactor(
      learning_rate=learning_rate,
      decay_rate=decay_rate,
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold,
  )


def create_optimizer(
    base_optimizer: Optional[optax.GradientTransformation] = None,
    trainable: str = 'all',
) -> optax.GradientTransformation:
  """The optimizer for a run, with the backbone frozen when asked.

  Args:
    base_optimizer: the optimizer of trained parameters (default Adafactor).
    trainable: 'all' (full fine-tuning) or 'spt_only' (frozen backbone).

  Returns:
    An optax transformation over the whole parameter tree.
  """
  base_optimizer = base_optimizer or adafactor()
  if trainable == 'all':
    return base_optimizer
  if trainable == 'spt_only':
    return optax.multi_transform(
        {'spt': base_optimizer, 'backbone': optax.set_to_zero()}, param_labels
    )
  raise ValueError(
      f'Unknown trainable={trainable!r}; expected one of {TRAINABLE_CHOICES}.'
  )


def make_train_step(
    model: models.SptModel,
    optimizer: optax.GradientTransformation,
    trainable: str = 'all',
) -> Callable[[TrainState, Mapping[str, Array], Array], Tuple[TrainState, Dict]]:
  """A pure training step: (state, batch, dropout rng) -> (state, metrics).

  With `trainable='spt_only'` only the SPT parameters are differentiated, so
  the backbone's weight gradients are never computed (the optimizer from
  `create_optimizer(..., 'spt_only')` leaves the backbone unchanged anyway).
  `grad_norm` is the norm of the trained parameters' gradients.
  """
  if trainable not in TRAINABLE_CHOICES:
    raise ValueError(
        f'Unknown trainable={trainable!r}; expected one of {TRAINABLE_CHOICES}.'
    )

  def gradients(params, batch, rng):
    grad_fn = jax.value_and_grad(model.loss_fn, has_aux=True)
    if trainable == 'all':
      (_, metrics), grads = grad_fn(params, batch, rng)
      return metrics, grads, grads
    spt, backbone = spt_params.split_spt_params(params)
    (_, metrics), spt_grads = jax.value_and_grad(
        lambda trained: model.loss_fn({**backbone, **trained}, batch, rng),
        has_aux=True,
    )(spt)
    zeros = jax.tree.map(jnp.zeros_like, backbone)
    return metrics, {**zeros, **spt_grads}, spt_grads

  def train_step(state: TrainState, batch, dropout_rng):
    rng = jax.random.fold_in(dropout_rng, state.step)
    metrics, grads, trained_grads = gradients(state.params, batch, rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics['grad_norm'] = optax.global_norm(trained_grads)
    return (
        TrainState(step=state.step + 1, params=params, opt_state=opt_state),
        metrics,
    )

  return train_step


class ShardedTrainer:
  """Initialises and steps a `TrainState` laid out over a device mesh.

  Attributes:
    model: loss and network.
    optimizer: the optax transformation of the whole tree (`create_optimizer`
      of the base optimizer and `trainable`).
    trainable: 'all' (full fine-tuning) or 'spt_only' (frozen backbone).
    mesh: ('data', 'model') mesh.
    rules: logical axis rules mapping parameter and activation axes to it.
  """

  def __init__(
      self,
      model: models.SptModel,
      base_optimizer: optax.GradientTransformation,
      mesh: jax.sharding.Mesh,
      rules: partitioning.LogicalRules,
      trainable: str = 'all',
  ):
    self.model = model
    self.trainable = trainable
    self.optimizer = create_optimizer(base_optimizer, trainable)
    self.mesh = mesh
    self.rules = rules
    self.state_shardings = None
    self._train_step = None

  def _context(self):
    return partitioning.mesh_and_rules(self.mesh, self.rules)

  def init_state(
      self, rng: Array, input_shapes: Mapping[str, Tuple[int, ...]]
  ) -> TrainState:
    """A sharded initial state; parameters are created in place on the mesh.

    Optimizer slots take the shardings XLA propagates from their parameters
    (factored Adafactor statistics have shapes of their own).
    """
    def init_params(rng):
      return self.model.get_initial_variables(rng, input_shapes)['params']

    with self._context():
      abstract = jax.eval_shape(
          lambda r: self.model.get_initial_variables(r, input_shapes), rng
      )
      params_shardings = partitioning.params_shardings(
          abstract['params_axes'], self.mesh, self.rules
      )
      params = jax.jit(init_params, out_shardings=params_shardings)(rng)
      state = jax.jit(functools.partial(TrainState.create, optimizer=self.optimizer))(
          params
      )
    self.state_shardings = jax.tree.map(lambda x: x.sharding, state)
    return state

  def state_from_params(self, params: Params) -> TrainState:
    """A fresh state (step 0, new optimizer slots) around given parameters."""
    create = jax.jit(
        functools.partial(TrainState.create, optimizer=self.optimizer),
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
          in_shardings=(self.state_shardings, partitioning.data_sharding(self.mesh), None),
          out_shardings=(self.state_shardings, None),
          donate_argnums=(0,),
      )
    with self._context():
      return self._train_step(state, batch, dropout_rng)
