"""Checkpoints: pretrained T5 weights in, and the local runner's train states.

Hugging Face T5 checkpoints (T5 1.1, T5-LM-adapt, T0) map name by name onto
the T5X layout this network uses; torch `Linear` weights are [out, in] and are
transposed into T5X's [in, out] kernels. T5X checkpoints (the legacy msgpack +
TensorStore format, and orbax) are read without T5X; their names are already
this network's. `TrainCheckpoints` saves and restores the local runner's
sharded train states with orbax.

SPT's own parameters (`memory_bank/...`, `soft_prompt/prompt`) are initialised
onto a loaded backbone with `initialize_spt_params`, and travel alone, as a
small safetensors or npz file, through `export_spt_params` /
`import_spt_params`. `load_params` reads whichever starting point the local
runner is given: a pretrained or converted checkpoint, or a run's MODEL_DIR.
"""

import dataclasses
import errno
import json
import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple

from absl import logging
from flax import serialization
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from spt_jax import memory_bank
from spt_jax import prompts
from spt_jax.config import SptConfig, T5Config
from spt_jax.trainer import SPT_PARAM_GROUPS

Params = Dict[str, Any]

_HF_ATTENTION = {'q': 'query', 'k': 'key', 'v': 'value', 'o': 'out'}
# (HF sub-layer index, HF module, our module, our layer norm) per stack.
_HF_ENCODER_SUBLAYERS = (
    (0, 'SelfAttention', 'attention', 'pre_attention_layer_norm'),
    (1, 'DenseReluDense', 'mlp', 'pre_mlp_layer_norm'),
)
_HF_DECODER_SUBLAYERS = (
    (0, 'SelfAttention', 'self_attention', 'pre_self_attention_layer_norm'),
    (1, 'EncDecAttention', 'encoder_decoder_attention',
     'pre_cross_attention_layer_norm'),
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
_HF_T5_FIELDS = ('vocab_size', 'd_model', 'num_heads', 'num_layers', 'd_kv',
                 'd_ff')


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
        names = [n for n in ('wi', 'wi_0', 'wi_1', 'wo')
                 if f'{prefix}.{hf_module}.{n}.weight' in state]
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
  from spt_jax import network  # pylint: disable=g-import-not-at-top
  module = network.SptTransformer(cfg)
  tokens = jnp.ones((1, 2), jnp.int32)
  expected = jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0), tokens, tokens, tokens,
                          enable_dropout=False))['params']
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
        f'No Hugging Face checkpoint at {path!r}: no such file or folder.')
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  cfg = t5_config_from_hf(load_hf_config(folder))
  params = params_from_hf_state_dict(load_hf_state_dict(path), cfg)
  check_backbone_shapes(params, cfg)
  return cfg, params


def merge_params(initial: Params, pretrained: Params, where: str = '') -> Params:
  """`initial` with every leaf that `pretrained` has replaced by it.

  Parameters only `initial` has (the memory bank, the soft prompt) keep their
  initial values; a pretrained leaf with no place, or of another shape, is an
  error.
  """
  merged = dict(initial)
  for name, value in pretrained.items():
    path = f'{where}/{name}' if where else name
    if name not in initial:
      raise ValueError(f'Pretrained parameter {path!r} has no place in the network.')
    if isinstance(value, Mapping):
      merged[name] = merge_params(initial[name], value, path)
    else:
      if tuple(np.shape(value)) != tuple(np.shape(initial[name])):
        raise ValueError(
            f'Pretrained parameter {path!r} has shape {np.shape(value)}, the '
            f'network expects {np.shape(initial[name])}.'
        )
      merged[name] = np.asarray(value, np.float32)
  return merged



class CheckpointError(RuntimeError):
  """A checkpoint cannot be read or written; the message names the step folder."""


