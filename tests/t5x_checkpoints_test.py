"""T5X checkpoints read (legacy msgpack + TensorStore, orbax) and written without T5X."""

import json
import os

from flax import serialization
from flax import traverse_util
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts

from spt_jax.checkpoints import t5x_checkpoints
from spt_jax.model import config
from spt_jax.model import network
from tests import params_test_utils as utils


@pytest.fixture(scope='module')
def backbone():
  return utils.init_params()[1]


# A legacy T5X checkpoint, written here the way T5X writes one: msgpack with
# small leaves inline and TensorStore zarr specs (relative paths) for the rest.


def _zarr_spec(name, array, kvstore_driver='file'):
  spec = {
      'driver': 'zarr',
      'dtype': np.dtype(array.dtype).name,
      'metadata': {
          'compressor': {'id': 'gzip'},
          'shape': list(array.shape),
          'chunks': [max(1, array.shape[0] // 2)] + list(array.shape[1:]),
      },
  }
  if kvstore_driver == 'gcs':  # Specs of checkpoints saved to GCS.
    spec['kvstore'] = {
        'driver': 'gcs',
        'bucket': 't5x-dummy-bucket',
        'path': name,
    }
  else:
    spec['kvstore'] = {'driver': 'file', 'path': name}
  return spec


def write_legacy_t5x_checkpoint(directory, params, step=100):
  """Writes `checkpoint_<step>/` with Adafactor-like state; returns its path."""
  checkpoint_dir = os.path.join(directory, f'checkpoint_{step}')
  os.makedirs(checkpoint_dir)
  flat = traverse_util.flatten_dict(params)
  written = {}
  for i, (path, value) in enumerate(sorted(flat.items())):
    if value.ndim < 2:  # T5X keeps unpartitioned leaves in the msgpack.
      written[path] = value
      continue
    name = '.'.join(('target',) + path)
    array = value
    if path[-1] == 'rel_embedding':  # A bfloat16 leaf (T5X's save_dtype).
      array = value.astype(ml_dtypes.bfloat16)
    spec = _zarr_spec(name, array, 'gcs' if i % 3 == 0 else 'file')
    store = ts.open(
        {
            **spec,
            'kvstore': {
                'driver': 'file',
                'path': os.path.join(checkpoint_dir, name),
            },
        },
        create=True,
        open=True,
    ).result()
    store.write(array).result()
    written[path] = spec
  param_states = {
      path: {
          'v_row': np.ones(v.shape[:1], np.float32),
          'v_col': np.ones(v.shape[1:2], np.float32),
      }
      for path, v in flat.items()
  }
  contents = {
      'version': 3,
      'optimizer': {
          'target': traverse_util.unflatten_dict(written),
          'state': {
              'step': np.int32(step),
              'param_states': traverse_util.unflatten_dict(param_states),
          },
      },
  }
  with open(os.path.join(checkpoint_dir, 'checkpoint'), 'wb') as f:
    f.write(serialization.msgpack_serialize(contents))
  return checkpoint_dir


def _bf16_rounded(params):
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict(
      {
          k: v.astype(ml_dtypes.bfloat16).astype(np.float32)
          if k[-1] == 'rel_embedding'
          else v
          for k, v in flat.items()
      }
  )


def test_legacy_t5x_checkpoint_loads_target_only(backbone, tmp_path):
  write_legacy_t5x_checkpoint(str(tmp_path), backbone, step=10)
  latest = write_legacy_t5x_checkpoint(str(tmp_path), backbone, step=20)
  expected = _bf16_rounded(backbone)
  for path in (latest, os.path.join(latest, 'checkpoint'), str(tmp_path)):
    utils.assert_trees_equal(t5x_checkpoints.load_t5x_params(path), expected)


def test_legacy_t5x_params_give_the_same_logits(backbone, tmp_path):
  # The same network on the loaded tree as on the tree that was written.
  path = write_legacy_t5x_checkpoint(str(tmp_path), backbone)
  net = network.SptTransformer(utils.T5)
  np.testing.assert_array_equal(
      utils.logits(net, t5x_checkpoints.load_t5x_params(path)),
      utils.logits(net, _bf16_rounded(backbone)),
  )


def test_orbax_t5x_checkpoint_loads_target_only(backbone, tmp_path):
  state = {
      'target': backbone,
      'state': {'step': np.int32(7), 'param_states': {'x': np.zeros(3)}},
  }
  state_dir = os.path.join(str(tmp_path), 'checkpoint_7', 'state')
  ocp.PyTreeCheckpointer().save(state_dir, args=ocp.args.PyTreeSave(state))
  for path in (state_dir, os.path.dirname(state_dir), str(tmp_path)):
    utils.assert_trees_equal(t5x_checkpoints.load_t5x_params(path), backbone)


def test_t5x_errors_name_the_problem(backbone, tmp_path):
  with pytest.raises(FileNotFoundError, match='No T5X checkpoint'):
    t5x_checkpoints.load_t5x_params(str(tmp_path / 'missing'))
  with pytest.raises(FileNotFoundError, match='neither'):
    t5x_checkpoints.load_t5x_params(str(tmp_path))
  tf_index = tmp_path / 'tf' / 'checkpoint'
  tf_index.parent.mkdir()
  tf_index.write_text('model_checkpoint_path: "model.ckpt-1"')
  with pytest.raises(ValueError, match='TensorFlow'):
    t5x_checkpoints.load_t5x_params(str(tf_index.parent))
  path = write_legacy_t5x_checkpoint(str(tmp_path / 'broken'), backbone)
  missing = 'target.token_embedder.embedding'
  os.rename(os.path.join(path, missing), os.path.join(path, 'moved'))
  with pytest.raises(FileNotFoundError, match=missing):
    t5x_checkpoints.load_t5x_params(path)


def test_t5_config_from_params(backbone):
  inferred = t5x_checkpoints.t5_config_from_params(backbone, dropout_rate=0.0)
  assert inferred == utils.T5
  tied = config.t5_1_1_config(
      'tiny',
      vocab_size=utils.VOCAB,
      num_decoder_layers=3,
      logits_via_embedding=True,
  )
  assert (
      t5x_checkpoints.t5_config_from_params(utils.init_params(t5=tied)[1])
      == tied
  )
  with pytest.raises(ValueError, match='token_embedder'):
    t5x_checkpoints.t5_config_from_params({'encoder': {}})


def test_save_converted_params_writes_the_t5x_orbax_layout(backbone, tmp_path):
  out = str(tmp_path / 'converted')
  checkpoint_dir = t5x_checkpoints.save_converted_params(
      backbone, out, {'note': 1}
  )
  assert checkpoint_dir == os.path.join(out, 'checkpoint_0')
  with open(os.path.join(out, t5x_checkpoints.CONVERSION_INFO)) as f:
    assert json.load(f) == {'note': 1}
  for path in (out, checkpoint_dir):
    utils.assert_trees_equal(t5x_checkpoints.load_t5x_params(path), backbone)
  with pytest.raises(FileExistsError, match='not empty'):
    t5x_checkpoints.save_converted_params(backbone, out, {})
