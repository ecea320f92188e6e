"""load_params from every starting point the local runner accepts.

The orbax train checkpoints themselves (resume, damaged steps, a full disk) are
exercised through the runner in train_test.py and faults_test.py.
"""

import jax
import numpy as np
import pytest

from spt_jax import spt_params
from spt_jax import t5x_checkpoints
from spt_jax import train_checkpoints
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
  utils.assert_trees_equal(
      {k: merged[k] for k in backbone}, backbone
  )
  for group in spt_params.SPT_PARAM_GROUPS:
    assert merged[group] is initial[group]
  with pytest.raises(ValueError, match='no place'):
    train_checkpoints.merge_params(initial, {**backbone, 'extra': {'w': 1}})
  wrong = {'token_embedder': {'embedding': np.zeros((3, 3), np.float32)}}
  with pytest.raises(ValueError, match='token_embedder/embedding.*shape'):
    train_checkpoints.merge_params(initial, wrong)
