"""T5X checkpoints read and written without T5X.

A legacy T5X checkpoint is a folder `checkpoint_<step>/` with a msgpack file
`checkpoint` holding {'version': 3, 'optimizer': {'target': params,
'state': optimizer state}}. Each leaf is either the array itself or the JSON
spec of a TensorStore zarr array stored in a sibling folder named after its
path (`target.encoder.layers_0.attention.key.kernel/`). Newer T5X writes the
same state dict with orbax into `checkpoint_<step>/state/`. Parameter names
are T5X's, which this network shares. `save_converted_params` writes the
orbax layout (without optimizer state) for `convert_checkpoint`.
"""

import json
import os
import re
from typing import Any, Dict, Mapping, Tuple

from flax import serialization
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from spt_jax.model.config import T5Config

Params = Dict[str, Any]

_T5X_MSGPACK = 'checkpoint'
_T5X_ORBAX_STATE = 'state'
_ORBAX_METADATA_FILES = ('_METADATA', '_CHECKPOINT_METADATA')
_T5X_STEP_DIR = re.compile(r'checkpoint_(\d+)$')


def _is_tensorstore_spec(value: Any) -> bool:
  return (
      isinstance(value, Mapping)
      and 'driver' in value
      and ('kvstore' in value or 'path' in value)
  )


def host_float32(value: Any) -> Any:
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
      lambda leaf: host_float32(
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
  return jax.tree.map(host_float32, restored)


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


# Converted checkpoints (see convert_checkpoint.py).

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
