"""Hugging Face T5 checkpoints (T5 1.1, T5-LM-adapt, T0) in this network's layout.

Names map one by one onto the T5X layout this network uses; torch `Linear`
weights are [out, in] and are transposed into T5X's [in, out] kernels.
"""

import json
import os
from typing import Any, Dict, Mapping, Tuple

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from spt_jax.model.config import T5Config

Params = Dict[str, Any]

_HF_ATTENTION = {'q': 'query', 'k': 'key', 'v': 'value', 'o': 'out'}
# (HF sub-layer index, HF module, our module, our layer norm) per stack.
_HF_ENCODER_SUBLAYERS = (
    (0, 'SelfAttention', 'attention', 'pre_attention_layer_norm'),
    (1, 'DenseReluDense', 'mlp', 'pre_mlp_layer_norm'),
)
_HF_DECODER_SUBLAYERS = (
    (0, 'SelfAttention', 'self_attention', 'pre_self_attention_layer_norm'),
    (
        1,
        'EncDecAttention',
        'encoder_decoder_attention',
        'pre_cross_attention_layer_norm',
    ),
    (2, 'DenseReluDense', 'mlp', 'pre_mlp_layer_norm'),
)


def _scales_decoder_outputs(hf_config: Mapping[str, Any]) -> bool:
  """Whether logits come from the embedding scaled by 1/sqrt(H) (T5 1.0).

  T5 1.1 configs say `tie_word_embeddings: false`; transformers 5 always ties
  and records the scaling as `scale_decoder_outputs` instead.
  """
  if 'scale_decoder_outputs' in hf_config:
    return bool(hf_config['scale_decoder_outputs'])
  return bool(hf_config.get('tie_word_embeddings', True))


# config.json fields every Hugging Face T5 has.
_HF_T5_FIELDS = (
    'vocab_size',
    'd_model',
    'num_heads',
    'num_layers',
    'd_kv',
    'd_ff',
)


def t5_config_from_hf(hf_config: Mapping[str, Any], **overrides) -> T5Config:
  """A `T5Config` from a Hugging Face T5 `config.json` (as a dict)."""
  model_type = hf_config.get('model_type', 't5')
  missing = [k for k in _HF_T5_FIELDS if k not in hf_config]
  if missing or model_type not in ('t5', 'mt5'):
    raise ValueError(
        f'config.json describes a {model_type!r} model, not a T5'
        + (f' (it has no {", ".join(missing)})' if missing else '')
        + '. Only T5 checkpoints (T5 1.1, T5-LM-adapt, T0) convert.'
    )
  projection = hf_config.get('feed_forward_proj', 'relu')
  if projection not in ('gated-gelu', 'relu', 'gated-relu'):
    raise ValueError(f'Unsupported feed_forward_proj {projection!r}.')
  activations = {
      'gated-gelu': ('gelu', 'linear'),
      'gated-relu': ('relu', 'linear'),
      'relu': ('relu',),
  }[projection]
  fields = dict(
      vocab_size=hf_config['vocab_size'],
      emb_dim=hf_config['d_model'],
      num_heads=hf_config['num_heads'],
      num_encoder_layers=hf_config['num_layers'],
      num_decoder_layers=hf_config.get('num_decoder_layers')
      or hf_config['num_layers'],
      head_dim=hf_config['d_kv'],
      mlp_dim=hf_config['d_ff'],
      mlp_activations=activations,
      dropout_rate=hf_config.get('dropout_rate', 0.1),
      logits_via_embedding=_scales_decoder_outputs(hf_config),
      relative_attention_num_buckets=hf_config.get(
          'relative_attention_num_buckets', 32
      ),
      relative_attention_max_distance=hf_config.get(
          'relative_attention_max_distance', 128
      ),
  )
  fields.update(overrides)
  return T5Config(**fields)


def _hf_stack(state: Mapping[str, np.ndarray], stack: str, cfg: T5Config):
  num_layers = (
      cfg.num_encoder_layers if stack == 'encoder' else cfg.num_decoder_layers
  )
  sublayers = (
      _HF_ENCODER_SUBLAYERS if stack == 'encoder' else _HF_DECODER_SUBLAYERS
  )
  tree: Params = {
      'relpos_bias': {
          'rel_embedding': state[
              f'{stack}.block.0.layer.0.SelfAttention.'
              'relative_attention_bias.weight'
          ].T
      },
      f'{stack}_norm': {'scale': state[f'{stack}.final_layer_norm.weight']},
  }
  for i in range(num_layers):
    layer: Params = {}
    for index, hf_module, module, norm in sublayers:
      prefix = f'{stack}.block.{i}.layer.{index}'
      layer[norm] = {'scale': state[f'{prefix}.layer_norm.weight']}
      if hf_module == 'DenseReluDense':
        names = [
            n
            for n in ('wi', 'wi_0', 'wi_1', 'wo')
            if f'{prefix}.{hf_module}.{n}.weight' in state
        ]
        layer[module] = {
            n: {'kernel': state[f'{prefix}.{hf_module}.{n}.weight'].T}
            for n in names
        }
      else:
        layer[module] = {
            ours: {'kernel': state[f'{prefix}.{hf_module}.{theirs}.weight'].T}
            for theirs, ours in _HF_ATTENTION.items()
        }
    tree[f'layers_{i}'] = layer
  return tree


