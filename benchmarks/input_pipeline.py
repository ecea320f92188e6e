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
import numpy as np  # pylint: disable=g-import-not-at-top
import seqio  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from benchmarks import input_copies  # pylint: disable=g-import-not-at-top
from benchmarks import input_fixture  # pylint: disable=g-import-not-at-top
from benchmarks import step_time  # pylint: disable=g-import-not-at-top
import tasks  # pylint: disable=g-import-not-at-top,unused-import
from spt_jax.local import train_data  # pylint: disable=g-import-not-at-top
from spt_jax.local import trainer  # pylint: disable=g-import-not-at-top
from spt_jax.model import config  # pylint: disable=g-import-not-at-top
from spt_jax.model import feature_converters  # pylint: disable=g-import-not-at-top
from spt_jax.model import models  # pylint: disable=g-import-not-at-top
from spt_jax.model import network  # pylint: disable=g-import-not-at-top
from tasks import p3  # pylint: disable=g-import-not-at-top
from tasks import preprocessors  # pylint: disable=g-import-not-at-top
from tasks import synthetic  # pylint: disable=g-import-not-at-top

# --------------------------------------------------------------- Pipelines --


def train_batches(
    name: str,
    lengths: Mapping[str, int],
    prompt_length: int,
    batch_size: int,
    seed: int = 0,
    use_cached: bool = False,
):
  """One host's training batches: `spt_jax.local.train_data.get_train_dataset`."""
  return train_data.get_train_dataset(
      name,
      dict(lengths),
      batch_size,
      functools.partial(
          feature_converters.SptEncDecFeatureConverter,
          prompt_length=prompt_length,
      ),
      seed,
      shard_info=seqio.ShardInfo(0, 1),
      use_cached=use_cached,
  )


def render_only_batches(
    datasets: Sequence[str], batch_size: int, seed: int = 0
):
  """The T0 mixture cut after rendering: source, template, mixed, batched.

  Each task's raw records (shuffled, repeated) through its first
  preprocessor (`tasks.preprocessors.apply_template`, the Jinja template in
  `tf.numpy_function`), sampled with T0's rates: what the pipeline can render
  per second, with nothing after it to share the cores with.
  """
  streams, rates = [], []
  for dataset, names in input_fixture.t0_task_names(datasets).items():
    for name in names:
      task = seqio.get_mixture_or_task(name)
      raw = task.source.get_dataset('train', shuffle=True, seed=seed)
      rendered = task.preprocessors[0](raw.repeat())
      streams.append(
          rendered.map(
              lambda ex: {k: ex[k] for k in ('inputs', 'targets', 'prompt')}
          )
      )
      rates.append(float(input_fixture.t0_rate(dataset, len(names))))
  mixed = tf.data.Dataset.sample_from_datasets(
      streams, weights=np.asarray(rates) / np.sum(rates), seed=seed
  )
  return mixed.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


class PipelineReader:
  """Reads the batches of one pipeline."""

  def __init__(self, dataset, batch_size: int):
    self.batch_size = batch_size
    self._iterator = dataset.as_numpy_iterator()

  def read(self, batches: int) -> List[Dict[str, np.ndarray]]:
    return [next(self._iterator) for _ in range(batches)]

  def timed(self, batches: int, drain: int):
    """Wall and CPU seconds of `batches` batches read after `drain` more.

    The drained batches, untimed, empty what the pipeline buffered while
    others were timed.
    """

    for _ in range(drain):
      next(self._iterator)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
      next(self._iterator)
    return common.Measured(
        time.perf_counter() - wall, time.process_time() - cpu
    )


def render_ceiling(
    datasets: Sequence[str], seconds: float = 5.0, seed: int = 0
) -> Dict[str, float]:
  """Examples/s of `apply_template`'s Python work alone, in one thread.

  What its `render` does per example inside `tf.numpy_function` (numpy
  values to Python, the template, UTF-8 encoding), on raw records as tf.data
  hands them over, templates drawn with T0's rates. Timed by the thread's
  CPU clock: the GIL lets no more than one thread do this at a time, so no
  number of tf.data threads renders faster than `examples_per_cpu_s`.
  """
  work, weights = [], []
  for dataset, names in input_fixture.t0_task_names(datasets).items():
    source = seqio.get_mixture_or_task(names[0]).source
    raw = list(
        source.get_dataset('train', shuffle=False).take(200).as_numpy_iterator()
    )
    for name in names:
      template = (
          seqio.get_mixture_or_task(name).preprocessors[0].keywords['template']
      )
      work.append((template, raw))
      weights.append(input_fixture.t0_rate(dataset, len(names)))
  weights = np.asarray(weights, float) / np.sum(weights)
  rng = np.random.default_rng(seed)
  count, chars, spent = 0, 0, 0.0
  while spent < seconds:
    template, raw = work[rng.choice(len(work), p=weights)]
    example = raw[rng.integers(len(raw))]
    flat = tf.nest.flatten(example)
    start = time.thread_time()
    value = preprocessors.to_python(tf.nest.pack_sequence_as(example, flat))
    rendered = template.render(value)
    if rendered is not None:
      encoded = [
          rendered.inputs.encode('utf-8'),
          rendered.targets.encode('utf-8'),
      ]
      encoded += [c.encode('utf-8') for c in rendered.answer_choices]
      chars += len(encoded[0]) + len(encoded[1])
    spent += time.thread_time() - start
    count += 1
  return {
      'examples_per_cpu_s': count / spent,
      'cpu_us_per_example': 1e6 * spent / count,
      'rendered_chars_per_example': chars / count,
  }


