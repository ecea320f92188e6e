r"""Examples per second of the input pipeline against what the model consumes.

Every variant is the training pipeline of `spt_jax.local.train_data.get_train_dataset`
(seqio mixture, shuffled and repeated, `SptEncDecFeatureConverter` without
packing, batched per host), read after a warm-up, on offline fixtures written
here:

  t0              T0's training datasets that are read from local exports
                  (21 of its 36; the other 15 come from TFDS), as JSON lines
                  of generated text with each field at about its dataset's
                  typical length, through our prompted tasks
                  (`spt_t0__<dataset>__<template>`, 63 tasks: the Jinja
                  templates are rendered in `tf.numpy_function`, then
                  tokenised), T0's mixing rates, inputs 1024 / targets 256 /
                  prompt 64.
  t0_prerendered  the same examples, rendered once up front: the pipeline
                  starts from the rendered text and only tokenises (what is
                  left when rendering costs nothing).
  t0_cached       the same tasks read from a SeqIO cache
                  (`get_dataset(use_cached=True)`, T5X's `USE_CACHED_TASKS =
                  True), written as `seqio.scripts.cache_tasks_main` writes
                  it (`write_cache_in_process`; `--cache_writer=beam` runs
                  the script itself).
  p3              P3 (pre-tokenised TFRecords, `tasks.p3`): a fixture of one
                  P3 folder per task above holding that task's examples, read
                  through `spt_p3_t0_train` (no promptsource: no prompt).
  synthetic       the offline synthetic mixture at its own lengths (48 / 8 /
                  16), the reference.

Beside them, the training step of T5 1.1 at 1024 / 256 tokens on this host
(`benchmarks.step_time`'s step: full fine-tuning, Adafactor, dropout 0.1),
for `pipeline / model` ratios; and, as an estimate (no accelerator here),
what 8 accelerators would consume at T0's lengths (`accelerator_demand`).
`render_ceiling` times the rendering of the numpy_function alone, in one
Python thread, on the same examples: under the GIL the whole pipeline cannot
render faster than that, whatever its parallelism.

    python -m benchmarks.input_pipeline --repeats=3
    python -m benchmarks.input_pipeline --variants=t0,p3 --model_sizes= --repeats=2

The fixture is written by `benchmarks.input_fixture`, its caches, P3 folders
and pre-rendered copy by `benchmarks.input_copies`.

Variants are timed side by side in one process (`common.time_interleaved`):
each timed call first drains `--drain_batches` batches, untimed, so that
what the paused pipelines had buffered is not counted, then times
`--batches` batches. Writes benchmarks/results/input_pipeline.json.
"""

import argparse
import dataclasses
import functools
import os
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Mapping, Sequence

if __package__ in (None, ''):
  sys.path.insert(
      0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  )

import jax  # pylint: disable=g-import-not-at-top
import seqio  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from benchmarks import input_copies  # pylint: disable=g-import-not-at-top
from benchmarks import input_fixture  # pylint: disable=g-import-not-at-top
from benchmarks import input_readers  # pylint: disable=g-import-not-at-top
import tasks  # pylint: disable=g-import-not-at-top,unused-import
from tasks import p3  # pylint: disable=g-import-not-at-top
from tasks import synthetic  # pylint: disable=g-import-not-at-top

# ---------------------------------------------------------------- Measure ---

VARIANTS = (
    't0',
    't0_render_only',
    't0_prerendered',
    't0_cached',
    'p3',
    'synthetic',
)


@dataclasses.dataclass
class Prepared:
  """The fixture and what was derived from it."""

  fixture: input_fixture.Fixture
  datasets: Sequence[str]
  task_names: List[str]
  seconds: Dict[str, float] = dataclasses.field(default_factory=dict)


