"""convert_checkpoint: a saved Hugging Face T5 in, an SPT checkpoint out."""

import json
import os
import subprocess
import sys

from flax import traverse_util
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip('torch')
pytest.importorskip('transformers')

from spt_jax.checkpoints import convert_checkpoint  # pylint: disable=g-import-not-at-top
from spt_jax.checkpoints import hf_checkpoints  # pylint: disable=g-import-not-at-top
from spt_jax.checkpoints import t5x_checkpoints  # pylint: disable=g-import-not-at-top
from spt_jax.local import train_checkpoints  # pylint: disable=g-import-not-at-top
from spt_jax.model import config  # pylint: disable=g-import-not-at-top
from spt_jax.model import network  # pylint: disable=g-import-not-at-top
from tests import t5_reference  # pylint: disable=g-import-not-at-top
from tests import xla_flags  # pylint: disable=g-import-not-at-top

ATOL = 1e-4
SPT = convert_checkpoint.spt_shapes_config(
    num_memories=8,
    memory_length=2,
    soft_prompt_length=3,
    memory_init='vocab_sample',
)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def hf_model(tmp_path_factory):
  """The tiny random T5 1.1 and the folder `save_pretrained` wrote it to."""
  model = t5_reference.tiny_hf_t5()
  folder = str(tmp_path_factory.mktemp('hf'))
  model.save_pretrained(folder)
  assert os.path.exists(os.path.join(folder, 'model.safetensors'))
  return model, folder


def _batch():
  rng = np.random.default_rng(1)
  encoder = rng.integers(2, 96, size=(3, 10))
  encoder[1, 6:] = 0
  targets = rng.integers(2, 96, size=(3, 5))
  decoder_inputs = np.concatenate([np.zeros((3, 1), int), targets[:, :-1]], 1)
  return encoder, decoder_inputs, targets


def _t5_config(output_dir):
  with open(os.path.join(output_dir, t5x_checkpoints.CONVERSION_INFO)) as f:
    fields = json.load(f)['t5_config']
  fields['dtype'] = getattr(jnp, fields['dtype'])
  fields['mlp_activations'] = tuple(fields['mlp_activations'])
  return config.T5Config(**fields)


def test_converted_backbone_gives_hf_logits(hf_model, tmp_path):
  model, folder = hf_model
  out = str(tmp_path / 'plain')
  convert_checkpoint.convert(out, hf_path=folder)
  params = train_checkpoints.load_params(out)
  assert 'memory_bank' not in params and 'soft_prompt' not in params
  cfg = _t5_config(out)
  assert cfg == hf_checkpoints.t5_config_from_hf(model.config.to_dict())
  encoder, decoder_inputs, targets = _batch()
  ours = network.SptTransformer(cfg).apply(
      {'params': params}, encoder, decoder_inputs, targets, enable_dropout=False
  )
  theirs = t5_reference.hf_logits(model, encoder, decoder_inputs)
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=ATOL, rtol=0)
  # The runner's loader reads the Hugging Face folder itself the same way.
  direct = traverse_util.flatten_dict(
      train_checkpoints.load_params(folder), sep='/'
  )
  for name, value in traverse_util.flatten_dict(params, sep='/').items():
    np.testing.assert_array_equal(direct[name], value, err_msg=name)


def test_spt_conversion_keeps_hf_weights_bit_identical(hf_model, tmp_path):
  model, folder = hf_model
  out = str(tmp_path / 'spt')
  convert_checkpoint.convert(out, hf_path=folder, spt=SPT, seed=3)
  params = train_checkpoints.load_params(out)  # What the local runner reads.
  _, hf_params = t5_reference.converted(model)
  flat = traverse_util.flatten_dict(params, sep='/')
  flat_hf = traverse_util.flatten_dict(hf_params, sep='/')
  assert set(flat) - set(flat_hf) == {
      'memory_bank/keys',
      'memory_bank/values',
      'soft_prompt/prompt',
  }
  for name, value in flat_hf.items():
    assert flat[name].dtype == np.float32
    np.testing.assert_array_equal(flat[name], value, err_msg=name)
  # Spot-check against the torch tensors themselves, [out, in] -> [in, out].
  state = t5_reference.state_dict_numpy(model)
  np.testing.assert_array_equal(
      params['encoder']['layers_1']['mlp']['wi_0']['kernel'],
      state['encoder.block.1.layer.1.DenseReluDense.wi_0.weight'].T,
  )
  assert params['memory_bank']['values'].shape == (8, 2, 32)
  assert params['soft_prompt']['prompt'].shape == (3, 32)
  # vocab_sample: memories are rows of the pretrained embedding table.
  table = state['shared.weight']
  first = params['memory_bank']['values'][0, 0]
  assert np.any(np.all(first == table, axis=-1))

  # The converted checkpoint is itself a T5X orbax checkpoint: convert again.
  again = str(tmp_path / 'again')
  convert_checkpoint.convert(again, t5x_path=os.path.join(out, 'checkpoint_0'))
  reread = traverse_util.flatten_dict(
      train_checkpoints.load_params(again), sep='/'
  )
  assert sorted(reread) == sorted(flat)
  for name, value in flat.items():
    np.testing.assert_array_equal(reread[name], value, err_msg=name)
  encoder, decoder_inputs, targets = _batch()
  net = network.SptTransformer(_t5_config(again), SPT)
  logits = net.apply(
      {'params': train_checkpoints.load_params(again)},
      encoder,
      decoder_inputs,
      targets,
      enable_dropout=False,
  )
  assert logits.shape == (3, 5, 96)


