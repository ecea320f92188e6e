"""The local runner's training step on fixed global batches, in any number of processes.

    python -m tests.multihost_step --multiprocess --coordinator_address=... \
      --process_count=2 --process_index=I --output=OUT.npz

Every process builds the same tiny SPT model on a ('data', 'model') mesh over
all devices of all processes (the bank split over every device), feeds its
rows of the same global batches and runs `trainer.ShardedTrainer`'s step.
Process 0 writes the losses and the final parameters; tests compare them with
the same program run in one process (`run_steps`).
"""

import time
from typing import Dict, Optional, Sequence, Tuple

from absl import app
from absl import flags
from flax import traverse_util
import jax
from jax.experimental import multihost_utils
import numpy as np

from spt_jax.local import distributed
from spt_jax.local import trainer
from spt_jax.model import config
from spt_jax.model import models
from spt_jax.model import network
from spt_jax.model import partitioning

GLOBAL_BATCH = 8
LENGTHS = {'inputs': 12, 'targets': 4, 'prompt': 4}
VOCAB = 64
NUM_PARTITIONS = 2
# 16 memories: two per device of the 8 over which the bank is split.
SPT = config.SptConfig(
    num_memories=16,
    memory_length=2,
    top_k=2,
    soft_prompt_length=2,
    prompt_length=LENGTHS['prompt'],
)


def global_batch(step: int) -> Dict[str, np.ndarray]:
  """The step's global batch, the same in every process."""
  rng = np.random.default_rng(step)
  b = GLOBAL_BATCH
  prompt = rng.integers(2, VOCAB, (b, LENGTHS['prompt']), dtype=np.int32)
  inputs = rng.integers(2, VOCAB, (b, LENGTHS['inputs']), dtype=np.int32)
  targets = rng.integers(2, VOCAB, (b, LENGTHS['targets']), dtype=np.int32)
  inputs[:, -3:] = 0  # Padding, so that masks matter.
  # The feature converter's layout: the discrete prompt after the input.
  encoder = np.concatenate([inputs, prompt], axis=1)
  decoder_inputs = np.concatenate(
      [np.zeros((b, 1), np.int32), targets[:, :-1]], axis=1
  )
  return {
      'encoder_input_tokens': encoder,
      'decoder_input_tokens': decoder_inputs,
      'decoder_target_tokens': targets,
      'decoder_loss_weights': np.ones_like(targets, np.float32),
  }


def _local_rows(sharded: trainer.ShardedTrainer, num_rows: int) -> slice:
  """The rows of a global batch that this process's devices hold."""
  sharding = partitioning.data_sharding(sharded.mesh)
  starts = sorted(
      {
          index[0].start or 0
          for index in sharding.addressable_devices_indices_map(
              (num_rows,)
          ).values()
      }
  )
  per_device = num_rows // sharded.mesh.shape['data']
  return slice(starts[0], starts[-1] + per_device)


def run_steps(
    num_steps: int = 3, step_times: Optional[list] = None
) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
  """Losses [num_steps] and the final parameters, flat, as numpy arrays.

  Args:
    num_steps: training steps.
    step_times: if given, receives each step's wall time in seconds (the
      step's result waited for).
  """
  t5 = config.t5_1_1_config('tiny', vocab_size=VOCAB, dropout_rate=0.0)
  model = models.SptModel(network.SptTransformer(t5, SPT))
  sharded = trainer.ShardedTrainer(
      model,
      trainer.adafactor(learning_rate=0.01),
      partitioning.create_mesh(NUM_PARTITIONS),
      partitioning.default_rules(),
  )
  shapes = {k: v.shape for k, v in global_batch(0).items()}
  state = sharded.init_state(jax.random.PRNGKey(0), shapes)
  rows = _local_rows(sharded, GLOBAL_BATCH)
  losses = []
  for step in range(num_steps):
    local = {k: v[rows] for k, v in global_batch(step).items()}
    start = time.perf_counter()
    state, metrics = sharded.train_step(
        state, sharded.shard_batch(local), jax.random.PRNGKey(1)
    )
    losses.append(float(metrics['loss']))
    if step_times is not None:
      step_times.append(time.perf_counter() - start)
  params = multihost_utils.process_allgather(state.params, tiled=True)
  flat = traverse_util.flatten_dict(jax.device_get(params), sep='/')
  return np.asarray(losses), {k: np.asarray(v) for k, v in flat.items()}


def main(argv: Sequence[str]) -> None:
  del argv
  distributed.initialize_from_flags()
  step_times = []
  losses, params = run_steps(flags.FLAGS.steps, step_times)
  if jax.process_index() == 0:
    np.savez(flags.FLAGS.output, losses=losses, step_times=step_times, **params)


if __name__ == '__main__':
  distributed.define_flags()
  flags.DEFINE_string('output', None, 'Where process 0 writes the results.')
  flags.DEFINE_integer('steps', 3, 'Training steps.')
  app.run(main)
