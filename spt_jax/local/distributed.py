"""Multi-process start-up of the local runner's binaries (one process per host).

`spt_jax.local.train` and `spt_jax.local.eval` take T5X's flags for it:

    python -m spt_jax.local.train --multiprocess [--coordinator_address=HOST:PORT \
      --process_count=N --process_index=I] --gin_file=...

On Cloud TPU VMs (and under Slurm or Open MPI) `--multiprocess` alone is
enough: `jax.distributed.initialize` finds the other hosts itself. On GPU
clusters and on one CPU machine (with `JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo`)
the three addresses are given. A process whose distributed runtime is already
up (started by its environment) is left as it is.
"""

from absl import flags
import jax


def define_flags() -> None:
  """Defines the flags; called by a binary's `__main__` block, as in T5X."""
  flags.DEFINE_bool(
      'multiprocess',
      False,
      'Call jax.distributed.initialize() first (one process per host).',
  )
  flags.DEFINE_string(
      'coordinator_address',
      None,
      'host:port of process 0 (--multiprocess; found automatically on TPU).',
  )
  flags.DEFINE_integer('process_count', None, 'Processes (--multiprocess).')
  flags.DEFINE_integer('process_index', None, 'This process (--multiprocess).')


def initialize_from_flags() -> None:
  """Joins the other processes when `--multiprocess` is given."""
  flag_values = flags.FLAGS
  if not flag_values.multiprocess or jax.distributed.is_initialized():
    return
  jax.distributed.initialize(
      coordinator_address=flag_values.coordinator_address,
      num_processes=flag_values.process_count,
      process_id=flag_values.process_index,
  )
