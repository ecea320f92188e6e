"""Optimizers, the frozen backbone and the training step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from spt_jax import config
from spt_jax import models
from spt_jax import network
from spt_jax import spt_params
from spt_jax import trainer

SHAPES = {
    'encoder_input_tokens': (2, 8),
    'decoder_input_tokens': (2, 4),
    'decoder_target_tokens': (2, 4),
}


def _model_and_params():
  t5 = config.t5_1_1_config('tiny', vocab_size=64, dropout_rate=0.0)
  spt = config.SptConfig(num_memories=8, memory_length=2, top_k=2, soft_prompt_length=2)
  model = models.SptModel(network.SptTransformer(t5, spt))
  params = model.get_initial_variables(jax.random.PRNGKey(0), SHAPES)['params']
  return model, params


def _batch():
  rng = np.random.default_rng(0)
  targets = rng.integers(2, 64, size=(2, 4))
  return {
      'encoder_input_tokens': jnp.asarray(rng.integers(2, 64, size=(2, 8))),
      'decoder_input_tokens': jnp.asarray(np.concatenate([np.zeros((2, 1), int), targets[:, :-1]], 1)),
      'decoder_target_tokens': jnp.asarray(targets),
  }


def test_param_labels_mark_the_memory_bank_and_soft_prompt():
  _, params = _model_and_params()
  labels = trainer.param_labels(params)
  assert set(jax.tree.leaves(labels['memory_bank'])) == {'spt'}
  assert set(jax.tree.leaves(labels['decoder'])) == {'backbone'}


def test_frozen_step_differentiates_only_spt_parameters():
  model, params = _model_and_params()
  base = optax.sgd(0.1)
  frozen_opt = trainer.create_optimizer(base, 'spt_only')
  state = trainer.TrainState.create(params, frozen_opt)
  frozen_step = trainer.make_train_step(model, frozen_opt, 'spt_only')
  new_state, metrics = jax.jit(frozen_step)(state, _batch(), jax.random.PRNGKey(1))

  # Reference: gradients of every parameter, then the same masked optimizer.
  reference = trainer.make_train_step(model, frozen_opt, 'all')
  expected, _ = jax.jit(reference)(state, _batch(), jax.random.PRNGKey(1))
  for group in params:
    for got, want, old in zip(jax.tree.leaves(new_state.params[group]),
                              jax.tree.leaves(expected.params[group]),
                              jax.tree.leaves(params[group])):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
      if group not in spt_params.SPT_PARAM_GROUPS:
        np.testing.assert_array_equal(got, old)
  assert float(metrics['grad_norm']) > 0

  def flops(step):
    lowered = jax.jit(step).lower(state, _batch(), jax.random.PRNGKey(1))
    return lowered.compile().cost_analysis()['flops']

  assert flops(frozen_step) < 0.9 * flops(reference)


def test_full_step_updates_everything():
  model, params = _model_and_params()
  optimizer = trainer.create_optimizer(optax.sgd(0.1), 'all')
  state = trainer.TrainState.create(params, optimizer)
  new_state, _ = jax.jit(trainer.make_train_step(model, optimizer))(
      state, _batch(), jax.random.PRNGKey(1)
  )
  assert int(new_state.step) == 1
  kernel = ('encoder', 'layers_0', 'mlp', 'wo', 'kernel')
  old, new = params, new_state.params
  for key in kernel:
    old, new = old[key], new[key]
  assert not np.array_equal(old, new)


def test_unknown_trainable_is_named():
  with pytest.raises(ValueError, match="Unknown trainable='decoder'"):
    trainer.create_optimizer(optax.sgd(0.1), 'decoder')
  model, _ = _model_and_params()
  with pytest.raises(ValueError, match="Unknown trainable='decoder'"):
    trainer.make_train_step(model, optax.sgd(0.1), 'decoder')