def prepare(
    root: str,
    variants: Sequence[str],
    datasets: Sequence[str],
    records: int,
    cache_writer: str = 'in_process',
) -> Prepared:
  """Writes the fixture, and the P3 copy and SeqIO cache the variants need.

  Args:
    root: the fixture's folder.
    variants: the variants to measure.
    datasets: the T0 datasets.
    records: training records per dataset.
    cache_writer: 'beam' (`seqio.scripts.cache_tasks_main`) or 'in_process'
      (`input_copies.write_cache_in_process`, the same cache).

  Returns:
    What was prepared, with the seconds each part took.
  """
  seconds = {}
  start = time.perf_counter()
  fixture = input_fixture.write_fixture(root, datasets, records)
  task_names = input_fixture.register_t0_mixture(datasets)
  seconds['fixture'] = time.perf_counter() - start
  prepared = Prepared(fixture, list(datasets), task_names, seconds=seconds)
  needs = set(variants)
  examples = {}
  if needs & {'t0_prerendered', 'p3'} or (
      't0_cached' in needs and cache_writer == 'in_process'
  ):
    start = time.perf_counter()
    examples = {
        name: input_copies.precache_examples(name) for name in task_names
    }
    seconds['precache_examples'] = time.perf_counter() - start
  if 't0_cached' in needs:
    common.log(f'caching {len(task_names)} tasks ({cache_writer})')
    start = time.perf_counter()
    if cache_writer == 'beam':
      input_copies.write_cache_with_beam(fixture.cache_dir, task_names)
    else:
      input_copies.write_cache_in_process(
          fixture.cache_dir, task_names, examples
      )
    seconds[f'cache_{cache_writer}'] = time.perf_counter() - start
  if 'p3' in needs:
    input_copies.write_p3_fixture(fixture, datasets, examples)
  if 't0_prerendered' in needs:
    input_copies.register_prerendered_mixture(datasets, examples)
  return prepared


def pipelines(
    prepared: Prepared,
    variants: Sequence[str],
    batch_size: int,
    seed: int = 0,
    lengths: Mapping[str, int] = input_fixture.T0_LENGTHS,
) -> Dict[str, Any]:
  """The batched tf.data pipeline of each variant."""
  out = {}
  for variant in variants:
    if variant == 't0':
      out[variant] = input_readers.train_batches(
          input_fixture.MIXTURE, lengths, lengths['prompt'], batch_size, seed
      )
    elif variant == 't0_render_only':
      out[variant] = input_readers.render_only_batches(
          prepared.datasets, batch_size, seed
      )
    elif variant == 't0_prerendered':
      out[variant] = input_readers.train_batches(
          input_fixture.PRERENDERED_MIXTURE,
          lengths,
          lengths['prompt'],
          batch_size,
          seed,
      )
    elif variant == 't0_cached':
      seqio.add_global_cache_dirs([prepared.fixture.cache_dir])
      out[variant] = input_readers.train_batches(
          input_fixture.MIXTURE,
          lengths,
          lengths['prompt'],
          batch_size,
          seed,
          use_cached=True,
      )
    elif variant == 'p3':
      p3.mixtures.register(
          prepared.fixture.p3_dir,
          vocabulary=seqio.SentencePieceVocabulary(
              prepared.fixture.vocab_path, extra_ids=100
          ),
      )
      out[variant] = input_readers.train_batches(
          p3.datasets.T0_TRAIN_MIXTURE,
          {k: v for k, v in lengths.items() if k != 'prompt'},
          0,
          batch_size,
          seed,
      )
    elif variant == 'synthetic':
      lengths_ = synthetic.SYNTHETIC_FEATURE_LENGTHS
      out[variant] = input_readers.train_batches(
          synthetic.TRAIN_MIXTURE,
          lengths_,
          lengths_['prompt'],
          batch_size,
          seed,
      )
    else:
      raise ValueError(
          f'Unknown variant {variant!r}; expected one of ' f'{VARIANTS}.'
      )
  return out


