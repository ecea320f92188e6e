"""T5X checkpoints read without T5X; SPT params initialised, exported, read."""

import json
import os

from flax import serialization
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts

from spt_jax import checkpoints
from spt_jax import config
from spt_jax import network

VOCAB = 64
T5 = config.t5_1_1_config('tiny', vocab_size=VOCAB, dropout_rate=0.0)
SPT = config.SptConfig(
    num_memories=12, memory_length=3, top_k=2, soft_prompt_length=2
)
SHAPES = dict(enc=(2, 9), dec=(2, 5))


def _init(spt=config.NO_SPT, t5=T5, seed=0):
  net = network.SptTransformer(t5, spt)
  variables = net.init(
      jax.random.PRNGKey(seed),
      jnp.ones(SHAPES['enc'], jnp.int32),
      jnp.ones(SHAPES['dec'], jnp.int32),
      jnp.ones(SHAPES['dec'], jnp.int32),
      enable_dropout=False,
  )
  return net, jax.tree.map(np.asarray, dict(variables['params']))


@pytest.fixture(scope='module')
def backbone():
  return _init()[1]


def _logits(net, params):
  rng = np.random.default_rng(0)
  enc = rng.integers(2, VOCAB, size=SHAPES['enc'])
  enc[1, 6:] = 0
  dec = rng.integers(2, VOCAB, size=SHAPES['dec'])
  return np.asarray(
      net.apply({'params': params}, enc, dec, dec, enable_dropout=False)
  )


