r"""Train and evaluate model variants side by side, then print a results table.

Each variant is the base gin configuration plus its own gin files, trained in
its own folder under `--model_dir` with the same data, seed and steps. With no
flags this is the project's embedded default: a tiny SPT and the same model
without memory, trained on the offline synthetic mixture and evaluated
zero-shot on its held-out templates and tasks by rank classification.

    python -m spt_jax.compare [--model_dir=runs/default] \
      [--variant=prompt_tuning:gin_configs/spt/prompt_tuning.gin] \
      [--gin.TRAIN_STEPS=3000]
"""

import os
import statistics
from typing import Dict, Mapping, Sequence, Tuple

from absl import flags
from absl import logging
import gin
import jax

from spt_jax import gin_utils
from spt_jax import train as train_lib

DEFAULT_VARIANTS = (
    'spt:',
    'no_memory:gin_configs/spt/no_memory.gin',
)


def parse_variant(spec: str) -> Tuple[str, Tuple[str, ...]]:
  """'name:a.gin,b.gin' -> ('name', ('a.gin', 'b.gin'))."""
  name, _, files = spec.partition(':')
  if not name:
    raise ValueError(f'Expected a variant as NAME:GIN_FILE[,GIN_FILE], got {spec!r}.')
  return name, tuple(f for f in files.split(',') if f)


def train_variant(
    name: str,
    gin_files: Sequence[str],
    variant_files: Sequence[str],
    bindings: Sequence[str],
    model_dir: str,
) -> train_lib.TrainResult:
  """Trains one variant in `model_dir/name` from a fresh gin configuration."""
  gin.clear_config()
  gin_utils.parse_gin(
      list(gin_files) + list(variant_files),
      list(bindings) + [f'MODEL_DIR = "{os.path.join(model_dir, name)}"'],
  )
  print(f'\n== {name} ==', flush=True)
  return gin.get_configurable(train_lib.train)()


def results_table(results: Mapping[str, train_lib.TrainResult]) -> str:
  """Accuracy per held-out dataset: mean and median over templates per variant."""
  names = list(results)
  datasets = sorted(
      {d for r in results.values() if r.eval_results for d in r.eval_results.datasets}
  )
  header = ['dataset'] + [f'{n} mean / median' for n in names]
  rows = []
  averages: Dict[str, list] = {n: [] for n in names}
  for dataset in datasets:
    row = [dataset]
    for n in names:
      stats = results[n].eval_results.datasets.get(dataset, {})
      mean, median = stats.get('mean'), stats.get('median')
      if mean is None:
        row.append('-')
        continue
      averages[n].append(mean)
      row.append(f'{mean:5.1f} / {median:5.1f}')
    rows.append(row)
  rows.append(
      ['average'] + [
          f'{statistics.mean(averages[n]):5.1f}' if averages[n] else '-'
          for n in names
      ]
  )
  rows.append(
      ['train loss (last)'] + [
          f'{results[n].metrics.get("cross_entropy", float("nan")):.3f}'
          for n in names
      ]
  )
  widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

  def fmt(row):
    return ' | '.join(str(c).ljust(w) for c, w in zip(row, widths))

  line = '-+-'.join('-' * w for w in widths)
  return '\n'.join([fmt(header), line] + [fmt(r) for r in rows])


def main(argv: Sequence[str]) -> None:
  del argv
  if not FLAGS['verbosity'].present:
    # Progress bars and the table; --verbosity=0 shows the runner's logs.
    logging.set_verbosity(logging.WARNING)
  variants = [parse_variant(v) for v in FLAGS.variant or DEFAULT_VARIANTS]
  gin_files = FLAGS.gin_file or ['gin_configs/local/synthetic.gin']
  results = {
      name: train_variant(name, gin_files, files, FLAGS.gin_bindings, FLAGS.model_dir)
      for name, files in variants
  }
  if jax.process_index() == 0:
    table = results_table(results)
    with open(os.path.join(FLAGS.model_dir, 'results.txt'), 'w') as f:
      f.write(table + '\n')
    print('\nZero-shot held-out accuracy (%, rank classification):\n')
    print(table)
    print(f'\nWritten to {os.path.join(FLAGS.model_dir, "results.txt")}.')


if __name__ == '__main__':
  flags.DEFINE_string('model_dir', 'runs/default', 'Each variant trains in a subfolder.')
  flags.DEFINE_multi_string(
      'variant', [],
      f'NAME:GIN_FILE[,GIN_FILE] added to the base configuration (default: '
      f'{" and ".join(DEFAULT_VARIANTS)}).',
  )
  FLAGS = flags.FLAGS
  gin_utils.run(main)