def warm_up(
    readers: Mapping[str, input_readers.PipelineReader], examples: int
) -> Dict[str, Dict[str, float]]:
  """Reads `examples` from each pipeline (filling its shuffle buffers)."""
  out = {}
  for name, reader in readers.items():
    start = time.perf_counter()
    reader.read(1)
    first = time.perf_counter() - start
    reader.read(max(0, -(-examples // reader.batch_size) - 1))
    out[name] = {
        'first_batch_s': first,
        'warmup_s': time.perf_counter() - start,
    }
    common.log(
        f'{name}: first batch after {first:.1f} s, {examples} examples '
        f'after {out[name]["warmup_s"]:.1f} s'
    )
  return out


def measure(
    readers: Mapping[str, input_readers.PipelineReader],
    steps: Mapping[str, Callable[[], Any]],
    step_batch: int,
    batches: int,
    drain: int,
    repeats: int,
    pause_s: float,
) -> List[Dict[str, Any]]:
  """Examples/s of every pipeline and model step, timed side by side."""
  fns = {
      name: functools.partial(reader.timed, batches, drain)
      for name, reader in readers.items()
  }
  fns.update(steps)
  times = common.time_interleaved(
      fns, repeats, jax.block_until_ready, warmup=1, pause_s=pause_s
  )
  rows = []
  for name, timing in times.items():
    summary = common.summarize(timing)
    examples = (
        readers[name].batch_size * batches if name in readers else step_batch
    )
    rows.append(
        {
            'variant': name,
            'examples_per_call': examples,
            'examples_per_s': examples / summary['median_s'],
            'cpu_ms_per_example': 1e3 * summary['cpu_median_s'] / examples,
            'cores_busy': summary['cpu_median_s'] / summary['median_s'],
            **summary,
        }
    )
  return rows


def ratios(rows: Sequence[Mapping[str, Any]]) -> Dict[str, Dict[str, float]]:
  """examples/s of each pipeline over t0, synthetic and each model step."""
  by_name = {r['variant']: r for r in rows}
  table = {}
  pipes = [n for n in by_name if not n.startswith('model_')]
  bases = [n for n in ('t0', 'synthetic') if n in by_name] + [
      n for n in by_name if n.startswith('model_')
  ]
  for a in pipes:
    for b in bases:
      if a != b:
        table[f'{a}_over_{b}'] = {
            'examples_per_s': by_name[a]['examples_per_s']
            / by_name[b]['examples_per_s'],
            'cpu_per_example': by_name[b]['cpu_ms_per_example']
            / by_name[a]['cpu_ms_per_example'],
        }
  return table


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--variants', default=','.join(VARIANTS))
  parser.add_argument(
      '--model_sizes',
      default='small,base',
      help='T5 1.1 sizes whose step to time ("" for none).',
  )
  parser.add_argument('--model_batch', type=int, default=2)
  parser.add_argument(
      '--batch', type=int, default=32, help="Pipeline batch (one host's rows)."
  )
  parser.add_argument(
      '--batches', type=int, default=40, help='Timed batches per call.'
  )
  parser.add_argument('--drain_batches', type=int, default=16)
  parser.add_argument('--warmup_examples', type=int, default=20_000)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--pause_s', type=float, default=3.0)
  parser.add_argument(
      '--records',
      type=int,
      default=1000,
      help='Fixture training records per dataset.',
  )
  parser.add_argument('--datasets', default=','.join(input_fixture.TRAIN_SIZES))
  parser.add_argument(
      '--cache_writer',
      default='in_process',
      choices=('in_process', 'beam'),
      help="How the t0_cached variant's cache is written "
      '(input_copies.write_cache_in_process).',
  )
  parser.add_argument(
      '--mfu',
      type=float,
      default=0.4,
      help='Assumed MFU of the accelerator estimate.',
  )
  parser.add_argument(
      '--fixture_dir',
      help='Where to write the fixture (default: a new ' 'temporary folder).',
  )
  return parser.parse_args()


def main() -> None:
  args = _parse_args()
  variants = [v for v in args.variants.split(',') if v]
  datasets = [d for d in args.datasets.split(',') if d]
  sizes = [s for s in args.model_sizes.split(',') if s]

  root = args.fixture_dir or tempfile.mkdtemp(prefix='spt_input_pipeline_')
  common.log(f'writing the fixture to {root}')
  prepared = prepare(root, variants, datasets, args.records, args.cache_writer)
  readers = {
      name: input_readers.PipelineReader(ds, args.batch)
      for name, ds in pipelines(prepared, variants, args.batch).items()
  }
  warmup = warm_up(readers, args.warmup_examples)
  steps = input_readers.model_steps(
      sizes, args.model_batch, input_fixture.T0_LENGTHS
  )
  ceiling = input_readers.render_ceiling(datasets)
  common.log(f'render ceiling: {ceiling}')
  rows = measure(
      readers,
      steps,
      args.model_batch,
      args.batches,
      args.drain_batches,
      args.repeats,
      args.pause_s,
  )
  table = ratios(rows)
  demand = input_readers.accelerator_demand(input_fixture.T0_LENGTHS, args.mfu)

  common.print_table(
      rows,
      [
          'variant',
          'examples_per_s',
          'median_s',
          'min_s',
          'cpu_ms_per_example',
          'cores_busy',
      ],
  )
  print()
  common.print_table([{'ratio': k, **v} for k, v in table.items()])
  print(f'\nrender ceiling (one thread): {ceiling}\n')
  common.print_table(demand)
  path = common.write_results(
      'input_pipeline',
      {
          'machine': common.machine(),
          'settings': vars(args),
          'fixture_seconds': prepared.seconds,
          'warmup': warmup,
          'rows': rows,
          'ratios': table,
          'render_ceiling': ceiling,
          'accelerator_demand': {
              'mfu': args.mfu,
              'accelerators': 8,
              'rows': demand,
          },
      },
  )
  common.log(f'wrote {path}')


if __name__ == '__main__':
  main()
