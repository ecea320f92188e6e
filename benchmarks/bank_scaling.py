r"""A T5-base SPT training step as the memory bank grows: dense vs row-sparse.

For banks of 256 to 1e6 memories, one full training step of T5 1.1 base with
SPT (`trainer.make_train_step` under `jax.jit`, donated state) on 8 fake CPU
devices: mesh data=2, model=4, the backbone split over `model` by T5X's rules
(eight data-parallel replicas of T5-base would not fit in 24 GB; 4 divides
T5-base's 12 heads, 8 does not) and the bank split along `memory` over
both axes (the default rules): 8 shards, none replicated, shard-local top-k
(`top_k_chunks = 8`, one chunk per shard). Two variants:

  dense    Adafactor on every parameter; the values' gradient is the dense
           [M, P, H] scatter (the default)
  sparse   the same Adafactor on every parameter but the values; the values
           get a row-sparse gradient and lazy Adam (sparse_updates.py,
           gin_configs/local/sparse_bank.gin)
  sampled  sparse, and the keys' path of `SptConfig.key_gradient='sampled'`
           (gin_configs/local/sampled_keys.gin): selection without gradient,
           the balance loss's partition gradient from 64 sampled keys, and
           the B*k + 64 touched keys updated by lazy Adam with the values

Each (bank, variant) runs in its own process with 8 devices, so that a large
bank's buffers are gone before the next one starts: compiled first, its
per-device memory read from XLA (`compiled.memory_analysis()`: arguments,
i.e. the sharded state and batch, plus temporaries), then, if the process
would fit in `--max_gb`, the state is allocated and `--repeats` steps are
timed after a warm-up step. A variant that does not fit is compiled and
reported, not run. The ratio of each step to the 256-memory step with the
same memory length P is the figure of merit (the goal: at most 1.10
at 1e6 memories).

Values are [M, P, 768] float32: 1e6 x 10 memories would be 30.7 GB, more than
this machine's 24 GB, so 1e6 has P = 1 (with a 256-memory P = 1 baseline).
Keys are [M, 128] (`key_dim = 128`, with a query projection) in every row:
at width 768 the keys of 1e6 memories and their gradient would take 6 GB,
and that gradient is dense in both variants (the balance loss reaches every
key). The batch is small so that a T5-base step takes seconds on a CPU.

    python -m benchmarks.bank_scaling --repeats=2
    python -m benchmarks.bank_scaling --banks=256:10,10000:10 --repeats=1  # quick
    python -m benchmarks.bank_scaling --platform=gpu --dtype=bfloat16 \
      --in_process  # a GPU: every bank in one process (benchmarks/gpu_lease.sh)
    # T0's per-device load (about 2 x 1024 input tokens per device), T5-small:
    python -m benchmarks.bank_scaling --size=small --model_partitions=2 \
      --batch=8 --inputs=1024 --targets=256 \
      --banks=256:1,100000:1,1000000:1 --variants=sparse,sampled \
      --repeats=2 --max_gb=21.5

Writes benchmarks/results/bank_scaling.json (the default banks) or
bank_scaling_<banks>.json.
"""

import argparse
import json
import os
import subprocess
import sys
import time

if __package__ in (None, ''):
  sys.path.insert(
      0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  )

from benchmarks import common  # pylint: disable=g-import-not-at-top

# (memories, memory length P).
BANKS = ((256, 10), (10_000, 10), (100_000, 10), (256, 1), (1_000_000, 1))
VARIANTS = ('dense', 'sparse', 'sampled')
BATCH, INPUTS, TARGETS = 2, 32, 8
KEY_DIM = 128
TOP_K = common.TOP_K
DEVICES = 8
MODEL_PARTITIONS = 4


def _bank_name(bank):
  return f'{bank[0]}:{bank[1]}'


def _memory(step, processes_devices: int) -> dict:
  """XLA's per-device memory of a compiled step, and the process's total."""
  stats = step.memory_analysis()
  per_device = {
      'argument_bytes': int(stats.argument_size_in_bytes),
      'temp_bytes': int(stats.temp_size_in_bytes),
      'output_bytes': int(stats.output_size_in_bytes),
      'alias_bytes': int(stats.alias_size_in_bytes),
  }
  per_device['total_bytes'] = (
      per_device['argument_bytes']
      + per_device['output_bytes']
      + per_device['temp_bytes']
      - per_device['alias_bytes']
  )
  return {
      **{f'xla_per_device_{k}': v for k, v in per_device.items()},
      'process_total_bytes': per_device['total_bytes'] * processes_devices,
  }


