r"""Retrieval cost as the memory bank grows: exact, approximate, chunked top-k.

For banks of 1e3 to 1e6 memories, times the retrieval SPT runs per batch:
cosine scores of B queries against M keys ([B, H] x [H, M]), top-k, and the
gather of the k selected memory prompts (concatenated, weighted), both forward
alone (inference) and forward + gradients w.r.t. keys and values (training).
Top-k strategies:

  exact      jax.lax.top_k over [B, M]
  approx     jax.lax.approx_max_k (recall target 0.95); on CPU XLA runs it
             as an exact top-k, its speed-up is a TPU feature
  chunked8   retrieval.top_k(num_chunks=8): top-k within 8 chunks, then
             among the 8k winners (the first stage stays on each bank shard)

A second part runs in a subprocess with 8 fake CPU devices
(--xla_force_host_platform_device_count=8): the bank split along `memory` over
the mesh's `data` axis by the logical axis rules, vs the same bank on one
device, reporting per-device memory.

Memory is XLA's buffer assignment of each compiled function
(`compiled.memory_analysis()`: arguments + outputs + temporaries, per device),
plus the process's peak resident set (getrusage maxrss, cumulative).

Values are [M, P, H] float32: at M = 1e6, P = 10, H = 768 that is 30.7 GB,
more than this machine's 24 GB, so the 1e6 bank holds P = 1 (3.1 GB); the
gather's cost depends on B*k*P*H, not on M, so scoring and top-k still scale
with the full bank.

    python -m benchmarks.retrieval_scaling --repeats=5
"""

import argparse
import json
import os
import resource
import subprocess
import sys

if __package__ in (None, ''):
  sys.path.insert(
      0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  )

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from spt_jax.model import retrieval  # pylint: disable=g-import-not-at-top

BATCH = 64
WIDTH = 768
TOP_K = common.TOP_K
SIZES = (1_000, 10_000, 100_000, 1_000_000)
MAX_VALUE_BYTES = 4e9  # Values larger than this get a shorter memory length.
METHODS = {
    'exact': dict(approx=False, num_chunks=1),
    'approx': dict(approx=True, num_chunks=1),
    'chunked8': dict(approx=False, num_chunks=8),
}


def memory_length_for(num_memories: int) -> int:
  """P = 10, or 1 where [M, 10, H] float32 values would not fit in memory."""
  full = common.MEMORY_LENGTH
  return full if num_memories * full * WIDTH * 4 <= MAX_VALUE_BYTES else 1


def retrieve_prompt(query, keys, values, approx, num_chunks):
  """The SPT retrieval of memory_bank.py: [B, H] queries -> [B, k*P, H]."""
  scores = retrieval.similarity(query, keys, 'cosine', temperature=0.1)
  selected = retrieval.softmax_topk(
      scores, TOP_K, 'concat', approx=approx, num_chunks=num_chunks
  )
  return retrieval.combine_values(values, selected, 'concat')


def retrieval_fns(method, grad_shardings=None):
  """Jitted forward and forward+backward (grads w.r.t. keys and values).

  `grad_shardings` lays the gradients out like the bank, as the sharded
  training step does (its outputs take the parameters' shardings); left to
  propagation, XLA replicates the values gradient on every device.
  """
  options = METHODS[method]

  def forward(query, keys, values):
    return retrieve_prompt(query, keys, values, **options)

  def loss(keys, values, query):
    return jnp.sum(forward(query, keys, values))

  grads = jax.grad(loss, argnums=(0, 1))
  if grad_shardings:
    return jax.jit(forward), jax.jit(grads, out_shardings=grad_shardings)
  return jax.jit(forward), jax.jit(grads)


def bank(num_memories, seed=0, shardings=(None, None, None)):
  """(query [B, H], keys [M, H], values [M, P, H]) placed as `shardings` say."""
  length = memory_length_for(num_memories)
  rng = jax.random.split(jax.random.PRNGKey(seed), 3)
  shapes = [
      (BATCH, WIDTH),
      (num_memories, WIDTH),
      (num_memories, length, WIDTH),
  ]
  return tuple(
      jax.jit(
          lambda r, s=shape: jax.random.uniform(r, s, jnp.float32, -1, 1),
          out_shardings=sharding,
      )(key)
      for key, shape, sharding in zip(rng, shapes, shardings)
  )


def _memory(compiled):
  stats = compiled.memory_analysis()
  return {
      'xla_argument_bytes': int(stats.argument_size_in_bytes),
      'xla_output_bytes': int(stats.output_size_in_bytes),
      'xla_temp_bytes': int(stats.temp_size_in_bytes),
      'xla_total_bytes': int(
          stats.argument_size_in_bytes
          + stats.output_size_in_bytes
          + stats.temp_size_in_bytes
          - stats.alias_size_in_bytes
      ),
  }


