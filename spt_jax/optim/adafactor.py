"""Adafactor whose factoring follows the parameters' logical axes, as T5X's.

T5X's `adafactor.Adafactor(logical_factor_rules=...)` decides per parameter,
from its logical axis names, which dimensions are a batch of independent
matrices (BATCH), which form the rows and the columns of the factored second
moment (ROW, COLUMN), and which are not factored (NONE). For SPT's memory
values [M, P, H] the rule is (BATCH, COLUMN, ROW): every memory has its own
factored statistics [M, H] and [M, P], its own parameter scale and its own
update clipping, so a memory's step does not depend on the other memories'
gradients or norms. optax's `adafactor` has no batch dimensions: it factors
the two largest dimensions of the whole tensor and scales and clips over all
of it, so the two runners trained the bank differently.

This module is the local runner's Adafactor with T5X's rules and update, so
that one gin setting trains the bank (and the backbone) the same way under
both runners (tests/adafactor_test.py compares it with T5X's, and
tests/runner_parity_test.py one step of each runner). The axis table
`LOGICAL_FACTOR_RULES` is also what `t5x_models.logical_factor_rules` gives
T5X.

The rules, as T5X applies them:

* a parameter whose rule lacks a ROW or a COLUMN dimension is not factored
  (its ROW/COLUMN entries become NONE);
* a parameter of rank <= 2 without BATCH dimensions ignores its rule and
  uses the heuristic: factor the two largest dimensions if the smaller of
  them has at least `min_dim_size_to_factor` entries (optax's rule too);
* parameter scale and update clipping average over every non-BATCH dimension.

Only T5X's default features are implemented (no momentum, weight decay or
global-norm clipping: SPT's gin files use none of them).
"""

import dataclasses
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Tuple

import flax
from flax.linen import partitioning as nn_partitioning
import jax
import jax.numpy as jnp
import numpy as np

Params = Any

BATCH = 'batch'
ROW = 'row'
COLUMN = 'column'
NONE = 'none'

# Logical axis -> factor dimension for every axis of SPT's network: T5X's
# `standard_logical_factor_rules` for the T5 axes, and SPT's own.
LOGICAL_FACTOR_RULES = {
    'vocab': COLUMN,
    'embed': ROW,
    'mlp': COLUMN,
    'heads': COLUMN,
    'kv': COLUMN,
    'joined_kv': COLUMN,
    'relpos_buckets': NONE,
    'layers': BATCH,
    'stack': BATCH,
    # SPT: values [memory, memory_length, embed] are factored per memory;
    # keys [memory, memory_embed] have no COLUMN, so they are not factored,
    # but their scale and clipping are still per memory.
    'memory': BATCH,
    'memory_length': COLUMN,
    'memory_embed': ROW,
    'prompt': COLUMN,
}

# (rows, columns) dimensions of a factored second moment.
FactoredDims = Tuple[Tuple[int, ...], Tuple[int, ...]]


def factor_rule(
    axes: Sequence[str], rules: Mapping[str, str] = LOGICAL_FACTOR_RULES
) -> Tuple[str, ...]:
  """The factor dimension of each axis of one parameter (T5X's `apply_rules`).

  Raises:
    KeyError: an axis has no rule; the message names it.
  """
  missing = [axis for axis in axes if axis not in rules]
  if missing:
    raise KeyError(
        f'No Adafactor factor rule for logical axes {missing} (of {tuple(axes)}); '
        'add them to adafactor.LOGICAL_FACTOR_RULES.'
    )
  dims = tuple(rules[axis] for axis in axes)
  if ROW not in dims or COLUMN not in dims:
    dims = tuple(NONE if d in (ROW, COLUMN) else d for d in dims)
  return dims


def _heuristic_dims(
    shape: Sequence[int], min_dim_size_to_factor: int
) -> Optional[FactoredDims]:
  """The two largest dimensions, if the smaller is large enough."""
  if len(shape) < 2:
    return None
  order = np.argsort(shape)
  if shape[order[-2]] < min_dim_size_to_factor:
    return None
  return (int(order[-2]),), (int(order[-1]),)


def parse_rule(
    rule: Optional[Tuple[str, ...]],
    shape: Sequence[int],
    min_dim_size_to_factor: int,
) -> Tuple[Tuple[int, ...], Optional[FactoredDims]]:
  """(dimensions averaged for scale and clipping, factored (rows, columns)).

  Args:
    rule: the parameter's `factor_rule`, or None for the heuristic.
    shape: its shape.
    min_dim_size_to_factor: the heuristic's threshold.
  """
  every_dim = tuple(range(len(shape)))
  if rule is not None and len(rule) != len(shape):
    raise ValueError(
        f'Factor rule {rule} has rank {len(rule)}; the parameter has shape '
        f'{tuple(shape)}.'
    )
  batch_dims = (
      () if rule is None else tuple(i for i, d in enumerate(rule) if d == BATCH)
  )
  if rule is None or (len(shape) <= 2 and not batch_dims):
    return every_dim, _heuristic_dims(shape, min_dim_size_to_factor)
  rows = tuple(i for i, d in enumerate(rule) if d == ROW)
  columns = tuple(i for i, d in enumerate(rule) if d == COLUMN)
  averaged = tuple(i for i in every_dim if i not in batch_dims)
  return averaged, ((rows, columns) if rows or columns else None)