def _compiled_step(model, optimizer, batch, mesh, rules):
  """(compiled step, state creation, parameter init, compile seconds).

  The state is laid out as the local runner lays it out
  (`trainer.state_shardings`); nothing is allocated.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from spt_jax.local import trainer  # pylint: disable=g-import-not-at-top
  from spt_jax.model import partitioning  # pylint: disable=g-import-not-at-top
  from spt_jax.optim import adafactor  # pylint: disable=g-import-not-at-top

  input_shapes = {k: v.shape for k, v in batch.items()}
  data = partitioning.data_sharding(mesh)
  with partitioning.mesh_and_rules(mesh, rules):
    abstract = jax.eval_shape(
        lambda r: model.get_initial_variables(r, input_shapes),
        jax.random.PRNGKey(0),
    )
    optimizer = adafactor.with_param_axes(optimizer, abstract['params_axes'])
    state_shardings = trainer.state_shardings(
        abstract['params'], abstract['params_axes'], optimizer, mesh, rules
    )
    init_params = jax.jit(
        lambda r: model.get_initial_variables(r, input_shapes)['params'],
        out_shardings=state_shardings.params,
    )
    create = jax.jit(
        lambda p: trainer.TrainState.create(p, optimizer),
        out_shardings=state_shardings,
    )
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        jax.eval_shape(
            lambda p: trainer.TrainState.create(p, optimizer),
            abstract['params'],
        ),
        state_shardings,
    )
    abstract_batch = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=data)
        for k, v in batch.items()
    }
    started = time.perf_counter()
    step = (
        jax.jit(
            trainer.make_train_step(model, optimizer),
            in_shardings=(state_shardings, data, None),
            out_shardings=(state_shardings, None),
            donate_argnums=(0,),
        )
        .lower(abstract_state, abstract_batch, jax.random.PRNGKey(0))
        .compile()
    )
    compile_s = time.perf_counter() - started
  return step, create, init_params, compile_s


def _model_and_optimizer(t5, num_memories, memory_length, variant, platform):
  """The SPT model of one row and its optimizer (see the module docstring)."""
  from spt_jax.local import trainer  # pylint: disable=g-import-not-at-top
  from spt_jax.model import config  # pylint: disable=g-import-not-at-top
  from spt_jax.model import models  # pylint: disable=g-import-not-at-top
  from spt_jax.model import network  # pylint: disable=g-import-not-at-top
  from spt_jax.optim import sparse_updates  # pylint: disable=g-import-not-at-top

  spt = config.SptConfig(
      num_memories=num_memories,
      memory_length=memory_length,
      top_k=TOP_K,
      key_dim=KEY_DIM,
      top_k_chunks=DEVICES if platform == 'cpu' else 1,
      key_gradient='sampled' if variant == 'sampled' else 'dense',
  )
  model = models.SptModel(network.SptTransformer(t5, spt))
  optimizer = trainer.adafactor()
  if variant in ('sparse', 'sampled'):
    optimizer = sparse_updates.sparse_bank_optimizer(
        optimizer, 'adam', 1e-3, keys=variant == 'sampled'
    )
  return model, optimizer


def worker(
    num_memories: int,
    memory_length: int,
    variant: str,
    repeats: int,
    size: str,
    max_bytes: float,
    dtype: str = 'float32',
    platform: str = 'cpu',
    batch_size: int = BATCH,
    inputs: int = INPUTS,
    targets: int = TARGETS,
    model_partitions: int = MODEL_PARTITIONS,
) -> dict:
  """One (bank, variant) in this process; returns its row."""
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import step_time  # pylint: disable=g-import-not-at-top
  from spt_jax.model import config  # pylint: disable=g-import-not-at-top
  from spt_jax.model import partitioning  # pylint: disable=g-import-not-at-top

  t5 = config.t5_1_1_config(size, dropout_rate=0.0, dtype=dtype)
  devices = jax.device_count()
  partitions = model_partitions if platform == 'cpu' else 1
  model, optimizer = _model_and_optimizer(
      t5, num_memories, memory_length, variant, platform
  )
  shapes = common.Shapes(size, batch_size, inputs, targets)
  batch = step_time.random_batch(shapes, t5.vocab_size)

  # Eight data-parallel replicas of T5-base do not fit in 24 GB: the model
  # is split over `model` (4: T5-base's 12 heads); the bank over all devices.
  mesh = partitioning.create_mesh(num_partitions=partitions)
  rules = partitioning.default_rules()
  data = partitioning.data_sharding(mesh)
  step, create, init_params, compile_s = _compiled_step(
      model, optimizer, batch, mesh, rules
  )
  row = {
      'num_memories': num_memories,
      'memory_length': memory_length,
      'variant': variant,
      'compile_s': compile_s,
      'values_bytes': num_memories * memory_length * t5.emb_dim * 4,
      **_memory(step, devices if platform == 'cpu' else 1),
      'dtype': dtype,
      'platform': platform,
  }
  if row['process_total_bytes'] > max_bytes:
    row['skipped'] = (
        f'needs {row["process_total_bytes"] / 1e9:.1f} GB, more than '
        f'--max_gb={max_bytes / 1e9:g}'
    )
    return row

  with partitioning.mesh_and_rules(mesh, rules):
    state = create(init_params(jax.random.PRNGKey(0)))
  sharded_batch = jax.device_put(batch, data)
  state_bytes = sum(
      shard.data.nbytes
      for leaf in jax.tree.leaves(state)
      for shard in leaf.addressable_shards
      if shard.device == jax.devices()[0]
  )
  row['state_bytes_device0'] = state_bytes
  times = common.time_interleaved(
      {variant: common.stepper(step, state, sharded_batch)},
      repeats,
      jax.block_until_ready,
  )
  row.update(common.summarize(times[variant]))
  return row


def run_worker(bank, variant, args) -> dict:
  env = dict(os.environ)
  if args.platform == 'cpu':
    env.update(
        XLA_FLAGS=f'--xla_force_host_platform_device_count={DEVICES}',
        JAX_PLATFORMS='cpu',
    )
  command = [
      sys.executable,
      '-m',
      'benchmarks.bank_scaling',
      '--worker',
      f'--banks={_bank_name(bank)}',
      f'--variants={variant}',
      f'--repeats={args.repeats}',
      f'--size={args.size}',
      f'--max_gb={args.max_gb}',
      f'--dtype={args.dtype}',
      f'--platform={args.platform}',
      f'--batch={args.batch}',
      f'--inputs={args.inputs}',
      f'--targets={args.targets}',
      f'--model_partitions={args.model_partitions}',
  ]
  common.log(f'{_bank_name(bank)} {variant}')
  done = subprocess.run(
      command,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      env=env,
      capture_output=True,
      text=True,
      check=False,
  )
  rows = [l for l in done.stdout.splitlines() if l.startswith('ROW_JSON ')]
  if done.returncode or not rows:
    return {
        'num_memories': bank[0],
        'memory_length': bank[1],
        'variant': variant,
        'failed': f'exit {done.returncode}: {done.stderr[-2000:]}',
    }
  return json.loads(rows[-1][len('ROW_JSON ') :])


def _worker_row(bank, variant, args) -> dict:
  """`worker` with the command line's settings."""
  return worker(
      bank[0],
      bank[1],
      variant,
      args.repeats,
      args.size,
      args.max_gb * 1e9,
      args.dtype,
      args.platform,
      args.batch,
      args.inputs,
      args.targets,
      args.model_partitions,
  )