# ------------------------------------------------------------ Model steps ---


def model_steps(
    sizes: Sequence[str], batch: int, lengths: Mapping[str, int]
) -> Dict[str, Callable[[], Any]]:
  """`benchmarks.step_time`'s plain T5 1.1 training step at the lengths."""
  steps = {}
  for size in sizes:
    shapes = common.Shapes(size, batch, lengths['inputs'], lengths['targets'])
    cfg = config.t5_1_1_config(size)
    common.log(f'compiling the T5-{size} step')
    arrays = step_time.random_batch(shapes, cfg.vocab_size)
    params = step_time.backbone_params(cfg, shapes, 0)
    model = models.SptModel(network.SptTransformer(cfg, config.NO_SPT))
    compiled, state = step_time.compiled_step(
        model, trainer.adafactor(), params, arrays
    )
    steps[f'model_t5_{size}'] = common.stepper(compiled, state, arrays)
  return steps


# Peak dense bf16 FLOP/s of one accelerator, for the estimate.
PEAK_TFLOPS = {'H100/H200': 989.0, 'TPU v4 chip': 275.0, 'TPU v3 core': 61.5}


def accelerator_demand(
    lengths: Mapping[str, int],
    mfu: float,
    accelerators: int = 8,
    sizes: Sequence[str] = ('small', 'base', 'large', 'xl', 'xxl'),
    prefix: int = 40,
) -> List[Dict[str, Any]]:
  """Examples/s that `accelerators` chips would consume, from FLOPs.

  Training FLOPs per example (`common.t5_train_flops`, full fine-tuning;
  the encoder holds the inputs, the discrete prompt and SPT's `prefix`
  prepended positions) at `mfu` of each accelerator's peak. An estimate, not
  a measurement.
  """
  rows = []
  for size in sizes:
    cfg = config.t5_1_1_config(size)
    flops = common.t5_train_flops(
        cfg.emb_dim,
        cfg.num_heads,
        cfg.head_dim,
        cfg.mlp_dim,
        cfg.num_encoder_layers,
        cfg.num_decoder_layers,
        cfg.vocab_size,
        1,
        lengths['inputs'] + lengths.get('prompt', 0) + prefix,
        lengths['targets'],
    )
    row = {'size': size, 'train_tflop_per_example': flops / 1e12}
    for name, peak in PEAK_TFLOPS.items():
      row[f'{accelerators}x {name}'] = accelerators * peak * 1e12 * mfu / flops
    rows.append(row)
  return rows


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
      out[variant] = train_batches(
          input_fixture.MIXTURE, lengths, lengths['prompt'], batch_size, seed
      )
    elif variant == 't0_render_only':
      out[variant] = render_only_batches(prepared.datasets, batch_size, seed)
    elif variant == 't0_prerendered':
      out[variant] = train_batches(
          input_fixture.PRERENDERED_MIXTURE,
          lengths,
          lengths['prompt'],
          batch_size,
          seed,
      )
    elif variant == 't0_cached':
      seqio.add_global_cache_dirs([prepared.fixture.cache_dir])
      out[variant] = train_batches(
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
      out[variant] = train_batches(
          p3.datasets.T0_TRAIN_MIXTURE,
          {k: v for k, v in lengths.items() if k != 'prompt'},
          0,
          batch_size,
          seed,
      )
    elif variant == 'synthetic':
      lengths_ = synthetic.SYNTHETIC_FEATURE_LENGTHS
      out[variant] = train_batches(
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
    readers: Mapping[str, PipelineReader], examples: int
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
    readers: Mapping[str, PipelineReader],
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


def main() -> None:
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
  args = parser.parse_args()
  variants = [v for v in args.variants.split(',') if v]
  datasets = [d for d in args.datasets.split(',') if d]
  sizes = [s for s in args.model_sizes.split(',') if s]

  root = args.fixture_dir or tempfile.mkdtemp(prefix='spt_input_pipeline_')
  common.log(f'writing the fixture to {root}')
  prepared = prepare(root, variants, datasets, args.records, args.cache_writer)
  readers = {
      name: PipelineReader(ds, args.batch)
      for name, ds in pipelines(prepared, variants, args.batch).items()
  }
  warmup = warm_up(readers, args.warmup_examples)
  steps = model_steps(sizes, args.model_batch, input_fixture.T0_LENGTHS)
  ceiling = render_ceiling(datasets)
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
  demand = accelerator_demand(input_fixture.T0_LENGTHS, args.mfu)

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