class AdafactorState(NamedTuple):
  """Step count and, per parameter, `v_row`/`v_col` (factored) or `v`."""

  count: jax.Array
  moments: Any


def _rms(x: jax.Array, axes: Tuple[int, ...]) -> jax.Array:
  return jnp.sqrt(jnp.mean(jnp.square(x), axis=axes, keepdims=True))


@dataclasses.dataclass(frozen=True)
class Adafactor:
  """Adafactor (arXiv:1804.04235) with T5X's update and factor rules.

  An optax-style transformation (`init`, `update`). Without parameter axes
  every parameter uses the heuristic (as optax's `adafactor`);
  `with_param_axes` binds the model's logical axes, as T5X's
  `set_param_axes` does (`trainer.ShardedTrainer` calls it).

  Attributes:
    learning_rate: the relative step size (scaled by the parameter's RMS).
    decay_rate: the second moments decay at 1 - (step + 1) ** -decay_rate.
    multiply_by_parameter_scale: scale steps by max(RMS(param), epsilon2).
    clipping_threshold: clip each update to this RMS; None to not clip.
    min_dim_size_to_factor: the heuristic's threshold.
    epsilon1: added to squared gradients.
    epsilon2: the smallest parameter scale.
    factor_rules: per parameter (a tree like the parameters, or a prefix of
      it), its `factor_rule`, or None for the heuristic.
  """

  learning_rate: float = 1e-3
  decay_rate: float = 0.8
  multiply_by_parameter_scale: bool = True
  clipping_threshold: Optional[float] = 1.0
  min_dim_size_to_factor: int = 128
  epsilon1: float = 1e-30
  epsilon2: float = 1e-3
  factor_rules: Optional[Mapping[str, Any]] = None

  def with_param_axes(
      self,
      params_axes: Mapping[str, Any],
      rules: Mapping[str, str] = LOGICAL_FACTOR_RULES,
  ) -> 'Adafactor':
    """A copy factoring by the `params_axes` collection of a Flax model."""
    names = flax.core.unfreeze(nn_partitioning.get_axis_names(params_axes))
    factor_rules = jax.tree.map(
        lambda spec: factor_rule(tuple(spec), rules),
        names,
        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec),
    )
    return dataclasses.replace(self, factor_rules=factor_rules)

  def _rules_for(self, params: Params) -> list:
    """The `factor_rule` of each leaf of `params`, by path; None if unknown."""
    flat_rules = {}
    if self.factor_rules is not None:
      flat_rules = flax.traverse_util.flatten_dict(
          flax.core.unfreeze(self.factor_rules)
      )
    return [
        flat_rules.get(tuple(_key(k) for k in path))
        for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
    ]

  def _dims(self, params: Params) -> list:
    rules = self._rules_for(params)
    leaves = jax.tree.leaves(params)
    return [
        parse_rule(rule, leaf.shape, self.min_dim_size_to_factor)
        for rule, leaf in zip(rules, leaves)
    ]

  def init(self, params: Params) -> AdafactorState:
    """Zero second moments, factored where the rules say."""
    leaves, treedef = jax.tree.flatten(params)
    moments = []
    for leaf, (_, factored) in zip(leaves, self._dims(params)):
      shape = np.asarray(leaf.shape)
      if factored is None:
        moments.append({'v': jnp.zeros(leaf.shape, jnp.float32)})
      else:
        rows, columns = factored
        moments.append(
            {
                'v_row': jnp.zeros(
                    tuple(np.delete(shape, columns)), jnp.float32
                ),
                'v_col': jnp.zeros(tuple(np.delete(shape, rows)), jnp.float32),
            }
        )
    return AdafactorState(
        count=jnp.zeros((), jnp.int32),
        moments=jax.tree.unflatten(treedef, moments),
    )

  def state_axes(self, params: Params, param_axes: Params) -> AdafactorState:
    """The logical axes of `init(params)`: each statistic keeps its
    parameter's axes, less the dimensions it averages over.

    Args:
      params: the parameters (arrays or `jax.ShapeDtypeStruct`s).
      param_axes: a tree like `params` of logical `PartitionSpec`s.
    """
    leaves, treedef = jax.tree.flatten(params)
    axes = treedef.flatten_up_to(param_axes)
    moments = []
    for leaf, spec, (_, factored) in zip(leaves, axes, self._dims(params)):
      spec = tuple(spec) + (None,) * (len(leaf.shape) - len(spec))
      if factored is None:
        moments.append({'v': jax.sharding.PartitionSpec(*spec)})
      else:
        rows, columns = factored
        moments.append(
            {
                'v_row': _drop_dims(spec, columns),
                'v_col': _drop_dims(spec, rows),
            }
        )
    return AdafactorState(
        count=jax.sharding.PartitionSpec(),
        moments=jax.tree.unflatten(treedef, moments),
    )

  def update(
      self, grads: Params, state: AdafactorState, params: Params
  ) -> Tuple[Params, AdafactorState]:
    """(updates to add to `params`, new state), as T5X's `apply_gradient`."""
    leaves, treedef = jax.tree.flatten(params)
    grad_leaves = treedef.flatten_up_to(grads)
    moment_leaves = treedef.flatten_up_to(state.moments)
    step = state.count.astype(jnp.float32) + 1.0
    decay = 1.0 - step ** (-self.decay_rate)
    updates, moments = [], []
    for param, grad, moment, (averaged, factored) in zip(
        leaves, grad_leaves, moment_leaves, self._dims(params)
    ):
      update, moment = self._update_one(
          param, grad.astype(jnp.float32), moment, decay, averaged, factored
      )
      updates.append(update.astype(param.dtype))
      moments.append(moment)
    return (
        jax.tree.unflatten(treedef, updates),
        AdafactorState(state.count + 1, jax.tree.unflatten(treedef, moments)),
    )

  def _update_one(self, param, grad, moment, decay, averaged, factored):
    """The update [shape of param] and new moments of one parameter."""
    grad_sqr = jnp.square(grad) + self.epsilon1
    if factored is None:
      v = decay * moment['v'] + (1.0 - decay) * grad_sqr
      new_moment = {'v': v}
      scaled = grad * v**-0.5
    else:
      rows, columns = factored
      v_row = decay * moment['v_row'] + (1.0 - decay) * jnp.mean(
          grad_sqr, axis=columns
      )
      v_col = decay * moment['v_col'] + (1.0 - decay) * jnp.mean(
          grad_sqr, axis=rows
      )
      new_moment = {'v_row': v_row, 'v_col': v_col}
      # `rows` renumbered for v_row, whose `columns` dimensions are gone.
      reduced_rows = tuple(d - sum(c < d for c in columns) for d in rows)
      row_factor = (
          v_row / jnp.mean(v_row, axis=reduced_rows, keepdims=True)
      ) ** -0.5
      col_factor = v_col**-0.5
      scaled = (
          grad
          * jnp.expand_dims(row_factor, columns)
          * jnp.expand_dims(col_factor, rows)
      )
    if self.clipping_threshold is not None:
      scaled = scaled / jnp.maximum(
          1.0, _rms(scaled, averaged) / self.clipping_threshold
      )
    step_size = self.learning_rate
    if self.multiply_by_parameter_scale:
      step_size = step_size * jnp.maximum(
          _rms(param.astype(jnp.float32), averaged), self.epsilon2
      )
    return -step_size * scaled, new_moment