def run_in_process(bank, variant, args) -> dict:
  """`worker` in this process; a failure becomes the row's `failed`."""
  common.log(f'{_bank_name(bank)} {variant} (in process)')
  try:
    return _worker_row(bank, variant, args)
  except Exception as e:  # pylint: disable=broad-except
    return {
        'num_memories': bank[0],
        'memory_length': bank[1],
        'variant': variant,
        'failed': f'{type(e).__name__}: {e}'[:2000],
    }


def _add_ratios(rows) -> None:
  """Each row's step time over the 256-memory step of its P and variant."""
  baseline = {
      (r['memory_length'], r['variant']): r['median_s']
      for r in rows
      if r['num_memories'] == 256 and 'median_s' in r
  }
  for r in rows:
    base = baseline.get((r['memory_length'], r['variant']))
    if base and 'median_s' in r:
      r['ratio_to_256'] = r['median_s'] / base
    r['xla_per_device_mb'] = r.get('xla_per_device_total_bytes', 0) / 2**20


def _result_name(args) -> str:
  """bank_scaling[_<size>_<banks>][_b<batch>x<in>x<out>][_<variants>]..."""
  name = 'bank_scaling'
  if (
      args.banks != ','.join(_bank_name(b) for b in BANKS)
      or args.size != 'base'
  ):
    name += (
        '_' + args.size + '_' + args.banks.replace(':', 'x').replace(',', '_')
    )
  if (args.batch, args.inputs, args.targets) != (BATCH, INPUTS, TARGETS):
    name += f'_b{args.batch}x{args.inputs}x{args.targets}'
  if args.variants != ','.join(VARIANTS):
    name += '_' + args.variants.replace(',', '_')
  if args.platform != 'cpu' or args.dtype != 'float32':
    name += f'_{args.platform}_{args.dtype}'
  return name


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--size', default='base')
  parser.add_argument(
      '--banks',
      default=','.join(_bank_name(b) for b in BANKS),
      help='Comma-separated memories:length pairs.',
  )
  parser.add_argument('--variants', default=','.join(VARIANTS))
  parser.add_argument(
      '--max_gb',
      type=float,
      default=20.0,
      help='Run a variant only if XLA says the process needs less (GB).',
  )
  parser.add_argument(
      '--dtype',
      default='float32',
      help="Activation dtype ('bfloat16' on a GPU).",
  )
  parser.add_argument(
      '--platform',
      default='cpu',
      choices=('cpu', 'gpu'),
      help='cpu: 8 fake devices (mesh 2 x 4); gpu: the visible devices, '
      'data-parallel.',
  )
  parser.add_argument(
      '--batch',
      type=int,
      default=BATCH,
      help='Global batch (split over the data axis).',
  )
  parser.add_argument('--inputs', type=int, default=INPUTS)
  parser.add_argument('--targets', type=int, default=TARGETS)
  parser.add_argument(
      '--model_partitions',
      type=int,
      default=MODEL_PARTITIONS,
      help="The mesh's model axis on CPU (it must divide the heads).",
  )
  parser.add_argument(
      '--in_process',
      action='store_true',
      help='Every (bank, variant) in this process, one after another (a GPU '
      'holds them all; saves a process start and jax import per row).',
  )
  parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  return parser.parse_args()