def _max_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(
    num_memories, repeats, methods, shardings=(None, None, None), tag=''
):
  """Rows of time and memory for one bank size, methods timed side by side."""
  query, keys, values = bank(num_memories, shardings=shardings)
  calls, rows = {}, {}
  grad_shardings = shardings[1:] if shardings[1] is not None else None
  for method in methods:
    forward, train = retrieval_fns(method, grad_shardings)
    for mode, fn, args in (
        ('forward', forward, (query, keys, values)),
        ('train', train, (keys, values, query)),
    ):
      compiled = fn.lower(*args).compile()
      calls[(method, mode)] = lambda c=compiled, a=args: c(*a)
      rows[(method, mode)] = {
          'setting': tag,
          'num_memories': num_memories,
          'memory_length': values.shape[1],
          'method': method,
          'mode': mode,
          **_memory(compiled),
      }
  times = common.time_interleaved(calls, repeats, jax.block_until_ready)
  for key, row in rows.items():
    row.update(common.summarize(times[key]))
  rss = _max_rss_bytes()
  for row in rows.values():
    row['process_max_rss_bytes'] = rss
  return list(rows.values())


def sharded_worker(repeats: int, sizes) -> None:
  """Runs in a process with 8 devices; prints its rows as JSON."""
  from flax.linen import partitioning as nn_partitioning  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from spt_jax.model import partitioning  # pylint: disable=g-import-not-at-top

  mesh = partitioning.create_mesh(num_partitions=1)
  rules = partitioning.default_rules(memory_mesh_axis='data')
  sharded = (
      NamedSharding(mesh, P()),
      NamedSharding(mesh, P('data', None)),
      NamedSharding(mesh, P('data', None, None)),
  )
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  rows = []
  for size in sizes:
    with mesh, nn_partitioning.axis_rules(rules):
      rows += measure(
          size,
          repeats,
          ('exact', 'chunked8'),
          sharded,
          f'sharded over {len(jax.devices())} devices',
      )
    rows += measure(
        size, repeats, ('exact',), (one_device,) * 3, 'one device of 8'
    )
  print('ROWS_JSON ' + json.dumps(rows))


def run_sharded(repeats: int, sizes):
  env = {
      **os.environ,
      'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
      'JAX_PLATFORMS': 'cpu',
  }
  done = subprocess.run(
      [
          sys.executable,
          '-m',
          'benchmarks.retrieval_scaling',
          f'--repeats={repeats}',
          '--sharded_worker',
          f'--sizes={",".join(str(s) for s in sizes)}',
      ],
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      env=env,
      capture_output=True,
      text=True,
      check=False,
  )
  if done.returncode:
    raise RuntimeError(f'The sharded worker failed:\n{done.stderr[-4000:]}')
  line = [l for l in done.stdout.splitlines() if l.startswith('ROWS_JSON ')][-1]
  return json.loads(line[len('ROWS_JSON ') :])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument(
      '--sizes',
      default=','.join(str(s) for s in SIZES),
      help='Comma-separated bank sizes (the sharded part skips 1e3).',
  )
  parser.add_argument('--skip_sharded', action='store_true')
  parser.add_argument(
      '--sharded_worker', action='store_true', help=argparse.SUPPRESS
  )
  args = parser.parse_args()
  sizes = [int(s) for s in args.sizes.split(',')]
  if args.sharded_worker:
    sharded_worker(args.repeats, sizes)
    return

  rows = []
  for size in sizes:
    rows += measure(size, args.repeats, tuple(METHODS), tag='one device')
  if not args.skip_sharded:
    rows += run_sharded(args.repeats, [s for s in sizes if s >= 10_000])
  for row in rows:
    row['xla_total_mb'] = row['xla_total_bytes'] / 2**20
    row['max_rss_mb'] = row['process_max_rss_bytes'] / 2**20
  common.print_table(
      rows,
      [
          'setting',
          'num_memories',
          'memory_length',
          'method',
          'mode',
          'median_s',
          'min_s',
          'xla_total_mb',
          'max_rss_mb',
      ],
  )
  # Only the full default run writes the file the README and the plot use.
  name = 'retrieval_scaling'
  if tuple(sizes) != SIZES or args.skip_sharded:
    name += '_' + '_'.join(str(s) for s in sizes)
    name += '_unsharded' if args.skip_sharded else ''
  path = common.write_results(
      name,
      {
          'machine': common.machine(),
          'batch': BATCH,
          'width': WIDTH,
          'top_k': TOP_K,
          'memory': 'xla_*: compiled.memory_analysis() per device; '
          'process_max_rss_bytes: getrusage maxrss, cumulative',
          'rows': rows,
      },
  )
  print(f'\nWrote {path}')


if __name__ == '__main__':
  main()
