"""Row-sparse gradients and lazy updates of the memory bank's values.

A training step retrieves k of the M memories per example, so the gradient of
the values [M, P, H] is zero outside at most B*k rows. The dense path builds
that gradient as a [M, P, H] scatter into zeros, and the optimizer then reads
and writes all M x P x H values and their slots every step. Here instead:

* the network gathers the retrieved rows [B, k, P, H] and adds a zero
  perturbation to them (`memory_bank.RETRIEVED_VALUES`, Flax's `perturb`);
  the gradient w.r.t. that perturbation is the gradient of the rows, and the
  values themselves are held out of differentiation (`value_and_grad`);
* `dedup` sums the rows of memories retrieved more than once in the batch
  into `RowSparse` (rows [R], grads [R, P, H], R = B*k, padded with the
  out-of-range row M), which is exactly the dense gradient's non-zero rows;
* a `RowOptimizer` updates those rows of the values and of its own state
  with a scatter into the memory-sharded arrays (`lazy_sgd`, `lazy_adam`).

Lazy semantics, as TensorFlow's LazyAdam (tfa.optimizers.LazyAdam): rows not
retrieved in a step keep their values AND their optimizer state. With SGD
this is exactly the dense update (an untouched row's gradient is 0). With
Adam it is not: dense Adam decays every row's first and second moments each
step and keeps moving untouched rows by their momentum; lazy Adam freezes
both until the row is retrieved again (bias correction uses the global step,
as LazyAdam does). The dense default, Adafactor factored per memory
(spt_jax/optim/adafactor.py, as under T5X: no momentum, per-memory statistics,
parameter scale and update clipping), also leaves untouched rows' values
unchanged (a zero gradient gives a zero update) but decays their
second-moment statistics every step, so a row retrieved after a long pause
takes a larger step than under a lazy rule. The sparse path is therefore a gin choice
(`gin_configs/local/sparse_bank.gin`, `gin_configs/runs/sparse_bank.gin`),
dense is the default.

Every other parameter (keys included: the balance loss reaches all M keys)
keeps the dense optimizer.

Shape letters: M memories, P memory length, H width, B batch, k retrieved,
R = B*k rows.
"""

from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import optax

from spt_jax.optim import adafactor as spt_adafactor

Array = jax.Array
Params = Any

# Where the values live in the parameter tree, and the name of the zero
# perturbation of the retrieved rows (`perturbations` collection).
BANK = 'memory_bank'
VALUES = 'values'
RETRIEVED_VALUES = 'retrieved_values'
# With `SptConfig.key_gradient='sampled'`: the selected keys [B, k, D], the
# keys drawn for the balance loss [S, D], and the draw [S] (`intermediates`).
KEYS = 'keys'
RETRIEVED_KEYS = 'retrieved_keys'
SAMPLED_KEYS = 'sampled_keys'
SAMPLED_KEY_INDICES = 'sampled_key_indices'


@flax.struct.dataclass
class RowSparse:
  """A gradient of the values [M, P, H] that is zero outside `rows`.

  Attributes:
    rows: [R] int32 distinct memory ids; padding entries are M (out of range,
      dropped by every scatter).
    grads: [R, P, H] the gradient of each row; zero on padding.
  """

  rows: Array
  grads: Array


def dedup(indices: Array, row_grads: Array, num_memories: int) -> RowSparse:
  """Sums the gradients of rows gathered more than once.

  Args:
    indices: [B, k] retrieved memory ids (or any shape of ids, e.g. [R]).
    row_grads: [B, k, P, H] the gradient of each gathered row (the shape of
      `indices`, then the row's).
    num_memories: M; fills the unused entries of `rows`.

  Returns:
    `RowSparse` with R = B*k entries: each distinct id once, with the sum of
    its gradients, so that scattering it gives the dense gradient.
  """
  flat = indices.reshape(-1).astype(jnp.int32)
  size = flat.shape[0]
  rows, inverse = jnp.unique(
      flat, size=size, fill_value=num_memories, return_inverse=True
  )
  grads = jax.ops.segment_sum(
      row_grads.reshape((size,) + row_grads.shape[indices.ndim :]),
      inverse.reshape(-1),
      num_segments=size,
  )
  return RowSparse(rows.astype(jnp.int32), grads)