def params_from_hf_state_dict(
    state: Mapping[str, np.ndarray], cfg: T5Config
) -> Params:
  """The backbone parameter tree from a Hugging Face T5 state dict.

  Args:
    state: parameter name -> array, as in `model.safetensors`.
    cfg: the backbone config the tree is for (see `t5_config_from_hf`).

  Returns:
    A nested dict with `token_embedder`, `encoder` and `decoder` (float32).
  """
  state = {k: np.asarray(v, np.float32) for k, v in state.items()}
  try:
    params = {
        'token_embedder': {'embedding': state['shared.weight']},
        'encoder': _hf_stack(state, 'encoder', cfg),
        'decoder': _hf_stack(state, 'decoder', cfg),
    }
    if not cfg.logits_via_embedding:
      # transformers 5 saves T5 1.1 with the output layer tied to `shared`.
      output = state.get('lm_head.weight', state['shared.weight'])
      params['decoder']['logits_dense'] = {'kernel': output.T}
  except KeyError as e:
    raise ValueError(
        f'The Hugging Face state dict lacks {e.args[0]!r}; is it a T5 '
        f'checkpoint with the layer counts of {cfg}?'
    ) from None
  return params


def load_hf_state_dict(path: str) -> Dict[str, np.ndarray]:
  """Reads `model.safetensors` or `pytorch_model.bin` from a file or folder."""
  if os.path.isdir(path):
    for name in ('model.safetensors', 'pytorch_model.bin'):
      if os.path.exists(os.path.join(path, name)):
        path = os.path.join(path, name)
        break
    else:
      raise FileNotFoundError(
          f'No model.safetensors or pytorch_model.bin in {path!r}.'
      )
  if not os.path.exists(path):
    raise FileNotFoundError(f'No Hugging Face checkpoint at {path!r}.')
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

    return load_file(path)
  import torch  # pylint: disable=g-import-not-at-top

  state = torch.load(path, map_location='cpu', weights_only=True)
  return {k: v.float().numpy() for k, v in state.items()}


def load_hf_config(path: str) -> Dict[str, Any]:
  """Reads `config.json` from a Hugging Face checkpoint folder."""
  config_path = os.path.join(path, 'config.json')
  if not os.path.exists(config_path):
    raise FileNotFoundError(f'No config.json in {path!r}.')
  with open(config_path) as f:
    return json.load(f)


def check_backbone_shapes(params: Params, cfg: T5Config) -> None:
  """Raises unless every backbone weight has the shape `cfg` gives it."""
  from spt_jax.model import network  # pylint: disable=g-import-not-at-top

  module = network.SptTransformer(cfg)
  tokens = jnp.ones((1, 2), jnp.int32)
  expected = jax.eval_shape(
      lambda: module.init(
          jax.random.PRNGKey(0), tokens, tokens, tokens, enable_dropout=False
      )
  )['params']
  expected = traverse_util.flatten_dict(dict(expected), sep='/')
  wrong = [
      f'{name} {tuple(np.shape(value))} (expected {expected[name].shape})'
      for name, value in traverse_util.flatten_dict(params, sep='/').items()
      if name in expected and tuple(np.shape(value)) != expected[name].shape
  ]
  if wrong:
    raise ValueError(
        f'The weights do not have the shapes their config gives (emb_dim '
        f'{cfg.emb_dim}, {cfg.num_heads} heads of {cfg.head_dim}, mlp_dim '
        f'{cfg.mlp_dim}, vocabulary {cfg.vocab_size}): '
        + '; '.join(wrong[:4])
        + (f'; and {len(wrong) - 4} more' if len(wrong) > 4 else '')
        + '. Is config.json the one of these weights?'
    )


def load_hf_t5(path: str) -> Tuple[T5Config, Params]:
  """(T5Config, backbone params) of a Hugging Face T5 folder or weights file.

  The config is read from `config.json` beside the weights, and checked
  against their shapes.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'No Hugging Face checkpoint at {path!r}: no such file or folder.'
    )
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  cfg = t5_config_from_hf(load_hf_config(folder))
  params = params_from_hf_state_dict(load_hf_state_dict(path), cfg)
  check_backbone_shapes(params, cfg)
  return cfg, params