def _assert_trees_equal(actual, expected):
  flat_actual = traverse_util.flatten_dict(actual, sep='/')
  flat_expected = traverse_util.flatten_dict(expected, sep='/')
  assert sorted(flat_actual) == sorted(flat_expected)
  for name, value in flat_expected.items():
    assert flat_actual[name].dtype == value.dtype, name
    np.testing.assert_array_equal(flat_actual[name], value, err_msg=name)


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
        'driver': 'gcs', 'bucket': 't5x-dummy-bucket', 'path': name
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
        {**spec, 'kvstore': {'driver': 'file',
                             'path': os.path.join(checkpoint_dir, name)}},
        create=True, open=True,
    ).result()
    store.write(array).result()
    written[path] = spec
  param_states = {
      path: {'v_row': np.ones(v.shape[:1], np.float32),
             'v_col': np.ones(v.shape[1:2], np.float32)}
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
  return traverse_util.unflatten_dict({
      k: v.astype(ml_dtypes.bfloat16).astype(np.float32)
      if k[-1] == 'rel_embedding' else v
      for k, v in flat.items()
  })


def test_legacy_t5x_checkpoint_loads_target_only(backbone, tmp_path):
  write_legacy_t5x_checkpoint(str(tmp_path), backbone, step=10)
  latest = write_legacy_t5x_checkpoint(str(tmp_path), backbone, step=20)
  expected = _bf16_rounded(backbone)
  for path in (latest, os.path.join(latest, 'checkpoint'), str(tmp_path)):
    _assert_trees_equal(checkpoints.load_t5x_params(path), expected)


def test_legacy_t5x_params_give_the_same_logits(backbone, tmp_path):
  # The same network on the loaded tree as on the tree that was written.
  path = write_legacy_t5x_checkpoint(str(tmp_path), backbone)
  net = network.SptTransformer(T5)
  np.testing.assert_array_equal(
      _logits(net, checkpoints.load_t5x_params(path)),
      _logits(net, _bf16_rounded(backbone)),
  )


def test_orbax_t5x_checkpoint_loads_target_only(backbone, tmp_path):
  state = {
      'target': backbone,
      'state': {'step': np.int32(7), 'param_states': {'x': np.zeros(3)}},
  }
  state_dir = os.path.join(str(tmp_path), 'checkpoint_7', 'state')
  ocp.PyTreeCheckpointer().save(state_dir, args=ocp.args.PyTreeSave(state))
  for path in (state_dir, os.path.dirname(state_dir), str(tmp_path)):
    _assert_trees_equal(checkpoints.load_t5x_params(path), backbone)


def test_t5x_errors_name_the_problem(backbone, tmp_path):
  with pytest.raises(FileNotFoundError, match='No T5X checkpoint'):
    checkpoints.load_t5x_params(str(tmp_path / 'missing'))
  with pytest.raises(FileNotFoundError, match='neither'):
    checkpoints.load_t5x_params(str(tmp_path))
  tf_index = tmp_path / 'tf' / 'checkpoint'
  tf_index.parent.mkdir()
  tf_index.write_text('model_checkpoint_path: "model.ckpt-1"')
  with pytest.raises(ValueError, match='TensorFlow'):
    checkpoints.load_t5x_params(str(tf_index.parent))
  path = write_legacy_t5x_checkpoint(str(tmp_path / 'broken'), backbone)
  missing = 'target.token_embedder.embedding'
  os.rename(os.path.join(path, missing), os.path.join(path, 'moved'))
  with pytest.raises(FileNotFoundError, match=missing):
    checkpoints.load_t5x_params(path)


def test_t5_config_from_params(backbone):
  inferred = checkpoints.t5_config_from_params(backbone, dropout_rate=0.0)
  assert inferred == T5
  tied = config.t5_1_1_config(
      'tiny', vocab_size=VOCAB, num_decoder_layers=3, logits_via_embedding=True
  )
  assert checkpoints.t5_config_from_params(_init(t5=tied)[1]) == tied
  with pytest.raises(ValueError, match='token_embedder'):
    checkpoints.t5_config_from_params({'encoder': {}})


# SPT parameters on a loaded backbone.


@pytest.mark.parametrize('spt', [
    SPT,
    config.SptConfig(num_memories=8, memory_length=2, top_k=2, key_dim=16),
])
def test_initialize_spt_params_matches_the_network(backbone, spt):
  initialized = checkpoints.initialize_spt_params(
      backbone, jax.random.PRNGKey(1), spt
  )
  _, reference = _init(spt)
  shapes = jax.tree.map(np.shape, initialized)
  assert shapes == jax.tree.map(np.shape, reference)
  for group in ('token_embedder', 'encoder', 'decoder'):
    assert initialized[group] is backbone[group]  # The backbone is untouched.
  values = initialized['memory_bank']['values']
  assert np.all(np.abs(values) <= spt.memory_init_scale)
  assert np.all(np.abs(initialized['memory_bank']['keys']) <= 1.0)
  net = network.SptTransformer(T5, spt)
  assert np.all(np.isfinite(_logits(net, initialized)))


def test_initialize_spt_params_from_vocab(backbone):
  initialized = checkpoints.initialize_spt_params(
      backbone, jax.random.PRNGKey(2), SPT, from_vocab=True
  )
  table = backbone['token_embedder']['embedding']
  rows = np.concatenate([
      initialized['memory_bank']['values'].reshape(-1, T5.emb_dim),
      initialized['soft_prompt']['prompt'],
  ])
  # Every vector is a row of the embedding table, and they are not all one row.
  matches = np.all(rows[:, None, :] == table[None, :, :], axis=-1)
  assert np.all(matches.any(axis=1))
  assert len(np.unique(matches.argmax(axis=1))) > 5
  uniform = checkpoints.initialize_spt_params(
      backbone, jax.random.PRNGKey(2), SPT, from_vocab=False
  )
  assert not np.any(
      np.all(uniform['memory_bank']['values'][0, 0] == table, axis=-1)
  )
  with pytest.raises(ValueError, match='already hold'):
    checkpoints.initialize_spt_params(initialized, jax.random.PRNGKey(0), SPT)


@pytest.mark.parametrize('suffix', ['.safetensors', '.npz'])
def test_export_import_round_trip_is_bit_exact(backbone, tmp_path, suffix):
  spt = config.SptConfig(
      num_memories=8, memory_length=2, top_k=2, key_dim=16,
      soft_prompt_length=3, similarity='dot', temperature=0.5,
  )
  trained = checkpoints.initialize_spt_params(
      backbone, jax.random.PRNGKey(3), spt
  )
  path = str(tmp_path / 'sub' / f'spt{suffix}')
  assert checkpoints.export_spt_params(trained, path, spt) == path
  # Only the SPT leaves travel: the file is far smaller than the model.
  spt_bytes = sum(
      v.nbytes for g in ('memory_bank', 'soft_prompt')
      for v in jax.tree.leaves(trained[g])
  )
  assert os.path.getsize(path) < spt_bytes + 4096

  groups, read_config = checkpoints.read_spt_params(path)
  assert read_config == spt
  assert sorted(traverse_util.flatten_dict(groups, sep='/')) == [
      'memory_bank/keys', 'memory_bank/query_projection/kernel',
      'memory_bank/values', 'soft_prompt/prompt',
  ]
  # Onto the bare backbone, and over a differently initialised SPT tree.
  other = checkpoints.initialize_spt_params(
      backbone, jax.random.PRNGKey(4), spt
  )
  for base in (backbone, other):
    imported = checkpoints.import_spt_params(base, path)
    _assert_trees_equal(imported, trained)
  net = network.SptTransformer(T5, spt)
  np.testing.assert_array_equal(
      _logits(net, imported), _logits(net, trained)
  )


def test_export_import_errors(backbone, tmp_path):
  trained = checkpoints.initialize_spt_params(
      backbone, jax.random.PRNGKey(0), SPT
  )
  path = str(tmp_path / 'spt.safetensors')
  with pytest.raises(ValueError, match='no memory_bank or soft_prompt'):
    checkpoints.export_spt_params(backbone, path, SPT)
  with pytest.raises(ValueError, match="'memory_bank/keys' has shape"):
    checkpoints.export_spt_params(
        trained, path, config.SptConfig(num_memories=16, top_k=2,
                                        memory_length=3, soft_prompt_length=2)
    )
  with pytest.raises(ValueError, match='.safetensors or .npz'):
    checkpoints.export_spt_params(trained, str(tmp_path / 'spt.bin'), SPT)
  with pytest.raises(FileNotFoundError, match='No exported SPT parameters'):
    checkpoints.import_spt_params(backbone, str(tmp_path / 'missing.npz'))

  checkpoints.export_spt_params(trained, path, SPT)
  bigger = config.SptConfig(
      num_memories=16, memory_length=3, top_k=2, soft_prompt_length=2
  )
  other = checkpoints.initialize_spt_params(
      backbone, jax.random.PRNGKey(0), bigger
  )
  shape_error = r"'memory_bank/keys' has shape \(12, 64\)"
  with pytest.raises(ValueError, match=shape_error):
    checkpoints.import_spt_params(other, path)
  wide = _init(t5=config.t5_1_1_config('tiny', vocab_size=VOCAB, emb_dim=32))[1]
  with pytest.raises(ValueError, match='width 64, the base model 32'):
    checkpoints.import_spt_params(wide, path)
  no_prompt = config.SptConfig(num_memories=12, memory_length=3, top_k=2)
  with pytest.raises(ValueError, match='hold SPT leaves'):
    checkpoints.import_spt_params(
        checkpoints.initialize_spt_params(
            backbone, jax.random.PRNGKey(0), no_prompt
        ),
        path,
    )
  foreign = str(tmp_path / 'foreign.npz')
  np.savez(foreign, x=np.zeros(3))
  with pytest.raises(ValueError, match='not written by export_spt_params'):
    checkpoints.read_spt_params(foreign)


def test_converted_params_and_load_params(backbone, tmp_path):
  params = checkpoints.initialize_spt_params(
      backbone, jax.random.PRNGKey(0), SPT
  )
  out = str(tmp_path / 'converted')
  checkpoint_dir = checkpoints.save_converted_params(params, out, {'note': 1})
  assert checkpoint_dir == os.path.join(out, 'checkpoint_0')
  with open(os.path.join(out, checkpoints.CONVERSION_INFO)) as f:
    assert json.load(f) == {'note': 1}
  for path in (out, checkpoint_dir):
    _assert_trees_equal(checkpoints.load_params(path), params)
  with pytest.raises(FileExistsError, match='not empty'):
    checkpoints.save_converted_params(params, out, {})

  # A local run's MODEL_DIR: the params of its latest train state.
  store = checkpoints.TrainCheckpoints(str(tmp_path / 'run'))
  store.save(3, {'step': np.int32(3), 'params': params})
  store.close()
  _assert_trees_equal(checkpoints.load_params(str(tmp_path / 'run')), params)
