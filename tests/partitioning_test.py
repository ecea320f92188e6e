"""Sharding over 8 fake CPU devices: the bank splits along `memory`, losses agree."""

import jax
import numpy as np
import optax
import pytest
from flax.linen import partitioning as nn_partitioning

from spt_jax.local import trainer
from spt_jax.model import config
from spt_jax.model import models
from spt_jax.model import network
from spt_jax.model import partitioning
from spt_jax.model import retrieval

VOCAB = 64
SHAPES = {
    'encoder_input_tokens': (8, 12),
    'decoder_input_tokens': (8, 6),
    'decoder_target_tokens': (8, 6),
}


def _batch():
  rng = np.random.default_rng(0)
  targets = rng.integers(2, VOCAB, size=(8, 6))
  targets[:, 4:] = 0
  return {
      'encoder_input_tokens': rng.integers(2, VOCAB, size=(8, 12)),
      'decoder_input_tokens': np.concatenate(
          [np.zeros((8, 1), int), targets[:, :-1]], 1
      ),
      'decoder_target_tokens': targets,
      'decoder_loss_weights': (targets > 0).astype(np.float32),
  }


def _trainer(devices, num_partitions):
  t5 = config.t5_1_1_config('tiny', vocab_size=VOCAB, dropout_rate=0.0)
  spt = config.SptConfig(
      num_memories=16, memory_length=2, top_k=2, soft_prompt_length=2
  )
  model = models.SptModel(network.SptTransformer(t5, spt))
  mesh = partitioning.create_mesh(num_partitions, devices)
  return trainer.ShardedTrainer(
      model, trainer.adafactor(1e-2), mesh, partitioning.default_rules()
  )


@pytest.fixture(scope='module')
def runs():
  if jax.device_count() < 8:
    pytest.skip('needs XLA_FLAGS=--xla_force_host_platform_device_count=8')
  results = {}
  for name, devices, parts in [
      ('single', jax.devices()[:1], 1),
      ('sharded', jax.devices()[:8], 2),
  ]:
    t = _trainer(devices, parts)
    state = t.init_state(jax.random.PRNGKey(0), SHAPES)
    initial_bank = state.params['memory_bank']
    losses = []
    for _ in range(3):
      state, metrics = t.train_step(
          state, t.shard_batch(_batch()), jax.random.PRNGKey(1)
      )
      losses.append(float(metrics['loss']))
    results[name] = (initial_bank, state, losses)
  return results


def test_memory_bank_is_split_over_the_memory_axis(runs):
  bank, state, _ = runs['sharded']
  for name, full_shape in [('keys', (16, 64)), ('values', (16, 2, 64))]:
    array = state.params['memory_bank'][name]
    assert array.sharding.spec[0] == ('data', 'model'), array.sharding
    shard_shapes = {s.data.shape for s in array.addressable_shards}
    # 16 memories over all 8 devices (data=4 x model=2), not replicated.
    assert shard_shapes == {(2,) + full_shape[1:]}
    assert bank[name].sharding.spec[0] == ('data', 'model')
  # Model-parallel axes of the backbone are split over `model`.
  wi = state.params['encoder']['layers_0']['mlp']['wi_0']['kernel']
  assert wi.sharding.spec == jax.sharding.PartitionSpec(None, 'model')


def test_optimizer_slots_are_split_like_their_parameters(runs):
  _, state, _ = runs['sharded']
  moments = state.opt_state.moments
  bank = moments['memory_bank']
  # Keys [16, 64] are not factored; values [16, 2, 64] are, per memory:
  # v_row [16, 64] and v_col [16, 2], each 2 memories a device like the bank.
  for slot, shard_shape in [
      (bank['keys']['v'], (2, 64)),
      (bank['values']['v_row'], (2, 64)),
      (bank['values']['v_col'], (2, 2)),
  ]:
    assert {s.data.shape for s in slot.addressable_shards} == {shard_shape}
  # wi [embed, mlp] (too small to factor) keeps the kernel's `model` split.
  wi = moments['encoder']['layers_0']['mlp']['wi_0']['kernel']
  assert wi['v'].sharding.spec == jax.sharding.PartitionSpec(None, 'model')


def test_optax_slots_under_their_parameter_take_its_sharding():
  if jax.device_count() < 8:
    pytest.skip('needs 8 devices')
  t = _trainer(jax.devices()[:8], 2)
  params = jax.eval_shape(
      lambda r: t.model.get_initial_variables(r, SHAPES)['params'],
      jax.random.PRNGKey(0),
  )
  shardings = trainer.state_shardings(
      params, t.params_axes, optax.adam(1e-3), t.mesh, t.rules
  )
  adam = shardings.opt_state[0]
  keys = shardings.params['memory_bank']['keys']
  assert adam.mu['memory_bank']['keys'] == keys
  assert adam.nu['memory_bank']['keys'] == keys
  assert adam.count.spec == jax.sharding.PartitionSpec()


def test_sharded_training_matches_single_device(runs):
  _, single, single_losses = runs['single']
  _, sharded, sharded_losses = runs['sharded']
  np.testing.assert_allclose(sharded_losses, single_losses, rtol=2e-5)
  assert sharded_losses[-1] < sharded_losses[0]
  for a, b in zip(
      jax.tree.leaves(single.params), jax.tree.leaves(sharded.params)
  ):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


def test_chunked_top_k_under_the_mesh_matches_exact():
  if jax.device_count() < 8:
    pytest.skip('needs 8 devices')
  mesh = partitioning.create_mesh(1, jax.devices()[:8])
  scores = jax.random.normal(jax.random.PRNGKey(0), (4, 64))
  sharded = jax.device_put(
      scores,
      jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec(None, 'data')
      ),
  )
  with mesh, nn_partitioning.axis_rules(partitioning.default_rules()):
    values, indices = jax.jit(lambda s: retrieval.top_k(s, 3, num_chunks=8))(
        sharded
    )
  exact_values, exact_indices = jax.lax.top_k(scores, 3)
  np.testing.assert_array_equal(indices, exact_indices)
  np.testing.assert_allclose(values, exact_values)


def test_create_mesh_rejects_bad_partitions():
  with pytest.raises(ValueError, match='must divide'):
    partitioning.create_mesh(3, jax.devices()[:8])


@pytest.mark.parametrize(
    'memory_mesh_axis, expected',
    [
        (('data', 'model'), (('data', 'model'), 8)),
        ('data', ('data', 4)),
        ('model', ('model', 2)),
        (None, None),
    ],
)
def test_logical_mesh_axis_counts_the_shards_of_the_bank(
    memory_mesh_axis, expected
):
  if jax.device_count() < 8:
    pytest.skip('needs 8 devices')
  mesh = partitioning.create_mesh(2, jax.devices()[:8])
  assert partitioning.logical_mesh_axis('memory') is None  # No mesh in scope.
  with partitioning.mesh_and_rules(
      mesh, partitioning.default_rules(memory_mesh_axis)
  ):
    found = partitioning.logical_mesh_axis('memory')
  assert (found and found[1:]) == expected
