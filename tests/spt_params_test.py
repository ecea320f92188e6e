"""SPT parameters: which they are, initialised on a backbone, exported, read."""

import os

from flax import traverse_util
import jax
import numpy as np
import pytest

from spt_jax.checkpoints import spt_params
from spt_jax.model import config
from spt_jax.model import network
from tests import params_test_utils as utils


@pytest.fixture(scope='module')
def backbone():
  return utils.init_params()[1]


def test_is_spt_param_and_split():
  assert spt_params.is_spt_param('/memory_bank/keys')
  assert spt_params.is_spt_param('soft_prompt/prompt')
  assert not spt_params.is_spt_param('/encoder/layers_0/attention/query/kernel')
  spt, backbone = spt_params.split_spt_params(
      {'memory_bank': 1, 'soft_prompt': 2, 'encoder': 3}
  )
  assert spt == {'memory_bank': 1, 'soft_prompt': 2}
  assert backbone == {'encoder': 3}


@pytest.mark.parametrize(
    'spt',
    [
        utils.SPT,
        config.SptConfig(num_memories=8, memory_length=2, top_k=2, key_dim=16),
    ],
)
def test_initialize_spt_params_matches_the_network(backbone, spt):
  initialized = spt_params.initialize_spt_params(
      backbone, jax.random.PRNGKey(1), spt
  )
  _, reference = utils.init_params(spt)
  shapes = jax.tree.map(np.shape, initialized)
  assert shapes == jax.tree.map(np.shape, reference)
  for group in ('token_embedder', 'encoder', 'decoder'):
    assert initialized[group] is backbone[group]  # The backbone is untouched.
  values = initialized['memory_bank']['values']
  assert np.all(np.abs(values) <= spt.memory_init_scale)
  assert np.all(np.abs(initialized['memory_bank']['keys']) <= 1.0)
  net = network.SptTransformer(utils.T5, spt)
  assert np.all(np.isfinite(utils.logits(net, initialized)))


def test_initialize_spt_params_from_vocab(backbone):
  initialized = spt_params.initialize_spt_params(
      backbone, jax.random.PRNGKey(2), utils.SPT, from_vocab=True
  )
  table = backbone['token_embedder']['embedding']
  rows = np.concatenate(
      [
          initialized['memory_bank']['values'].reshape(-1, utils.T5.emb_dim),
          initialized['soft_prompt']['prompt'],
      ]
  )
  # Every vector is a row of the embedding table, and they are not all one row.
  matches = np.all(rows[:, None, :] == table[None, :, :], axis=-1)
  assert np.all(matches.any(axis=1))
  assert len(np.unique(matches.argmax(axis=1))) > 5
  uniform = spt_params.initialize_spt_params(
      backbone, jax.random.PRNGKey(2), utils.SPT, from_vocab=False
  )
  assert not np.any(
      np.all(uniform['memory_bank']['values'][0, 0] == table, axis=-1)
  )
  with pytest.raises(ValueError, match='already hold'):
    spt_params.initialize_spt_params(
        initialized, jax.random.PRNGKey(0), utils.SPT
    )


@pytest.mark.parametrize('suffix', ['.safetensors', '.npz'])
def test_export_import_round_trip_is_bit_exact(backbone, tmp_path, suffix):
  spt = config.SptConfig(
      num_memories=8,
      memory_length=2,
      top_k=2,
      key_dim=16,
      soft_prompt_length=3,
      similarity='dot',
      temperature=0.5,
  )
  trained = spt_params.initialize_spt_params(
      backbone, jax.random.PRNGKey(3), spt
  )
  path = str(tmp_path / 'sub' / f'spt{suffix}')
  assert spt_params.export_spt_params(trained, path, spt) == path
  # Only the utils.SPT leaves travel: the file is far smaller than the model.
  spt_bytes = sum(
      v.nbytes
      for g in ('memory_bank', 'soft_prompt')
      for v in jax.tree.leaves(trained[g])
  )
  assert os.path.getsize(path) < spt_bytes + 4096

  groups, read_config = spt_params.read_spt_params(path)
  assert read_config == spt
  assert sorted(traverse_util.flatten_dict(groups, sep='/')) == [
      'memory_bank/keys',
      'memory_bank/query_projection/kernel',
      'memory_bank/values',
      'soft_prompt/prompt',
  ]
  # Onto the bare backbone, and over a differently initialised utils.SPT tree.
  other = spt_params.initialize_spt_params(backbone, jax.random.PRNGKey(4), spt)
  for base in (backbone, other):
    imported = spt_params.import_spt_params(base, path)
    utils.assert_trees_equal(imported, trained)
  net = network.SptTransformer(utils.T5, spt)
  np.testing.assert_array_equal(
      utils.logits(net, imported), utils.logits(net, trained)
  )


def test_export_import_errors(backbone, tmp_path):
  trained = spt_params.initialize_spt_params(
      backbone, jax.random.PRNGKey(0), utils.SPT
  )
  path = str(tmp_path / 'spt.safetensors')
  with pytest.raises(ValueError, match='no memory_bank or soft_prompt'):
    spt_params.export_spt_params(backbone, path, utils.SPT)
  with pytest.raises(ValueError, match="'memory_bank/keys' has shape"):
    spt_params.export_spt_params(
        trained,
        path,
        config.SptConfig(
            num_memories=16, top_k=2, memory_length=3, soft_prompt_length=2
        ),
    )
  with pytest.raises(ValueError, match='.safetensors or .npz'):
    spt_params.export_spt_params(trained, str(tmp_path / 'spt.bin'), utils.SPT)
  with pytest.raises(FileNotFoundError, match='No exported SPT parameters'):
    spt_params.import_spt_params(backbone, str(tmp_path / 'missing.npz'))

  spt_params.export_spt_params(trained, path, utils.SPT)
  bigger = config.SptConfig(
      num_memories=16, memory_length=3, top_k=2, soft_prompt_length=2
  )
  other = spt_params.initialize_spt_params(
      backbone, jax.random.PRNGKey(0), bigger
  )
  shape_error = r"'memory_bank/keys' has shape \(12, 64\)"
  with pytest.raises(ValueError, match=shape_error):
    spt_params.import_spt_params(other, path)
  wide = utils.init_params(
      t5=config.t5_1_1_config('tiny', vocab_size=utils.VOCAB, emb_dim=32)
  )[1]
  with pytest.raises(ValueError, match='width 64, the base model 32'):
    spt_params.import_spt_params(wide, path)
  no_prompt = config.SptConfig(num_memories=12, memory_length=3, top_k=2)
  with pytest.raises(ValueError, match='hold SPT leaves'):
    spt_params.import_spt_params(
        spt_params.initialize_spt_params(
            backbone, jax.random.PRNGKey(0), no_prompt
        ),
        path,
    )
  foreign = str(tmp_path / 'foreign.npz')
  np.savez(foreign, x=np.zeros(3))
  with pytest.raises(ValueError, match='not written by export_spt_params'):
    spt_params.read_spt_params(foreign)