def to_dense(grad: RowSparse, num_memories: int) -> Array:
  """The [M, P, H] gradient `grad` stands for (tests and norms only)."""
  dense = jnp.zeros((num_memories,) + grad.grads.shape[1:], grad.grads.dtype)
  return dense.at[grad.rows].add(grad.grads, mode='drop')


def _take_rows(table: Array, rows: Array) -> Array:
  """[R, ...] rows of `table` [M, ...]; zeros for the padding row M."""
  return jnp.take(table, rows, axis=0, mode='fill', fill_value=0)


def _put_rows(table: Array, rows: Array, new_rows: Array) -> Array:
  """`table` [M, ...] with `rows` replaced by `new_rows` [R, ...]."""
  return table.at[rows].set(new_rows.astype(table.dtype), mode='drop')


# Row optimizers: pure functions of (values, state, RowSparse, learning rate).


class RowOptimizer(NamedTuple):
  """A lazy optimizer of the values: `init(values) -> state`,
  `update(values, state, grad, learning_rate) -> (values, state)` and
  `state_axes(values_axes) -> the state's logical axes`.

  `learning_rate` may be a traced scalar (a schedule's value); `state` has
  leaves [M, P, H] laid out like the values, or none.
  """

  init: Callable[[Array], Any]
  update: Callable[[Array, Any, RowSparse, Any], Tuple[Array, Any]]
  state_axes: Callable[[jax.sharding.PartitionSpec], Any]


def lazy_sgd_update(
    values: Array, grad: RowSparse, learning_rate: Any
) -> Array:
  """values - learning_rate * grad on the retrieved rows only ([M, P, H])."""
  step = (-learning_rate * grad.grads).astype(values.dtype)
  return values.at[grad.rows].add(step, mode='drop')


def lazy_sgd() -> RowOptimizer:
  """Plain SGD on the retrieved rows; equal to dense SGD (no state)."""
  return RowOptimizer(
      init=lambda values: (),
      update=lambda values, state, grad, lr: (
          lazy_sgd_update(values, grad, lr),
          state,
      ),
      state_axes=lambda values_axes: (),
  )


@flax.struct.dataclass
class LazyAdamState:
  """Lazy Adam's slots.

  Attributes:
    count: scalar int32, the number of steps taken (for bias correction).
    mu: [M, P, H] first moments; rows change only when retrieved.
    nu: [M, P, H] second moments; rows change only when retrieved.
  """

  count: Array
  mu: Array
  nu: Array


def lazy_adam_init(values: Array) -> LazyAdamState:
  zeros = jnp.zeros_like(values)
  return LazyAdamState(jnp.zeros((), jnp.int32), zeros, zeros)


