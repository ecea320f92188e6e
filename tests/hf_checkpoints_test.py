"""Hugging Face T5 names and layouts -> this network's, without torch.

The logits of converted Hugging Face models are compared in
convert_checkpoint_test.py and network_parity_test.py (with transformers);
here a state dict is spelled out by hand from a parameter tree, as Hugging
Face names and transposes T5's weights, and read back.
"""

import json

import numpy as np
import pytest

from spt_jax.checkpoints import hf_checkpoints
from tests import params_test_utils as utils

HF_CONFIG = {
    'model_type': 't5',
    'vocab_size': utils.VOCAB,
    'd_model': 64,
    'num_heads': 4,
    'num_layers': 2,
    'num_decoder_layers': 2,
    'd_kv': 16,
    'd_ff': 128,
    'feed_forward_proj': 'gated-gelu',
    'dropout_rate': 0.0,
    'tie_word_embeddings': False,
}


def _hf_state_dict(params):
  """The Hugging Face T5 state dict of a parameter tree."""
  state = {'shared.weight': params['token_embedder']['embedding']}
  sublayers = {
      'encoder': [
          ('SelfAttention', 'attention', 'pre_attention_layer_norm'),
          ('DenseReluDense', 'mlp', 'pre_mlp_layer_norm'),
      ],
      'decoder': [
          ('SelfAttention', 'self_attention', 'pre_self_attention_layer_norm'),
          (
              'EncDecAttention',
              'encoder_decoder_attention',
              'pre_cross_attention_layer_norm',
          ),
          ('DenseReluDense', 'mlp', 'pre_mlp_layer_norm'),
      ],
  }
  for stack, parts in sublayers.items():
    tree = params[stack]
    state[
        f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.'
        'weight'
    ] = tree['relpos_bias']['rel_embedding'].T
    state[f'{stack}.final_layer_norm.weight'] = tree[f'{stack}_norm']['scale']
    for i in range(2):
      layer = tree[f'layers_{i}']
      for index, (hf_name, ours, norm) in enumerate(parts):
        prefix = f'{stack}.block.{i}.layer.{index}'
        state[f'{prefix}.layer_norm.weight'] = layer[norm]['scale']
        pairs = (
            zip('qkvo', ('query', 'key', 'value', 'out'))
            if hf_name != 'DenseReluDense'
            else [(n, n) for n in ('wi_0', 'wi_1', 'wo')]
        )
        for theirs, name in pairs:
          state[f'{prefix}.{hf_name}.{theirs}.weight'] = layer[ours][name][
              'kernel'
          ].T
  state['lm_head.weight'] = params['decoder']['logits_dense']['kernel'].T
  return state


@pytest.fixture(scope='module')
def backbone():
  return utils.init_params()[1]


def test_config_from_hf():
  assert hf_checkpoints.t5_config_from_hf(HF_CONFIG) == utils.T5
  # transformers 5 records T5 1.0's scaled, tied output this way.
  tied = {**HF_CONFIG, 'scale_decoder_outputs': True}
  assert hf_checkpoints.t5_config_from_hf(tied).logits_via_embedding
  relu = {**HF_CONFIG, 'feed_forward_proj': 'relu'}
  assert hf_checkpoints.t5_config_from_hf(relu).mlp_activations == ('relu',)
  with pytest.raises(ValueError, match="'bart' model, not a T5"):
    hf_checkpoints.t5_config_from_hf({**HF_CONFIG, 'model_type': 'bart'})


def test_state_dict_maps_onto_the_parameter_tree(backbone):
  params = hf_checkpoints.params_from_hf_state_dict(
      _hf_state_dict(backbone), utils.T5
  )
  utils.assert_trees_equal(params, backbone)
  state = _hf_state_dict(backbone)
  del state['encoder.final_layer_norm.weight']
  with pytest.raises(ValueError, match='lacks .encoder.final_layer_norm'):
    hf_checkpoints.params_from_hf_state_dict(state, utils.T5)


def test_load_hf_t5_reads_a_folder_and_checks_shapes(backbone, tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  # safetensors writes an array's buffer as is: transposes made contiguous.
  state = {
      k: np.ascontiguousarray(v) for k, v in _hf_state_dict(backbone).items()
  }
  save_file(state, str(tmp_path / 'model.safetensors'))
  (tmp_path / 'config.json').write_text(json.dumps(HF_CONFIG))
  cfg, params = hf_checkpoints.load_hf_t5(str(tmp_path))
  assert cfg == utils.T5
  utils.assert_trees_equal(params, backbone)
  (tmp_path / 'config.json').write_text(json.dumps({**HF_CONFIG, 'd_ff': 96}))
  with pytest.raises(ValueError, match='do not have the shapes'):
    hf_checkpoints.load_hf_t5(str(tmp_path))
  with pytest.raises(FileNotFoundError, match='No Hugging Face checkpoint'):
    hf_checkpoints.load_hf_t5(str(tmp_path / 'missing'))
