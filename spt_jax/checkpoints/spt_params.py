"""SPT's own parameters: which they are, their initialisation on a backbone, export.

SPT's parameters are the top-level groups `memory_bank` (keys, values, an
optional query projection) and `soft_prompt`; everything else is the
backbone. `initialize_spt_params` adds them to a loaded backbone with the
network's own modules and initializers; `export_spt_params` /
`import_spt_params` move them alone, as a small safetensors or npz file.
Nothing here imports the training stack, so checkpoint I/O, the trainer and
gin files (`is_spt_param`, T5X's frozen-backbone filter) can all use it.
"""

import dataclasses
import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from spt_jax.model.config import SptConfig
from spt_jax.model import memory_bank
from spt_jax.model import prompts

Params = Dict[str, Any]

# Top-level parameter groups that belong to SPT rather than to the backbone.
SPT_PARAM_GROUPS = ('memory_bank', 'soft_prompt')


def is_spt_param(path: str, value: Any = None) -> bool:
  """Whether a '/'-joined parameter path is SPT's (memory bank, soft prompt).

  Also the `filter_fn` of T5X's `ModelParamTraversal` for a frozen backbone.
  """
  del value
  return path.strip('/').split('/')[0] in SPT_PARAM_GROUPS


def split_spt_params(params: Params) -> Tuple[Params, Params]:
  """(SPT groups, backbone groups) of a parameter tree."""
  spt = {k: v for k, v in params.items() if k in SPT_PARAM_GROUPS}
  backbone = {k: v for k, v in params.items() if k not in SPT_PARAM_GROUPS}
  return spt, backbone


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
    if leaves[name].shape[: len(leading)] != leading:
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