def _no_space_left(error: BaseException) -> bool:
  """Whether an error (or one it was raised from) is a full disk."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if 'No space left on device' in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  line = text.splitlines()[0] if text else ''
  return f'{type(error).__name__}: {line[:300]}'


class TrainCheckpoints:
  """The local runner's checkpoints: orbax steps under `<model_dir>/checkpoints`.

  Orbax writes each step to a temporary folder and renames it when complete,
  so a run killed mid-save resumes from the last whole checkpoint and older
  checkpoints are never overwritten. A step that cannot be read (a truncated
  file, a deleted folder) is reported by name; `restore_latest` moves it to
  `<model_dir>/damaged_checkpoints/` and falls back to the step before it.
  Checkpoints restore onto any number of devices: the caller's target layout,
  or this host's first device, replaces the layout they were saved with.
  """

  def __init__(self, model_dir: str, max_to_keep: Optional[int] = 3):
    self.model_dir = os.path.abspath(model_dir)
    self.directory = os.path.join(self.model_dir, 'checkpoints')
    self._max_to_keep = max_to_keep
    self._manager = self._new_manager()

  def _new_manager(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=self._max_to_keep, create=True
        ),
        item_handlers=ocp.StandardCheckpointHandler(),
    )

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state: Any) -> None:
    """Saves a train state (any pytree of arrays); waits for the write.

    Raises:
      CheckpointError: the write failed; a full disk is named as such.
    """
    try:
      self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      previous = [s for s in self.all_steps() if s < step]
      kept = (
          f'the last complete checkpoint is step {previous[-1]}'
          if previous else 'no earlier checkpoint exists'
      )
      if _no_space_left(e):
        raise CheckpointError(
            f'No space left on device while writing checkpoint step {step} '
            f'to {self.step_dir(step)}; {kept}. Free disk space (or point '
            'MODEL_DIR at a larger disk) and run again to resume.'
        ) from None
      raise CheckpointError(
          f'Cannot write checkpoint step {step} to {self.step_dir(step)} '
          f'({_first_line(e)}); {kept}.'
      ) from e

  def _read(self, step: int, target: Any) -> Any:
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f'Checkpoint step {step} in {self.step_dir(step)} cannot be read '
          f'({_first_line(e)}). It is damaged or was written by a different '
          'model; delete or move that folder to use the step before it.'
      ) from None

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> Any:
    """Restores into the structure, shapes and shardings of `abstract_state`."""
    return self._read(self._require_step(step), abstract_state)

  def restore_latest(self, abstract_state: Any) -> Optional[tuple[int, Any]]:
    """(step, state) of the newest readable checkpoint, or None if none exist.

    A step that cannot be read is moved to `<model_dir>/damaged_checkpoints/`
    (with a warning naming it) and the step before it is tried, so that the
    run resumes from there and later saves do not collide with it.

    Raises:
      CheckpointError: no checkpoint can be read; it names every bad step.
    """
    failures = []
    for step in reversed(self.all_steps()):
      try:
        return step, self._read(step, abstract_state)
      except CheckpointError as e:
        failures.append(str(e))
        logging.warning('%s Trying the step before it.', e)
        self._set_aside(step)
    if failures:
      raise CheckpointError(
          'No checkpoint in {} can be read (moved to {}):\n  {}'.format(
              self.directory, self._damaged_dir, '\n  '.join(failures)))
    return None

  @property
  def _damaged_dir(self) -> str:
    return os.path.join(self.model_dir, 'damaged_checkpoints')

  def _set_aside(self, step: int) -> None:
    """Moves an unreadable step folder out of the way of later saves."""
    os.makedirs(self._damaged_dir, exist_ok=True)
    destination = os.path.join(self._damaged_dir, str(step))
    suffix = 0
    while os.path.exists(destination):
      suffix += 1
      destination = os.path.join(self._damaged_dir, f'{step}.{suffix}')
    os.rename(self.step_dir(step), destination)
    self._manager.close()
    self._manager = self._new_manager()

  def restore_params(self, step: Optional[int] = None) -> Params:
    """The `params` of a saved train state, as host arrays.

    The state is read onto this host's first device, whatever the number of
    devices it was saved from.
    """
    step = self._require_step(step)
    try:
      metadata = self._manager.item_metadata(step)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f'Checkpoint step {step} in {self.step_dir(step)} has no readable '
          f'metadata ({_first_line(e)}); it is damaged.'
      ) from None
    tree = getattr(metadata, 'tree', metadata)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree
    )
    restored = self._read(step, target)
    params = restored['params'] if isinstance(restored, Mapping) else restored.params
    return jax.tree.map(np.asarray, params)

  def _require_step(self, step: Optional[int]) -> int:
    step = self.latest_step() if step is None else step
    if step is None or step not in self._manager.all_steps():
      raise CheckpointError(
          f'No checkpoint{"" if step is None else f" at step {step}"} in '
          f'{self.directory}.'
      )
    return step

  def close(self) -> None:
    self._manager.close()


# T5X checkpoints, read without T5X.
#
# A legacy T5X checkpoint is a folder `checkpoint_<step>/` with a msgpack file
# `checkpoint` holding {'version': 3, 'optimizer': {'target': params,
# 'state': optimizer state}}. Each leaf is either the array itself or the JSON
# spec of a TensorStore zarr array stored in a sibling folder named after its
# path (`target.encoder.layers_0.attention.key.kernel/`). Newer T5X writes the
# same state dict with orbax into `checkpoint_<step>/state/`.

_T5X_MSGPACK = 'checkpoint'
_T5X_ORBAX_STATE = 'state'
_ORBAX_METADATA_FILES = ('_METADATA', '_CHECKPOINT_METADATA')
_T5X_STEP_DIR = re.compile(r'checkpoint_(\d+)$')


def _is_tensorstore_spec(value: Any) -> bool:
  return isinstance(value, Mapping) and 'driver' in value and (
      'kvstore' in value or 'path' in value
  )


def _host_float32(value: Any) -> Any:
  """Floating arrays as float32 numpy (T5X may save bf16), others as numpy."""
  array = np.asarray(value)
  if jnp.issubdtype(array.dtype, jnp.floating):
    return array.astype(np.float32)
  return array


def _read_tensorstore_leaf(spec: Mapping[str, Any], checkpoint_dir: str):
  """Reads one array whose spec has a path relative to the checkpoint folder."""
  import tensorstore as ts  # pylint: disable=g-import-not-at-top

  spec = json.loads(json.dumps(spec))  # A deep, mutable copy.
  kvstore = spec.get('kvstore')
  if isinstance(kvstore, Mapping) and 'path' in kvstore:
    relative = kvstore['path']
  elif 'path' in spec:  # Specs written by tensorstore < 0.1.14.
    relative = spec.pop('path')
  else:
    raise ValueError(f'TensorStore spec without a path: {spec}.')
  # Specs written to GCS name a bucket; the copy read here is on local disk.
  spec['kvstore'] = {
      'driver': 'file',
      'path': os.path.join(checkpoint_dir, relative),
  }
  if not os.path.isdir(spec['kvstore']['path']):
    raise FileNotFoundError(
        f'The T5X checkpoint in {checkpoint_dir!r} refers to the array folder '
        f'{relative!r}, which is missing.'
    )
  return ts.open(spec, open=True, read=True).result().read().result()


def _resolve_t5x_checkpoint(path: str) -> Tuple[str, str]:
  """('legacy' | 'orbax', location) of the checkpoint at `path`.

  `path` may be the `checkpoint` msgpack file, a `checkpoint_<step>` folder,
  an orbax item folder, or a model folder holding `checkpoint_<step>` folders
  (the highest step is read).
  """
  if os.path.isfile(path):
    return 'legacy', path
  if not os.path.isdir(path):
    raise FileNotFoundError(f'No T5X checkpoint at {path!r}.')
  state_dir = os.path.join(path, _T5X_ORBAX_STATE)
  if os.path.isdir(state_dir):
    return 'orbax', state_dir
  if any(os.path.exists(os.path.join(path, f)) for f in _ORBAX_METADATA_FILES):
    return 'orbax', path
  if os.path.isfile(os.path.join(path, _T5X_MSGPACK)):
    return 'legacy', os.path.join(path, _T5X_MSGPACK)
  steps = {
      int(m.group(1)): name
      for name in os.listdir(path)
      if (m := _T5X_STEP_DIR.match(name))
  }
  if steps:
    return _resolve_t5x_checkpoint(os.path.join(path, steps[max(steps)]))
  raise FileNotFoundError(
      f'{path!r} holds neither a T5X `checkpoint` file, an orbax `state` '
      f'folder, nor checkpoint_<step> folders.'
  )


def _read_legacy_t5x(msgpack_path: str) -> Params:
  """The `target` of a msgpack T5X checkpoint, its TensorStore leaves read."""
  with open(msgpack_path, 'rb') as f:
    head = f.read(21)
    if head == b'model_checkpoint_path':
      raise ValueError(
          f'{msgpack_path!r} is a TensorFlow checkpoint index, not a T5X '
          f'(msgpack) checkpoint.'
      )
    contents = serialization.msgpack_restore(head + f.read())
  if not isinstance(contents, Mapping):
    raise ValueError(f'{msgpack_path!r} does not hold a T5X state dict.')
  # Version 0 (plain Flax) checkpoints have no `optimizer` level.
  state = contents.get('optimizer', contents)
  if 'target' not in state:
    raise ValueError(
        f'{msgpack_path!r} has no `target` parameters; its top-level keys are '
        f'{sorted(state)}.'
    )
  checkpoint_dir = os.path.dirname(os.path.abspath(msgpack_path))
  return jax.tree.map(
      lambda leaf: _host_float32(
          _read_tensorstore_leaf(leaf, checkpoint_dir)
          if _is_tensorstore_spec(leaf)
          else leaf
      ),
      state['target'],
      is_leaf=_is_tensorstore_spec,
  )


def _read_orbax_t5x(directory: str) -> Params:
  """The `target` of an orbax PyTree checkpoint (or all of it, if it has none).

  Only the wanted subtree is read (a partial restore), as numpy arrays.
  """
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(directory).item_metadata.tree
  wanted = {'target': tree['target']} if 'target' in tree else tree
  restore_args = jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted
  )
  restored = checkpointer.restore(
      directory,
      args=ocp.args.PyTreeRestore(
          item=wanted, restore_args=restore_args, partial_restore=True
      ),
  )
  restored = restored['target'] if 'target' in tree else restored
  return jax.tree.map(_host_float32, restored)


def load_t5x_params(path: str) -> Params:
  """The `target` parameters of a T5X checkpoint, without T5X.

  Optimizer state (Adafactor's factored moments) is not read. Arrays come back
  as float32 numpy; the names are T5X's, which this network shares.

  Args:
    path: a `checkpoint_<step>` folder (legacy msgpack + TensorStore, or
      orbax with a `state` item), its `checkpoint` file, or a folder of
      `checkpoint_<step>` folders (the highest step is read).

  Returns:
    The nested parameter dict (`token_embedder`, `encoder`, `decoder`, ...).
  """
  kind, location = _resolve_t5x_checkpoint(path)
  if kind == 'legacy':
    return _read_legacy_t5x(location)
  return _read_orbax_t5x(location)


def t5_config_from_params(params: Params, **overrides) -> T5Config:
  """The `T5Config` whose network has the parameter shapes of `params`.

  Widths, heads and layer counts come from the shapes; what shapes cannot tell
  (activation kinds, relative attention's max distance, dropout) defaults to
  T5 1.1 unless given in `overrides`.
  """
  try:
    vocab_size, emb_dim = np.shape(params['token_embedder']['embedding'])
    encoder, decoder = params['encoder'], params['decoder']
    num_heads, num_buckets = np.shape(encoder['relpos_bias']['rel_embedding'])
    attention = encoder['layers_0']['attention']
    mlp = encoder['layers_0']['mlp']
  except KeyError as e:
    raise ValueError(
        f'Not a T5 parameter tree: it lacks {e.args[0]!r}.'
    ) from None

  def count_layers(stack):
    return sum(1 for name in stack if name.startswith('layers_'))

  inputs = sorted(n for n in mlp if n.startswith('wi'))
  fields = dict(
      vocab_size=vocab_size,
      emb_dim=emb_dim,
      num_heads=num_heads,
      num_encoder_layers=count_layers(encoder),
      num_decoder_layers=count_layers(decoder),
      head_dim=np.shape(attention['query']['kernel'])[1] // num_heads,
      mlp_dim=np.shape(mlp[inputs[0]]['kernel'])[1],
      mlp_activations=('relu',) if inputs == ['wi'] else ('gelu', 'linear'),
      logits_via_embedding='logits_dense' not in decoder,
      relative_attention_num_buckets=num_buckets,
  )
  fields.update(overrides)
  return T5Config(**fields)


# SPT parameters on a pretrained backbone.


def initialize_spt_params(
    params: Params,
    rng: jax.Array,
    spt: SptConfig,
    from_vocab: Optional[bool] = None,
) -> Params:
  """`params` (a backbone) with a new memory bank and soft prompt added.

  The leaves are those `SptTransformer(config, spt)` creates, drawn by the
  same modules and initializers (`prompts.prompt_initializer`): keys uniform in [-1, 1]; values and the soft prompt
  either uniform in [-memory_init_scale, memory_init_scale] or rows of the
  backbone's embedding table sampled from its first 5000 tokens, as prompt
  tuning initialises prompts.

  Args:
    params: backbone parameters with `token_embedder/embedding` [V, H].
    rng: PRNG key.
    spt: bank size, memory length, soft prompt length, key width.
    from_vocab: sample values (and the soft prompt) from the embedding table;
      None follows `spt.memory_init`.

  Returns:
    A new tree: `params` plus `memory_bank` and/or `soft_prompt` (float32).
  """
  present = [g for g in SPT_PARAM_GROUPS if g in params]
  if present:
    raise ValueError(
        f'The parameters already hold {present}; initialize_spt_params only '
        f'adds SPT parameters to a backbone.'
    )
  try:
    embedding = np.asarray(params['token_embedder']['embedding'], np.float32)
  except KeyError:
    raise ValueError(
        'initialize_spt_params needs the backbone embedding table '
        '`token_embedder/embedding`.'
    ) from None
  if from_vocab is not None:
    spt = dataclasses.replace(
        spt, memory_init='vocab_sample' if from_vocab else 'uniform'
    )
  width = embedding.shape[1]
  bank_rng, prompt_rng = jax.random.split(rng)
  initialized = dict(params)
  if spt.num_memories:
    bank = memory_bank.MemoryBank(config=spt, features=width)
    variables = bank.init(
        bank_rng, jnp.zeros((1, width), jnp.float32), embedding_table=embedding
    )
    initialized['memory_bank'] = jax.tree.map(
        np.asarray, dict(variables['params'])
    )
  if spt.soft_prompt_length:
    soft_prompt = prompts.SoftPrompt(
        length=spt.soft_prompt_length,
        features=width,
        init_scale=spt.memory_init_scale,
        memory_init=spt.memory_init,
    )
    variables = soft_prompt.init(prompt_rng, 1, embedding_table=embedding)
    initialized['soft_prompt'] = jax.tree.map(
        np.asarray, dict(variables['params'])
    )
  return initialized


# Export and import of the SPT parameters alone.

_SPT_EXPORT_FORMAT = 'spt_jax.spt_params.v1'
_NPZ_METADATA_KEY = '__metadata__'


def _spt_leaves(params: Params) -> Dict[str, np.ndarray]:
  """'memory_bank/keys' -> array, for every SPT leaf of `params`."""
  flat = traverse_util.flatten_dict(
      {g: params[g] for g in SPT_PARAM_GROUPS if g in params}, sep='/'
  )
  return {name: np.asarray(value) for name, value in flat.items()}


def _check_spt_shapes(leaves: Mapping[str, np.ndarray], spt: SptConfig) -> None:
  """Fails when the leaves are not those of `spt` (bank size, lengths)."""
  expected = {}
  if spt.num_memories:
    expected['memory_bank/keys'] = (spt.num_memories,)
    expected['memory_bank/values'] = (spt.num_memories, spt.memory_length)
  if spt.soft_prompt_length:
    expected['soft_prompt/prompt'] = (spt.soft_prompt_length,)
  for name, leading in expected.items():
    if name not in leaves:
      raise ValueError(f'The parameters lack {name!r}, which {spt} has.')
    if leaves[name].shape[:len(leading)] != leading:
      raise ValueError(
          f'{name!r} has shape {leaves[name].shape}; the SptConfig expects it '
          f'to start with {leading}.'
      )
  groups = {name.split('/')[0] for name in leaves}
  unexpected = sorted(groups - {name.split('/')[0] for name in expected})
  if unexpected:
    raise ValueError(f'The parameters hold {unexpected}, which {spt} has not.')


def export_spt_params(params: Params, path: str, spt: SptConfig) -> str:
  """Writes the memory bank and soft prompt alone to one file.

  Args:
    params: a full SPT parameter tree (host or device arrays).
    path: ends in `.safetensors` or `.npz`; the folder is created.
    spt: the settings of `params`, recorded in the file's metadata.

  Returns:
    `path`. Each leaf is stored under its slash-joined name
    (`memory_bank/keys`, `memory_bank/values`,
    `memory_bank/query_projection/kernel`, `soft_prompt/prompt`) with its
    dtype and bytes unchanged.
  """
  leaves = _spt_leaves(jax.device_get(params))
  if not leaves:
    raise ValueError(
        'The parameters hold no memory_bank or soft_prompt to export.'
    )
  _check_spt_shapes(leaves, spt)
  metadata = {
      'format': _SPT_EXPORT_FORMAT,
      'spt_config': json.dumps(dataclasses.asdict(spt)),
  }
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if path.endswith('.safetensors'):
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    contiguous = {k: np.ascontiguousarray(v) for k, v in leaves.items()}
    save_file(contiguous, path, metadata)
  elif path.endswith('.npz'):
    with open(path, 'wb') as f:
      np.savez(
          f, **leaves, **{_NPZ_METADATA_KEY: np.array(json.dumps(metadata))}
      )
  else:
    raise ValueError(f'Expected a .safetensors or .npz path, got {path!r}.')
  return path


def read_spt_params(path: str) -> Tuple[Params, SptConfig]:
  """The SPT parameter groups and the SptConfig saved by `export_spt_params`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No exported SPT parameters at {path!r}.')
  if path.endswith('.safetensors'):
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top
    with safe_open(path, framework='numpy') as f:
      metadata = f.metadata() or {}
      leaves = {name: f.get_tensor(name) for name in f.keys()}
  elif path.endswith('.npz'):
    with np.load(path, allow_pickle=False) as f:
      leaves = {name: f[name] for name in f.files}
    metadata = json.loads(str(leaves.pop(_NPZ_METADATA_KEY, '{}')))
  else:
    raise ValueError(f'Expected a .safetensors or .npz path, got {path!r}.')
  if metadata.get('format') != _SPT_EXPORT_FORMAT:
    raise ValueError(
        f'{path!r} was not written by export_spt_params (metadata format '
        f'{metadata.get("format")!r}, expected {_SPT_EXPORT_FORMAT!r}).'
    )
  spt = SptConfig(**json.loads(metadata['spt_config']))
  _check_spt_shapes(leaves, spt)
  return traverse_util.unflatten_dict(leaves, sep='/'), spt


def import_spt_params(base_params: Params, path: str) -> Params:
  """`base_params` with the memory bank and soft prompt read from `path`.

  `base_params` is a backbone (the SPT groups are added) or a full SPT tree
  (its SPT groups are replaced; the file must hold the same leaves with the
  same shapes). The arrays are set as read, bit for bit.
  """
  groups, _ = read_spt_params(path)
  loaded = _spt_leaves(groups)
  try:
    width = np.shape(base_params['token_embedder']['embedding'])[-1]
  except KeyError:
    raise ValueError(
        'import_spt_params needs base parameters with '
        '`token_embedder/embedding`.'
    ) from None
  for name in ('memory_bank/values', 'soft_prompt/prompt'):
    if name in loaded and loaded[name].shape[-1] != width:
      raise ValueError(
          f'{name!r} in {path!r} has width {loaded[name].shape[-1]}, the base '
          f'model {width}.'
      )
  current = _spt_leaves(base_params)
  if current:
    if sorted(current) != sorted(loaded):
      raise ValueError(
          f'The base parameters hold SPT leaves {sorted(current)}, but '
          f'{path!r} holds {sorted(loaded)}.'
      )
    for name, value in current.items():
      if value.shape != loaded[name].shape:
        raise ValueError(
            f'{name!r} has shape {loaded[name].shape} in {path!r}, the base '
            f'parameters {value.shape}.'
        )
  imported = {k: v for k, v in base_params.items() if k not in SPT_PARAM_GROUPS}
  imported.update(groups)
  return imported


# Converted checkpoints (see convert_checkpoint.py) and a loader for any source.

CONVERSION_INFO = 'spt_conversion.json'
CONVERTED_STEP = 0


def save_converted_params(
    params: Params, output_dir: str, info: Mapping[str, Any]
) -> str:
  """Writes params in T5X's orbax layout, with `info` beside them.

  Layout: `<output_dir>/checkpoint_0/state/` is an orbax PyTree checkpoint of
  {'target': params} (what T5X writes, without optimizer state), and
  `<output_dir>/spt_conversion.json` holds `info`. Returns the checkpoint
  folder. An existing non-empty `output_dir` is refused.
  """
  if os.path.isdir(output_dir) and os.listdir(output_dir):
    raise FileExistsError(
        f'{output_dir!r} is not empty; choose a new output folder.'
    )
  checkpoint_dir = os.path.join(
      os.path.abspath(output_dir), f'checkpoint_{CONVERTED_STEP}'
  )
  tree = {'target': jax.tree.map(np.asarray, params)}
  ocp.PyTreeCheckpointer().save(
      os.path.join(checkpoint_dir, _T5X_ORBAX_STATE),
      args=ocp.args.PyTreeSave(tree),
  )
  with open(os.path.join(output_dir, CONVERSION_INFO), 'w') as f:
    json.dump(info, f, indent=2, sort_keys=True)
  return checkpoint_dir


def load_params(path: str) -> Params:
  """Parameters from any source the runner may start from, as float32 numpy.

  Args:
    path: a `convert_checkpoint` output, a local run's MODEL_DIR (its latest
      checkpoint), a T5X checkpoint (legacy or orbax), or a Hugging Face T5
      folder (`config.json` with `model.safetensors` or `pytorch_model.bin`).

  Returns:
    The nested parameter dict.
  """
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    store = TrainCheckpoints(path)
    try:
      return jax.tree.map(_host_float32, store.restore_params())
    finally:
      store.close()
  if os.path.isfile(os.path.join(path, 'config.json')):
    return load_hf_t5(path)[1]
  return load_t5x_params(path)