def lazy_adam_update(
    values: Array,
    state: LazyAdamState,
    grad: RowSparse,
    learning_rate: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> Tuple[Array, LazyAdamState]:
  """One LazyAdam step: moments and values of the retrieved rows only.

  As tf.keras/tfa LazyAdam: mu[r] = b1 mu[r] + (1 - b1) g, nu[r] likewise
  with g^2, values[r] -= lr_t mu[r] / (sqrt(nu[r]) + eps) with
  lr_t = lr sqrt(1 - b2^t) / (1 - b1^t) at the global step t; other rows of
  values, mu and nu are left as they are.
  """
  count = state.count + 1
  t = count.astype(jnp.float32)
  lr_t = learning_rate * jnp.sqrt(1.0 - b2**t) / (1.0 - b1**t)
  g = grad.grads.astype(jnp.float32)
  mu = b1 * _take_rows(state.mu, grad.rows) + (1.0 - b1) * g
  nu = b2 * _take_rows(state.nu, grad.rows) + (1.0 - b2) * g * g
  step = -lr_t * mu / (jnp.sqrt(nu) + eps)
  new_values = values.at[grad.rows].add(step.astype(values.dtype), mode='drop')
  return new_values, LazyAdamState(
      count,
      _put_rows(state.mu, grad.rows, mu),
      _put_rows(state.nu, grad.rows, nu),
  )


def lazy_adam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> RowOptimizer:
  """LazyAdam on the retrieved rows (see the module docstring)."""
  return RowOptimizer(
      init=lazy_adam_init,
      update=lambda values, state, grad, lr: lazy_adam_update(
          values, state, grad, lr, b1, b2, eps
      ),
      state_axes=lambda values_axes: LazyAdamState(
          jax.sharding.PartitionSpec(), values_axes, values_axes
      ),
  )


ROW_OPTIMIZERS = {'sgd': lazy_sgd, 'adam': lazy_adam}


# The parameter tree with and without the bank's row-sparse parameters.


def split_rows(
    params: Params, names: Sequence[str] = (VALUES,)
) -> Tuple[Params, Dict[str, Array]]:
  """(params without `memory_bank/<name>` for each name, those arrays by name)."""
  frozen = isinstance(params, flax.core.FrozenDict)
  tree = flax.core.unfreeze(params) if frozen else dict(params)
  bank = dict(tree.get(BANK, {}))
  missing = [name for name in names if name not in bank]
  if missing:
    raise ValueError(
        f'Row-sparse training needs memory_bank/{missing[0]} among the '
        f'trained parameters; got groups {sorted(tree)}.'
    )
  rows = {name: bank.pop(name) for name in names}
  tree[BANK] = bank
  return (flax.core.freeze(tree) if frozen else tree), rows


def merge_rows(rest: Params, rows: Mapping[str, Any]) -> Params:
  """`rest` with `memory_bank/<name>` set from `rows` (inverse of split)."""
  frozen = isinstance(rest, flax.core.FrozenDict)
  tree = flax.core.unfreeze(rest) if frozen else dict(rest)
  tree[BANK] = {**tree.get(BANK, {}), **rows}
  return flax.core.freeze(tree) if frozen else tree


def split_values(params: Params) -> Tuple[Params, Array]:
  """(params without `memory_bank/values`, the values [M, P, H])."""
  rest, rows = split_rows(params, (VALUES,))
  return rest, rows[VALUES]


def row_sparse_names(sparse_keys: bool) -> Tuple[str, ...]:
  """The bank's parameters differentiated row-sparse: values, and keys."""
  return (VALUES, KEYS) if sparse_keys else (VALUES,)


def value_and_grad(
    loss_and_retrieval: Callable[..., Tuple[Array, Tuple[Any, Any]]],
    params: Params,
    top_k: int,
    batch_size: int,
    key_samples: Optional[int] = None,
) -> Tuple[Tuple[Array, Any], Params]:
  """The loss and gradients, with the values' (and keys') gradient row-sparse.

  Args:
    loss_and_retrieval: `(params, other_variables) -> (loss, (aux, ids))`,
      e.g. a model's `loss_and_retrieval` with the batch and rng bound, where
      `ids` is `models.retrieved_ids` (`indices` [B, k], and
      `sampled_key_indices` [S]); `other_variables` carries the zero
      perturbations of the gathered rows.
    params: the differentiated parameters, holding `memory_bank/values`.
    top_k: k.
    batch_size: B, the rows of the batch the network retrieves for.
    key_samples: None to differentiate the keys densely; S, with
      `SptConfig.key_gradient='sampled'` and `key_samples=S`, to give the
      keys a row-sparse gradient of their B*k + S gathered rows too.

  Returns:
    ((loss, aux), grads): `grads` has the tree of `params`, with a
    `RowSparse` in place of the values' [M, P, H] (and keys' [M, D])
    gradient, which is never built.
  """
  sparse_keys = key_samples is not None
  rest, bank = split_rows(params, row_sparse_names(sparse_keys))
  values = bank[VALUES]
  zeros = {
      RETRIEVED_VALUES: jnp.zeros(
          (batch_size, top_k) + values.shape[1:], values.dtype
      )
  }
  if sparse_keys:
    keys = bank[KEYS]
    zeros[RETRIEVED_KEYS] = jnp.zeros(
        (batch_size, top_k) + keys.shape[1:], keys.dtype
    )
    zeros[SAMPLED_KEYS] = jnp.zeros((key_samples,) + keys.shape[1:], keys.dtype)

  def loss(rest, perturbations):
    return loss_and_retrieval(
        merge_rows(rest, bank), {'perturbations': {BANK: perturbations}}
    )

  (loss_value, (aux, ids)), (rest_grads, row_grads) = jax.value_and_grad(
      loss, argnums=(0, 1), has_aux=True
  )(rest, zeros)
  num_memories = values.shape[0]
  grads = {
      VALUES: dedup(ids['indices'], row_grads[RETRIEVED_VALUES], num_memories)
  }
  if sparse_keys:
    grads[KEYS] = dedup(
        jnp.concatenate([ids['indices'].reshape(-1), ids[SAMPLED_KEY_INDICES]]),
        jnp.concatenate(
            [
                row_grads[RETRIEVED_KEYS].reshape((-1,) + keys.shape[1:]),
                row_grads[SAMPLED_KEYS],
            ]
        ),
        num_memories,
    )
  return (loss_value, aux), merge_rows(rest_grads, grads)


def global_norm(grads: Params) -> Array:
  """optax.global_norm of a gradient tree that may hold `RowSparse` leaves."""
  dense = jax.tree.map(
      lambda g: g.grads if isinstance(g, RowSparse) else g,
      grads,
      is_leaf=lambda g: isinstance(g, RowSparse),
  )
  return optax.global_norm(dense)


# The local runner's optimizer: dense Adafactor for the rest, lazy rows for the bank.


class SparseBankState(NamedTuple):
  dense: optax.OptState
  rows: Dict[str, Any]


class SparseBankOptimizer(NamedTuple):
  """A dense optimizer for every trained parameter but the bank's row-sparse
  ones, and a `RowOptimizer` for those: the values, and with `keys` the
  keys (the local runner's sparse path).

  `trainer.make_train_step` recognises it and differentiates them
  row-sparse; `init` has optax's signature, so `TrainState.create` is
  unchanged.

  Attributes:
    dense: e.g. `trainer.adafactor()`.
    rows: e.g. `lazy_adam()`.
    learning_rate: the rows' learning rate.
    keys: also update the keys lazily; needs
      `SptConfig.key_gradient='sampled'` (gin_configs/local/sampled_keys.gin).
  """

  dense: Any  # An optax-style transformation: init, update.
  rows: RowOptimizer
  learning_rate: float
  keys: bool = False

  @property
  def row_names(self) -> Tuple[str, ...]:
    return row_sparse_names(self.keys)

  def with_param_axes(self, params_axes: Any) -> 'SparseBankOptimizer':
    """Binds the logical axes to the dense optimizer (see adafactor.py)."""
    return self._replace(
        dense=spt_adafactor.with_param_axes(self.dense, params_axes)
    )

  def init(self, params: Params) -> SparseBankState:
    rest, rows = split_rows(params, self.row_names)
    return SparseBankState(
        self.dense.init(rest),
        {name: self.rows.init(table) for name, table in rows.items()},
    )

  def state_axes(self, params: Params, param_axes: Params) -> SparseBankState:
    """The logical axes of `init(params)` (see `adafactor.state_axes`)."""
    rest, _ = split_rows(params, self.row_names)
    rest_axes, row_axes = split_rows(param_axes, self.row_names)
    return SparseBankState(
        spt_adafactor.state_axes(self.dense, rest, rest_axes),
        {name: self.rows.state_axes(axes) for name, axes in row_axes.items()},
    )

  def apply(
      self, grads: Params, state: SparseBankState, params: Params
  ) -> Tuple[Params, SparseBankState]:
    """New (params, state) from gradients with `RowSparse` bank leaves."""
    rest, rows = split_rows(params, self.row_names)
    rest_grads, row_grads = split_rows(grads, self.row_names)
    updates, dense_state = self.dense.update(rest_grads, state.dense, rest)
    new_rows, rows_state = {}, {}
    for name, table in rows.items():
      new_rows[name], rows_state[name] = self.rows.update(
          table, state.rows[name], row_grads[name], self.learning_rate
      )
    return (
        merge_rows(optax.apply_updates(rest, updates), new_rows),
        SparseBankState(dense_state, rows_state),
    )


def sparse_bank_optimizer(
    dense: Any,
    rows: str = 'adam',
    learning_rate: float = 1e-3,
    keys: bool = False,
    **row_kwargs,
) -> SparseBankOptimizer:
  """Gin entry point: `dense` for the rest, lazy `rows` ('sgd' or 'adam')
  for the values (and the keys, with `keys`)."""
  if rows not in ROW_OPTIMIZERS:
    raise ValueError(
        f'Unknown row optimizer {rows!r}; expected one of {list(ROW_OPTIMIZERS)}.'
    )
  return SparseBankOptimizer(
      dense, ROW_OPTIMIZERS[rows](**row_kwargs), learning_rate, keys
  )