def main() -> None:
  args = _parse_args()
  banks = [tuple(int(x) for x in b.split(':')) for b in args.banks.split(',')]
  variants = args.variants.split(',')
  if args.worker:
    (bank,), (variant,) = banks, variants
    row = _worker_row(bank, variant, args)
    print('ROW_JSON ' + json.dumps(row, default=str), flush=True)
    return

  if args.in_process and args.platform == 'cpu':
    os.environ.setdefault(
        'XLA_FLAGS', f'--xla_force_host_platform_device_count={DEVICES}'
    )
  rows = []
  for bank in banks:
    for variant in variants:
      rows.append(
          run_in_process(bank, variant, args)
          if args.in_process
          else run_worker(bank, variant, args)
      )
      # Each row as it comes, so that an interrupted run keeps its rows.
      common.log('ROW_JSON ' + json.dumps(rows[-1], default=str))
  _add_ratios(rows)
  common.print_table(
      rows,
      [
          'num_memories',
          'memory_length',
          'variant',
          'median_s',
          'min_s',
          'cpu_median_s',
          'ratio_to_256',
          'xla_per_device_mb',
          'skipped',
          'failed',
      ],
  )
  name = _result_name(args)
  path = common.write_results(
      name,
      {
          'machine': common.machine(),
          'size': args.size,
          'batch': args.batch,
          'inputs': args.inputs,
          'targets': args.targets,
          'top_k': TOP_K,
          'key_dim': KEY_DIM,
          'dtype': args.dtype,
          'platform': args.platform,
          'devices': DEVICES,
          'mesh': {
              'data': DEVICES // args.model_partitions,
              'model': args.model_partitions,
          },
          'bank_shards': DEVICES,
          'memory': 'xla_per_device_*: compiled.memory_analysis() of the step on '
          'one of the 8 devices; state_bytes_device0: the allocated '
          'state on device 0',
          'rows': rows,
      },
  )
  print(f'\nWrote {path}')


if __name__ == '__main__':
  main()