def _drop_dims(
    spec: Sequence[Any], dims: Tuple[int, ...]
) -> jax.sharding.PartitionSpec:
  return jax.sharding.PartitionSpec(
      *(axis for i, axis in enumerate(spec) if i not in dims)
  )


def _key(entry) -> str:
  """A path entry of `tree_flatten_with_path` as a dict key."""
  return getattr(entry, 'key', getattr(entry, 'name', str(entry)))


def with_param_axes(optimizer: Any, params_axes: Mapping[str, Any]) -> Any:
  """`optimizer.with_param_axes(params_axes)` if it has one, else `optimizer`.

  Other optax transformations (SGD, Adam) ignore the axes.
  """
  bind = getattr(optimizer, 'with_param_axes', None)
  return optimizer if bind is None else bind(params_axes)


def state_axes(optimizer: Any, params: Params, param_axes: Params) -> Any:
  """The logical axes of `optimizer.init(params)`, a tree like the state.

  Optimizers of this package say where their statistics live
  (`state_axes` methods). For any other optax transformation, a slot shaped
  like a parameter and found under that parameter's path (Adam's `mu`,
  `nu`) takes the parameter's axes; every other leaf (step counts) is
  replicated. The state's shardings must be given to `jax.jit` explicitly:
  slots made by `jnp.zeros` depend on no parameter, so XLA would otherwise
  replicate every one of them on every device.

  Args:
    optimizer: an optax-style transformation (`init`, `update`).
    params: the parameters it is initialised with (arrays or shapes).
    param_axes: a tree like `params` of logical `PartitionSpec`s.
  """
  derive = getattr(optimizer, 'state_axes', None)
  if derive is not None:
    return derive(params, param_axes)
  by_path = {}
  flat_axes = jax.tree.leaves(
      param_axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
  )
  flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, leaf), spec in zip(flat_params, flat_axes):
    by_path[tuple(_key(k) for k in path)] = (tuple(leaf.shape), spec)

  def slot_axes(path, leaf):
    keys = tuple(_key(k) for k in path)
    for start in range(len(keys)):
      for stop in range(len(keys), start, -1):
        shape_and_spec = by_path.get(keys[start:stop])
        if shape_and_spec and shape_and_spec[0] == tuple(leaf.shape):
          return shape_and_spec[1]
    return jax.sharding.PartitionSpec()

  return jax.tree_util.tree_map_with_path(
      slot_axes, jax.eval_shape(optimizer.init, params)
  )
