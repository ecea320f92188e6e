"""Reading `benchmarks.input_pipeline`'s pipelines, and what the model reads.

The training batches of a mixture and their render-only counterpart, a
reader that drains and times them, the rendering ceiling of one Python
thread, the CPU model step at the same lengths, and what accelerators would
consume (`accelerator_demand`).
"""

import functools
import time
from typing import Any, Callable, Dict, List, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from benchmarks import common
from benchmarks import input_fixture
from benchmarks import step_time
from spt_jax.local import train_data
from spt_jax.local import trainer
from spt_jax.model import config
from spt_jax.model import feature_converters
from spt_jax.model import models
from spt_jax.model import network
from tasks import preprocessors

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
        cfg,
        1,
        lengths['inputs'] + lengths.get('prompt', 0) + prefix,
        lengths['targets'],
    )
    row = {'size': size, 'train_tflop_per_example': flops / 1e12}
    for name, peak in PEAK_TFLOPS.items():
      row[f'{accelerators}x {name}'] = accelerators * peak * 1e12 * mfu / flops
    rows.append(row)
  return rows
