"""Optimizers, the frozen backbone and the training step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from spt_jax.checkpoints import spt_params
from spt_jax.local import trainer
from spt_jax.model import config
from spt_jax.model import models
from spt_jax.model import network
from tests import params_test_utils

SHAPES = {
    'encoder_input_tokens': (2, 8),
    'decoder_input_tokens': (2, 4),
    'decoder_target_tokens': (2, 4),
}


def _model_and_params():
  t5 = config.t5_1_1_config('tiny', vocab_size=64, dropout_rate=0.0)
  spt = config.SptConfig(
      num_memories=8, memory_length=2, top_k=2, soft_prompt_length=2
  )
  model = models.SptModel(network.SptTransformer(t5, spt))
  params = params_test_utils.initial_params(model, SHAPES)
  return model, params


def _batch():
  rng = np.random.default_rng(0)
  targets = rng.integers(2, 64, size=(2, 4))
  return {
      'encoder_input_tokens': jnp.asarray(rng.integers(2, 64, size=(2, 8))),
      'decoder_input_tokens': jnp.asarray(
          np.concatenate([np.zeros((2, 1), int), targets[:, :-1]], 1)
      ),
      'decoder_target_tokens': jnp.asarray(targets),
  }


@pytest.fixture(scope='module')
def model_and_params():
  return _model_and_params()


@pytest.fixture(scope='module')
def sgd_steps(model_and_params):
  """trainable -> (initial state, compiled SGD step): each step is compiled
  once, run by the tests and measured for its flops."""
  model, params = model_and_params
  optimizer = optax.sgd(0.1)
  steps = {}
  for trainable in ('spt_only', 'all'):
    state = trainer.TrainState.create(params, optimizer, trainable)
    step = trainer.make_train_step(model, optimizer, trainable)
    compiled = (
        jax.jit(step).lower(state, _batch(), jax.random.PRNGKey(1)).compile()
    )
    steps[trainable] = state, compiled
  return steps


def test_frozen_state_has_optimizer_slots_for_spt_parameters_only(
    model_and_params,
):
  _, params = model_and_params
  state = trainer.TrainState.create(params, optax.adam(0.1), 'spt_only')
  adam_state = state.opt_state[0]
  assert set(adam_state.mu) == set(spt_params.SPT_PARAM_GROUPS)
  full = trainer.TrainState.create(params, optax.adam(0.1))
  assert set(full.opt_state[0].mu) == set(params)


def test_frozen_step_is_sgd_on_spt_parameters_and_keeps_the_backbone(
    model_and_params, sgd_steps
):
  model, params = model_and_params
  state, frozen_step = sgd_steps['spt_only']
  new_state, metrics = frozen_step(state, _batch(), jax.random.PRNGKey(1))

  # Oracle: the full gradient, and SGD applied to the SPT groups alone.
  rng = jax.random.fold_in(jax.random.PRNGKey(1), 0)
  grads = jax.jit(jax.grad(lambda p: model.loss_fn(p, _batch(), rng)[0]))(
      params
  )
  spt_grads, _ = spt_params.split_spt_params(grads)
  for group in params:
    for got, old, grad in zip(
        jax.tree.leaves(new_state.params[group]),
        jax.tree.leaves(params[group]),
        jax.tree.leaves(grads[group]),
    ):
      if group in spt_params.SPT_PARAM_GROUPS:
        np.testing.assert_allclose(got, old - 0.1 * grad, rtol=1e-5, atol=1e-6)
      else:
        np.testing.assert_array_equal(got, old)  # Bit for bit.
  np.testing.assert_allclose(
      metrics['grad_norm'], optax.global_norm(spt_grads), rtol=1e-5
  )
  assert float(metrics['grad_norm']) > 0

  # The backbone's weight gradients are never computed.
  _, full_step = sgd_steps['all']
  flops = lambda compiled: compiled.cost_analysis()['flops']
  assert flops(frozen_step) < 0.9 * flops(full_step)


def test_full_step_updates_everything(model_and_params, sgd_steps):
  _, params = model_and_params
  state, full_step = sgd_steps['all']
  new_state, _ = full_step(state, _batch(), jax.random.PRNGKey(1))
  assert int(new_state.step) == 1
  kernel = ('encoder', 'layers_0', 'mlp', 'wo', 'kernel')
  old, new = params, new_state.params
  for key in kernel:
    old, new = old[key], new[key]
  assert not np.array_equal(old, new)


def test_unknown_trainable_is_named(model_and_params):
  model, params = model_and_params
  with pytest.raises(ValueError, match="Unknown trainable='decoder'"):
    trainer.TrainState.create(params, optax.sgd(0.1), 'decoder')
  with pytest.raises(ValueError, match="Unknown trainable='decoder'"):
    trainer.make_train_step(model, optax.sgd(0.1), 'decoder')
