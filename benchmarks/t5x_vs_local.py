r"""Seconds per training step after compilation: T5X's trainer vs the local runner.

Both runners train the same tiny SPT on the offline synthetic mixture (T5 1.1
tiny, bank of 8 memories x 4 vectors, top-2; batch 32; inputs 48 + prompt 16,
targets 8; float32; no dropout; one device), from their own gin files:

  t5x    python -m t5x.train, models/spt_t5_1_1_tiny.gin + runs/spt_pretrain.gin
         + mixtures/synthetic.gin
  local  python -m spt_jax.local.train, local/synthetic.gin

Each run's step time is what the runner itself records in TensorBoard, per
period of `--period` steps: T5X's `timing/steps_per_second`, the local
runner's `steps_per_second`. The first period (compilation) is dropped; the
median of the others is the run's figure. Runs alternate (t5x, local, local,
t5x, ...) so that drift of the machine hits both. Needs T5X installed.

  python -m benchmarks.t5x_vs_local --repeats=2
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from benchmarks import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_STEPS = flags.DEFINE_integer('steps', 400, 'Training steps per run.')
_PERIOD = flags.DEFINE_integer('period', 100, 'Steps per timing period.')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Runs of each runner.')


def _command(runner: str, model_dir: str):
  steps, period = _STEPS.value, _PERIOD.value
  if runner == 't5x':
    files = [
        'gin_configs/models/spt_t5_1_1_tiny.gin',
        'gin_configs/runs/spt_pretrain.gin',
        'gin_configs/mixtures/synthetic.gin',
    ]
    bindings = [
        f'MODEL_DIR="{model_dir}"',
        f'TRAIN_STEPS={steps}',
        f'utils.SaveCheckpointConfig.period={period}',
        '__main__.train.train_eval_dataset_cfg=None',
    ]
    return (
        ['-m', 't5x.train', f'--gin_search_paths={REPO}']
        + [f'--gin_file={f}' for f in files]
        + [f'--gin.{b}' for b in bindings]
    ), 'timing/steps_per_second'
  bindings = [
      f'MODEL_DIR="{model_dir}"',
      f'TRAIN_STEPS={steps}',
      f'LOG_PERIOD={period}',
      f'CHECKPOINT_PERIOD={steps}',
      'EVAL_MIXTURE_OR_TASK_NAME=None',
  ]
  return (
      [
          '-m',
          'spt_jax.local.train',
          '--gin_file=gin_configs/local/synthetic.gin',
      ]
      + [f'--gin.{b}' for b in bindings]
  ), 'steps_per_second'


def _steps_per_second(events_dir: str, tag: str):
  """{step: value} of a scalar in a TensorBoard folder."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top

  events = event_accumulator.EventAccumulator(
      events_dir, size_guidance={event_accumulator.TENSORS: 0}
  )
  events.Reload()
  return {
      e.step: float(tf.make_ndarray(e.tensor_proto))
      for e in events.Tensors(tag)
  }


def run_once(runner: str):
  """Seconds per step (median over periods after the first) of one run."""
  with tempfile.TemporaryDirectory() as model_dir:
    args, tag = _command(runner, model_dir)
    env = dict(
        os.environ,
        PYTHONPATH=REPO,
        JAX_PLATFORMS='cpu',
        TF_CPP_MIN_LOG_LEVEL='3',
    )
    env.pop('XLA_FLAGS', None)
    start = time.time()
    subprocess.run(
        [sys.executable] + args,
        cwd=REPO,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.time() - start
    rates = _steps_per_second(os.path.join(model_dir, 'train'), tag)
  steps = sorted(rates)
  if len(steps) < 2:
    raise RuntimeError(f'{runner}: found {len(steps)} timing periods in {tag}.')
  seconds = [1.0 / rates[s] for s in steps[1:]]
  return statistics.median(seconds), seconds, wall


def main(argv):
  del argv
  order = []
  for i in range(_REPEATS.value):
    order += ['t5x', 'local'] if i % 2 == 0 else ['local', 't5x']
  runs = {'t5x': [], 'local': []}
  for runner in order:
    common.log(f'{runner}: {_STEPS.value} steps')
    median, periods, wall = run_once(runner)
    runs[runner].append(
        {
            's_per_step': median,
            'periods_s_per_step': periods,
            'process_wall_s': wall,
        }
    )
  rows = []
  for runner, results in runs.items():
    per_run = [r['s_per_step'] for r in results]
    rows.append(
        {
            'runner': runner,
            'ms_per_step': 1e3 * statistics.median(per_run),
            'ms_min': 1e3 * min(per_run),
            'ms_max': 1e3 * max(per_run),
            'process_s': statistics.median(
                r['process_wall_s'] for r in results
            ),
        }
    )
  ratio = rows[0]['ms_per_step'] / rows[1]['ms_per_step']
  common.print_table(rows)
  print(f't5x / local step time: {ratio:.3f}')
  path = common.write_results(
      't5x_vs_local',
      {
          'machine': common.machine(),
          'steps': _STEPS.value,
          'period': _PERIOD.value,
          'order': order,
          'runs': runs,
          'rows': rows,
          't5x_over_local': ratio,
      },
  )
  common.log(f'wrote {path}')


if __name__ == '__main__':
  app.run(main)