def test_refuses_a_non_empty_output_dir(hf_model, tmp_path):
  _, folder = hf_model
  out = tmp_path / 'taken'
  out.mkdir()
  (out / 'keep.txt').write_text('precious')
  with pytest.raises(FileExistsError, match='not empty'):
    convert_checkpoint.convert(str(out), hf_path=folder)
  assert os.listdir(out) == ['keep.txt']
  assert (out / 'keep.txt').read_text() == 'precious'
  with pytest.raises(ValueError, match='exactly one'):
    convert_checkpoint.convert(str(tmp_path / 'new'))


def test_command_line(hf_model, tmp_path):
  _, folder = hf_model
  out = str(tmp_path / 'cli')
  command = [
      sys.executable,
      '-m',
      'spt_jax.checkpoints.convert_checkpoint',
      f'--hf_path={folder}',
      f'--output_dir={out}',
      '--num_memories=4',
      '--memory_length=2',
      '--memory_init=vocab_sample',
      '--seed=1',
  ]
  env = {
      **os.environ,
      'JAX_PLATFORMS': 'cpu',
      'XLA_FLAGS': xla_flags.xla_flags(1),
  }
  done = subprocess.run(
      command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120
  )
  assert done.returncode == 0, done.stderr
  assert 'INITIAL_CHECKPOINT_PATH' in done.stdout
  params = train_checkpoints.load_params(out)
  assert params['memory_bank']['values'].shape == (4, 2, 32)
  again = subprocess.run(
      command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120
  )
  assert again.returncode != 0
  assert 'not empty' in again.stderr


def _copy_with_config(folder, destination, **changes):
  """The Hugging Face folder with config.json fields changed."""
  os.makedirs(destination)
  for name in os.listdir(folder):
    with open(os.path.join(folder, name), 'rb') as f:
      data = f.read()
    if name == 'config.json':
      data = json.dumps({**json.loads(data), **changes}).encode()
    with open(os.path.join(destination, name), 'wb') as f:
      f.write(data)
  return destination


@pytest.mark.parametrize(
    'changes, message',
    [
        (dict(d_model=48), 'do not have the shapes their config gives'),
        (dict(model_type='bert', d_model=None), "a 'bert' model, not a T5"),
    ],
)
def test_a_config_that_does_not_fit_the_weights_is_refused(
    hf_model, tmp_path, changes, message
):
  _, folder = hf_model
  changes = {k: v for k, v in changes.items() if v is not None}
  source = _copy_with_config(folder, str(tmp_path / 'source'), **changes)
  if 'model_type' in changes:  # A BERT config has no T5 fields at all.
    with open(os.path.join(source, 'config.json')) as f:
      config_json = json.load(f)
    config_json.pop('d_model')
    with open(os.path.join(source, 'config.json'), 'w') as f:
      json.dump(config_json, f)
  out = str(tmp_path / 'out')
  with pytest.raises(ValueError, match=message):
    convert_checkpoint.convert(out, hf_path=source)
  assert not os.path.exists(out)


def test_command_line_errors_are_short_and_name_the_path(tmp_path):
  missing = str(tmp_path / 'no_such_model')
  done = subprocess.run(
      [
          sys.executable,
          '-m',
          'spt_jax.checkpoints.convert_checkpoint',
          f'--hf_path={missing}',
          f'--output_dir={tmp_path / "out"}',
      ],
      cwd=REPO,
      env={
          **os.environ,
          'JAX_PLATFORMS': 'cpu',
          'XLA_FLAGS': xla_flags.xla_flags(1),
      },
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert done.returncode == 1
  assert f"No Hugging Face checkpoint at '{missing}'" in done.stderr
  assert 'Traceback' not in done.stderr
