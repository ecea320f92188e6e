r"""Converts a pretrained T5 into an SPT parameter checkpoint.

Reads a Hugging Face T5 (T5 1.1, T5-LM-adapt, T0: a folder with `config.json`
and `model.safetensors` or `pytorch_model.bin`) or a T5X checkpoint (legacy
msgpack + TensorStore, or orbax), adds a memory bank and soft prompt
initialised on its embedding table, and writes:

    OUTPUT_DIR/checkpoint_0/state/   orbax PyTree {'target': params}, T5X's
                                     orbax layout without optimizer state
    OUTPUT_DIR/spt_conversion.json   source, backbone config, SPT shapes

The local runner starts from it with
`--gin.INITIAL_CHECKPOINT_PATH=\"OUTPUT_DIR\"` (`train_checkpoints.load_params`
reads it back). Only the settings that
shape parameters are flags; retrieval settings (top-k, similarity, strategy)
belong to the training configuration.

    python -m spt_jax.checkpoints.convert_checkpoint \
      --hf_path=/data/t5-v1_1-lm-adapt-base --output_dir=/tmp/spt_base \
      --num_memories=256 --memory_length=10 --memory_init=vocab_sample
"""

import dataclasses
import json
import os
from typing import Any, Dict, Optional, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from spt_jax.checkpoints import hf_checkpoints
from spt_jax.checkpoints import spt_params
from spt_jax.checkpoints import t5x_checkpoints
from spt_jax import gin_utils
from spt_jax.model.config import NO_SPT, SptConfig, T5Config


def spt_shapes_config(
    num_memories: int,
    memory_length: int = SptConfig.memory_length,
    soft_prompt_length: int = 0,
    key_dim: Optional[int] = None,
    memory_init: str = SptConfig.memory_init,
    memory_init_scale: float = SptConfig.memory_init_scale,
) -> SptConfig:
  """An SptConfig from the settings that shape and initialise parameters.

  Retrieval settings do not shape parameters; `top_k` only has to be valid.
  """
  return SptConfig(
      num_memories=num_memories,
      memory_length=memory_length,
      soft_prompt_length=soft_prompt_length,
      key_dim=key_dim,
      memory_init=memory_init,
      memory_init_scale=memory_init_scale,
      top_k=min(SptConfig.top_k, max(num_memories, 1)),
  )


# The SptConfig fields that shape or initialise parameters (recorded).
SHAPE_FIELDS = (
    'num_memories',
    'memory_length',
    'soft_prompt_length',
    'key_dim',
    'memory_init',
    'memory_init_scale',
)


def _t5_config_json(cfg: T5Config) -> Dict[str, Any]:
  fields = dataclasses.asdict(cfg)
  fields['dtype'] = jnp.dtype(fields['dtype']).name
  fields['mlp_activations'] = list(fields['mlp_activations'])
  return fields


def _load_backbone(hf_path: Optional[str], t5x_path: Optional[str]):
  """(T5Config, params) of the source checkpoint."""
  if (hf_path is None) == (t5x_path is None):
    raise ValueError('Give exactly one of hf_path and t5x_path.')
  if hf_path is not None:
    return hf_checkpoints.load_hf_t5(hf_path)
  params = t5x_checkpoints.load_t5x_params(t5x_path)
  return t5x_checkpoints.t5_config_from_params(params), params


def convert(
    output_dir: str,
    hf_path: Optional[str] = None,
    t5x_path: Optional[str] = None,
    spt: SptConfig = NO_SPT,
    seed: int = 0,
) -> str:
  """Converts one checkpoint; returns the written `checkpoint_0` folder.

  Args:
    output_dir: a new or empty folder.
    hf_path: Hugging Face T5 folder or weights file.
    t5x_path: T5X checkpoint folder.
    spt: shapes and initialisation of the SPT parameters (`NO_SPT`: the
      backbone alone).
    seed: seed of the SPT initialisation.
  """
  if os.path.isdir(output_dir) and os.listdir(output_dir):
    raise FileExistsError(
        f'{output_dir!r} is not empty; choose a new output folder.'
    )
  cfg, params = _load_backbone(hf_path, t5x_path)
  if spt.prefix_length:
    params = spt_params.initialize_spt_params(
        params, jax.random.PRNGKey(seed), spt
    )
  info = {
      'source': {
          'hf_path'
          if hf_path
          else 't5x_path': os.path.abspath(hf_path or t5x_path)
      },
      't5_config': _t5_config_json(cfg),
      'spt_config': {f: getattr(spt, f) for f in SHAPE_FIELDS},
      'seed': seed,
      'num_parameters': int(sum(np.size(x) for x in jax.tree.leaves(params))),
  }
  return t5x_checkpoints.save_converted_params(params, output_dir, info)


def _define_flags() -> None:
  """Flags of the command; importing this module defines none."""
  flags.DEFINE_string(
      'hf_path', None, 'Hugging Face T5 folder (or weights file).'
  )
  flags.DEFINE_string(
      't5x_path', None, 'T5X checkpoint folder (legacy or orbax).'
  )
  flags.DEFINE_string(
      'output_dir',
      None,
      'New folder for the converted checkpoint.',
      required=True,
  )
  flags.DEFINE_integer(
      'num_memories', SptConfig.num_memories, 'Memory prompts (0: no bank).'
  )
  flags.DEFINE_integer(
      'memory_length', SptConfig.memory_length, 'Vectors per memory prompt.'
  )
  flags.DEFINE_integer(
      'key_dim', None, 'Key width (default: the model width, no projection).'
  )
  flags.DEFINE_integer(
      'soft_prompt_length', 0, 'Positions of the parametric soft prompt.'
  )
  flags.DEFINE_enum(
      'memory_init',
      SptConfig.memory_init,
      ['uniform', 'vocab_sample'],
      'Initialise memories and soft prompt uniformly or from sampled '
      'vocabulary embeddings.',
  )
  flags.DEFINE_float(
      'memory_init_scale',
      SptConfig.memory_init_scale,
      'Half-width of the uniform initialisation.',
  )
  flags.DEFINE_integer('seed', 0, 'Seed of the SPT initialisation.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  spt = spt_shapes_config(
      num_memories=FLAGS.num_memories,
      memory_length=FLAGS.memory_length,
      soft_prompt_length=FLAGS.soft_prompt_length,
      key_dim=FLAGS.key_dim,
      memory_init=FLAGS.memory_init,
      memory_init_scale=FLAGS.memory_init_scale,
  )
  path = convert(
      FLAGS.output_dir,
      hf_path=FLAGS.hf_path,
      t5x_path=FLAGS.t5x_path,
      spt=spt,
      seed=FLAGS.seed,
  )
  with open(
      os.path.join(FLAGS.output_dir, t5x_checkpoints.CONVERSION_INFO)
  ) as f:
    info = json.load(f)
  t5 = info['t5_config']
  print(
      f'Wrote {path} ({info["num_parameters"]:,} parameters; emb_dim '
      f'{t5["emb_dim"]}, {t5["num_encoder_layers"]}+{t5["num_decoder_layers"]} '
      f'layers, vocabulary {t5["vocab_size"]}; {spt.num_memories} memories x '
      f'{spt.memory_length}, soft prompt {spt.soft_prompt_length}).\n'
      f'Start a local run from it: '
      f'--gin.INITIAL_CHECKPOINT_PATH=\\"{FLAGS.output_dir}\\"'
  )


if __name__ == '__main__':
  _define_flags()
  # Bad paths, a non-T5 or mismatched config: their messages say it all.
  gin_utils.run(
      main, short_errors=(ValueError, FileNotFoundError, FileExistsError)
  )
