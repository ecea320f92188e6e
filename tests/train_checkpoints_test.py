"""load_params from every starting point the local runner accepts.

The orbax train checkpoints' checksums and the comparison of a run's settings
are tested here on small states; resume, damaged steps and a full disk are
exercised through the runner in train_test.py and faults_test.py.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spt_jax.checkpoints import spt_params
from spt_jax.checkpoints import t5x_checkpoints
from spt_jax import gin_utils
from spt_jax.local import train_checkpoints
from spt_jax.local import run_settings
from tests import params_test_utils as utils


@pytest.fixture(scope='module')
def backbone():
  return utils.init_params()[1]


def test_load_params_reads_conversions_and_run_folders(backbone, tmp_path):
  params = spt_params.initialize_spt_params(
      backbone, jax.random.PRNGKey(0), utils.SPT
  )
  out = str(tmp_path / 'converted')
  checkpoint_dir = t5x_checkpoints.save_converted_params(params, out, {})
  for path in (out, checkpoint_dir):
    utils.assert_trees_equal(train_checkpoints.load_params(path), params)
  # A local run's MODEL_DIR: the params of its latest train state.
  store = train_checkpoints.TrainCheckpoints(str(tmp_path / 'run'))
  store.save(3, {'step': np.int32(3), 'params': params})
  store.save(5, {'step': np.int32(5), 'params': backbone})
  store.close()
  utils.assert_trees_equal(
      train_checkpoints.load_params(str(tmp_path / 'run')), backbone
  )


def test_merge_params_keeps_new_spt_leaves_and_refuses_misfits(backbone):
  initial = spt_params.initialize_spt_params(
      jax.tree.map(np.zeros_like, backbone), jax.random.PRNGKey(1), utils.SPT
  )
  merged = train_checkpoints.merge_params(initial, backbone)
  utils.assert_trees_equal({k: merged[k] for k in backbone}, backbone)
  for group in spt_params.SPT_PARAM_GROUPS:
    assert merged[group] is initial[group]
  with pytest.raises(ValueError, match='no place'):
    train_checkpoints.merge_params(initial, {**backbone, 'extra': {'w': 1}})
  wrong = {'token_embedder': {'embedding': np.zeros((3, 3), np.float32)}}
  with pytest.raises(ValueError, match='token_embedder/embedding.*shape'):
    train_checkpoints.merge_params(initial, wrong)


def _store_with_steps(tmp_path, steps=(0, 1, 2)):
  store = train_checkpoints.TrainCheckpoints(str(tmp_path / 'run'))
  state = {
      'params': {'w': jnp.arange(4096, dtype=jnp.float32)},
      'opt_state': {'v': jnp.ones(64)},
      'step': jnp.zeros((), jnp.int32),
  }
  for step in steps:
    store.save(
        step,
        {**state, 'step': jnp.int32(step)},
        metadata={'metrics': {'loss': float(step)}},
    )
  return store, state


def _overwrite_inside_largest_file(step_dir):
  """8 bytes overwritten mid-file: the same size, other contents."""
  files = [
      os.path.join(folder, name)
      for folder, _, names in os.walk(step_dir)
      for name in names
      if name != train_checkpoints.MANIFEST
  ]
  path = max(files, key=os.path.getsize)
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    f.write(b'\xff' * 8)
  return os.path.relpath(path, step_dir)


def test_a_corrupt_step_is_named_set_aside_and_the_step_before_restored(
    tmp_path, caplog
):
  store, state = _store_with_steps(tmp_path)
  assert store.verify(2) and store.metadata(2) == {'metrics': {'loss': 2.0}}
  name = _overwrite_inside_largest_file(store.step_dir(2))
  with pytest.raises(
      train_checkpoints.CorruptCheckpoint,
      match=f'step 2 in {store.step_dir(2)} is corrupt: its '
      f'file {name} does not match',
  ):
    store.restore_params(2)
  step, restored = store.restore_latest(state)
  assert step == 1 and int(restored['step']) == 1
  np.testing.assert_array_equal(restored['params']['w'], state['params']['w'])
  assert store.all_steps() == [0, 1]
  assert os.listdir(tmp_path / 'run' / 'damaged_checkpoints') == ['2']
  assert f'step 2 in {store.step_dir(2)} is corrupt: its file {name}' in (
      caplog.text
  )
  store.close()


def test_unverifiable_and_misfitting_steps_are_left_in_place(tmp_path, caplog):
  store, state = _store_with_steps(tmp_path, steps=(0, 1))
  # A step saved before checksums were recorded is restored, with a warning.
  os.remove(os.path.join(store.step_dir(1), train_checkpoints.MANIFEST))
  assert store.restore_latest(state)[0] == 1
  assert 'step 1' in caplog.text and 'no checksums' in caplog.text
  # A sound step that does not fit the state is not damage: nothing moves.
  other = {**state, 'params': {'w': jnp.zeros(8)}}
  with pytest.raises(
      train_checkpoints.CheckpointError,
      match='step 1 .* cannot be read.*nothing was moved',
  ):
    store.restore_latest(other)
  assert store.all_steps() == [0, 1]
  assert not os.path.exists(tmp_path / 'run' / 'damaged_checkpoints')
  store.close()


def test_check_resumable_names_model_changes_and_allows_the_rest(tmp_path):
  model_dir = str(tmp_path)
  state = {'params': {'w': np.zeros((8, 4), np.float32)}}
  settings = {
      'SptConfig.num_memories': 8,
      'T5Config.dropout_rate': 0.0,
      'T5Config.mlp_activations': ('gelu', 'linear'),
      'TRAINABLE': 'all',
  }
  check = run_settings.check_resumable
  check(model_dir, settings, state)  # No record: an earlier run, not checked.
  run_settings.write_run_settings(model_dir, settings, state)
  check(model_dir, settings, state)
  check(
      model_dir,
      {
          **settings,
          'T5Config.dropout_rate': 0.1,
          'SptConfig.added_by_an_update': 1,
      },
      state,
  )
  with pytest.raises(
      gin_utils.ConfigError,
      match=r"SptConfig.num_memories: 8 -> 16; TRAINABLE: 'all' -> "
      r"'spt_only'\. Train into a new MODEL_DIR",
  ) as e:
    check(
        model_dir,
        {**settings, 'SptConfig.num_memories': 16, 'TRAINABLE': 'spt_only'},
        state,
    )
  assert '\n' not in str(e.value)
  with pytest.raises(
      gin_utils.ConfigError,
      match=r"\['params'\]\['w'\]: float32\[8, 4\] -> " r'float32\[16, 4\]',
  ):
    check(model_dir, settings, {'params': {'w': np.zeros((16, 4), np.float32)}})
