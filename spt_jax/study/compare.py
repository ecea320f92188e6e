r"""The study: SPT against its baselines, over seeds, with retrieval statistics.

Each variant is the base gin configuration plus its own gin files; each
(variant, seed) trains in `--model_dir/<variant>/seed_<seed>` and records
what it measured in `result.json` there. A second invocation reuses every
recorded run and trains only what is missing, so running the same command
again prints the recorded table. A variant written `NAME:FILES@OTHER` starts
from the trained run of variant OTHER with the same seed (the local runner's
INITIAL_CHECKPOINT_PATH).

With no flags this is the project's embedded default: `DEFAULT_SEEDS` seeds
of the variants; the study (`./run_t5x.sh study`) runs more seeds and reuses
the default's runs:

    python -m spt_jax.study.compare              # runs/default
    python -m spt_jax.study.compare --seeds=20   # the study

Every invocation shows all the seeds recorded for every variant, at least
`--seeds`.

The variants (gin_configs/local/study/): `spt`; `no_memory`; and
`prompt_tuning` with as many prepended positions as SPT retrieves. Every run
is evaluated zero-shot by rank classification on the held-out test split
(`spt_study_test`), and runs with a memory bank report how consistently each
family's templates retrieve the same memories
(`retrieval_stats.retrieval_consistency`). `results.txt` holds accuracy per
family and on average as mean +- standard error over seeds, then each
comparison's paired difference over seeds with its 95% t interval
(`results.differences_table`); `results.png` plots both (accuracy bars ± SE,
then the differences with their intervals).
"""

import dataclasses
import os
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from absl import flags
from absl import logging
import gin
import jax
import numpy as np
import seqio
import tensorflow as tf
import tqdm

from spt_jax import eval_protocol
from spt_jax import gin_utils
from spt_jax.local import eval as eval_lib
from spt_jax.local import train as train_lib
from spt_jax.local import train_checkpoints
from spt_jax.model import models
from spt_jax.model import network
from spt_jax.study import analysis
from spt_jax.study import results
from spt_jax.study import retrieval_stats

BASE_GIN = 'gin_configs/local/study/base.gin'
STUDY_VARIANTS = (
    'spt:gin_configs/local/study/spt.gin',
    'no_memory:gin_configs/local/study/no_memory.gin',
    'prompt_tuning:gin_configs/local/study/prompt_tuning.gin',
)
RESULT_FILE = 'result.json'
RESULTS_TABLE = 'results.txt'
RESULTS_PLOT = 'results.png'
XLA_CACHE = '.xla_cache'
DEFAULT_SEEDS = 2


@dataclasses.dataclass(frozen=True)
class Variant:
  """A variant: its gin files, and the variant whose runs it starts from."""

  name: str
  gin_files: Tuple[str, ...] = ()
  init_from: Optional[str] = None


def parse_variant(spec: str) -> Variant:
  """'name:a.gin,b.gin[@other]' -> Variant('name', ('a.gin', 'b.gin'), 'other')."""
  name, _, rest = spec.partition(':')
  if not name:
    raise ValueError(
        f'Expected a variant as NAME:GIN_FILE[,GIN_FILE][@VARIANT], got {spec!r}.'
    )
  files, _, init_from = rest.partition('@')
  return Variant(
      name, tuple(f for f in files.split(',') if f), init_from or None
  )


def check_variants(variants: Sequence[Variant]) -> None:
  """Fails when names repeat or a variant starts from one not trained before it."""
  seen = set()
  for variant in variants:
    if variant.name in seen:
      raise gin_utils.ConfigError(f'Variant {variant.name!r} is given twice.')
    if variant.init_from and variant.init_from not in seen:
      raise gin_utils.ConfigError(
          f'Variant {variant.name!r} starts from {variant.init_from!r}, which '
          'must be a variant listed before it.'
      )
    seen.add(variant.name)


def run_dir(model_dir: str, variant: str, seed: int) -> str:
  return os.path.join(model_dir, variant, f'seed_{seed}')


def configure(
    base_gin_files: Sequence[str],
    variant: Variant,
    bindings: Sequence[str],
    model_dir: str,
    seed: int,
) -> str:
  """Parses a fresh gin configuration of one run; returns its folder."""
  folder = run_dir(model_dir, variant.name, seed)
  own = [f'MODEL_DIR = "{folder}"', f'RANDOM_SEED = {seed}']
  if variant.init_from:
    own.append(
        f'INITIAL_CHECKPOINT_PATH = "{run_dir(model_dir, variant.init_from, seed)}"'
    )
  gin.clear_config()
  gin_utils.parse_gin(
      list(base_gin_files) + list(variant.gin_files), list(bindings) + own
  )
  return folder


@dataclasses.dataclass
class TaskRows:
  """A rank-classification task's rows, tokenized once for all runs.

  Attributes:
    targets: (example index, choice index, is_correct) per row.
    features: the model's features, arrays [R, ...].
  """

  targets: List[Tuple[int, int, bool]]
  features: Dict[str, np.ndarray]


def read_rows(
    task: seqio.Task,
    task_feature_lengths: Mapping[str, int],
    feature_converter: seqio.FeatureConverter,
    split: str = 'validation',
) -> TaskRows:
  """Reads a `__score` task's rows into memory."""
  rows = task.get_dataset(
      task_feature_lengths, split=split, shuffle=False
  ).cache()
  targets = [
      (int(r['idx'][0]), int(r['idx'][1]), bool(r['is_correct']))
      for r in rows.as_numpy_iterator()
  ]
  converted = feature_converter(rows, task_feature_lengths)
  return TaskRows(
      targets, next(converted.batch(len(targets)).as_numpy_iterator())
  )


def evaluate_rows(
    rows: Mapping[str, TaskRows], model_fns: eval_lib.ModelFns
) -> eval_lib.EvalResults:
  """Accuracy (%) per task and per dataset (mean over its templates).

  seqio's Evaluator costs more per task than scoring a tiny model does, so
  the study scores every task's rows in one pass; the accuracy is the tasks'
  own metric (`spt_jax.eval_protocol.rank_classification_accuracy`).
  """
  first = next(iter(rows.values()))
  features = {
      k: np.concatenate([r.features[k] for r in rows.values()])
      for k in first.features
  }
  enumerated = tf.data.Dataset.from_tensor_slices(features).enumerate()
  scores = [score for _, score in sorted(model_fns.score_fn(enumerated))]
  per_task, start = {}, 0
  for task, task_rows in rows.items():
    stop = start + len(task_rows.targets)
    per_task[task] = eval_protocol.rank_classification_accuracy(
        task_rows.targets, scores[start:stop]
    )
    start = stop
  return eval_lib.EvalResults(
      tasks=per_task, datasets=eval_protocol.aggregate_over_templates(per_task)
  )


def measure_retrieval(
    model: models.SptModel,
    params: Any,
    probes: Mapping[str, Mapping[str, Any]],
    trained: Sequence[str],
    folder: str,
) -> Dict[str, float]:
  """Retrieval consistency of a trained run; writes its report to folder/analysis.

  Args:
    model: the run's model, with a memory bank.
    params: its parameters.
    probes: 'family/template' -> batches of its examples, for the run's
      training and evaluated templates.
    trained: the names of the training templates.
    folder: the run's folder.
  """
  indices = analysis.collect_by_task(model, params, probes)
  num_memories = model.module.spt.num_memories
  analysis.write_report(indices, num_memories, os.path.join(folder, 'analysis'))
  return retrieval_stats.retrieval_consistency(
      retrieval_stats.usage_counts(indices, num_memories), trained
  )


class _Data:
  """What the runs of a study read, read once per task: rows and probes.

  Every variant shares the feature converter (the prompt length is common),
  so runs reuse them: reading costs more than scoring a tiny model.
  """

  PROBE_EXAMPLES = 8

  def __init__(self):
    self._rows: Dict[Any, TaskRows] = {}
    self._probes: Dict[Any, List[Dict[str, np.ndarray]]] = {}

  @staticmethod
  def _tasks(mixture: str) -> List[seqio.Task]:
    return seqio.get_subtasks(seqio.get_mixture_or_task(mixture))

  @staticmethod
  def _key(model, task, lengths):
    return (
        task.name,
        tuple(sorted(lengths.items())),
        model.module.spt.prompt_length,
    )

  def rows(self, model, mixture: str, lengths) -> Dict[str, TaskRows]:
    """Task name -> its rows, for every task of the mixture."""
    converter = model.FEATURE_CONVERTER_CLS(pack=False)
    rows = {}
    for task in self._tasks(mixture):
      key = self._key(model, task, lengths)
      if key not in self._rows:
        self._rows[key] = read_rows(task, lengths, converter)
      rows[task.name] = self._rows[key]
    return rows

  def probes(self, model, mixture: str, lengths) -> Dict[str, Any]:
    """'family/template' -> a batch of a few examples, per task of the mixture."""
    converter = model.FEATURE_CONVERTER_CLS(pack=False)
    probes = {}
    for task in self._tasks(mixture):
      key = self._key(model, task, lengths)
      if key in self._rows:  # Read already for scoring.
        tokens = self._rows[key].features['encoder_input_tokens']
        self._probes[key] = [
            {'encoder_input_tokens': tokens[: self.PROBE_EXAMPLES]}
        ]
      elif key not in self._probes:
        batches = analysis.task_batches(
            converter,
            [task.name],
            lengths,
            batch_size=self.PROBE_EXAMPLES,
            max_batches=1,
        )
        self._probes[key] = next(iter(batches.values()))
      probes['/'.join(eval_protocol.template_info(task.name))] = self._probes[
          key
      ]
    return probes


def train_and_measure(folder: str, data: _Data) -> results.RunResult:
  """Trains the configured run, then evaluates it and measures retrieval."""
  start = time.time()
  # The study evaluates through `data` (rows read once, no per-example
  # logs), so the runner's own evaluation is skipped.
  result = gin.get_configurable(train_lib.train)(eval_mixture_or_task_name=None)
  model = models.SptModel(gin.get_configurable(network.SptTransformer)())
  params = train_checkpoints.TrainCheckpoints(folder).restore_params()
  train_mixture = gin.query_parameter('%MIXTURE_OR_TASK_NAME')
  eval_mixture = gin.query_parameter('%EVAL_MIXTURE_OR_TASK_NAME')
  lengths = gin.query_parameter('%TASK_FEATURE_LENGTHS')
  evaluated = evaluate_rows(
      data.rows(model, eval_mixture, lengths),
      eval_lib.ModelFns(model, params, gin.query_parameter('%EVAL_BATCH_SIZE')),
  )
  retrieval = {}
  if model.module.spt.num_memories:
    trained = data.probes(model, train_mixture, lengths)
    probes = {**trained, **data.probes(model, eval_mixture, lengths)}
    retrieval = measure_retrieval(model, params, probes, list(trained), folder)
  return results.RunResult(
      variant='',
      seed=-1,
      step=result.step,
      train_loss=result.metrics.get('cross_ent_loss', float('nan')),
      datasets={d: v['mean'] for d, v in evaluated.datasets.items()},
      tasks={t: m['accuracy'] for t, m in evaluated.tasks.items()},
      retrieval=retrieval,
      seconds=time.time() - start,
  )


def recorded_seeds(variants: Sequence[Variant], model_dir: str) -> int:
  """How many seeds, from 0 on, every variant has a recorded run of."""
  seed = 0
  while all(
      os.path.exists(
          os.path.join(run_dir(model_dir, v.name, seed), RESULT_FILE)
      )
      for v in variants
  ):
    seed += 1
  return seed


def run_study(
    variants: Sequence[Variant],
    seeds: Iterable[int],
    model_dir: str,
    base_gin_files: Sequence[str],
    bindings: Sequence[str],
    on_seed_done=None,
) -> Dict[str, List[results.RunResult]]:
  """Trains (or reads back) every (variant, seed), seed by seed.

  Args:
    variants: in order; a variant's `init_from` comes before it.
    seeds: RANDOM_SEED of each repetition.
    model_dir: runs go to `model_dir/<variant>/seed_<seed>`.
    base_gin_files: the configuration every variant adds its files to.
    bindings: gin bindings for every run.
    on_seed_done: called with the results so far after each seed.

  Returns:
    variant -> its runs' results, in seed order.
  """
  check_variants(variants)
  seeds = list(seeds)
  runs = {v.name: [] for v in variants}
  data = _Data()
  pending = []
  for seed in seeds:
    for variant in variants:
      path = os.path.join(run_dir(model_dir, variant.name, seed), RESULT_FILE)
      pending.append((seed, variant, path, os.path.exists(path)))
  # One bar over the study, in training steps: a recorded run counts at once.
  steps = {}
  for seed, variant, path, done in pending:
    if not done:
      configure(base_gin_files, variant, bindings, model_dir, seed)
      steps[path] = gin.query_parameter('%TRAIN_STEPS')
  bar = tqdm.tqdm(
      total=sum(steps.values()),
      desc='study',
      unit='step',
      dynamic_ncols=True,
      disable=not steps,
  )
  with bar:
    for i, (seed, variant, path, done) in enumerate(pending):
      if done:
        result = results.RunResult.load(path)
      else:
        bar.set_postfix_str(f'{variant.name} seed {seed}')
        folder = configure(base_gin_files, variant, bindings, model_dir, seed)
        result = train_and_measure(folder, data)
        result = dataclasses.replace(result, variant=variant.name, seed=seed)
        if jax.process_index() == 0:
          result.save(path)
        bar.update(steps[path])
      runs[variant.name].append(result)
      seed_done = i + 1 == len(pending) or pending[i + 1][0] != seed
      if seed_done and on_seed_done:
        on_seed_done(runs)
  return runs


def write_results(
    runs: Mapping[str, Sequence[results.RunResult]], model_dir: str
) -> str:
  """Writes results.txt and results.png into model_dir; returns the tables:
  accuracies, then paired differences (when the variants allow one)."""
  table = results.results_table(runs)
  differences = results.differences_table(runs)
  if differences:
    table += (
        '\n\nPaired differences (accuracy points, variant - baseline, '
        'same seeds), mean [95% t interval over seeds]:\n' + differences
    )
  with open(os.path.join(model_dir, RESULTS_TABLE), 'w') as f:
    f.write(table + '\n')
  results.plot_results(runs, os.path.join(model_dir, RESULTS_PLOT))
  return table


def main(argv: Sequence[str]) -> None:
  del argv
  if not FLAGS['verbosity'].present:
    # Progress bars and the table; --verbosity=0 shows the runner's logs.
    logging.set_verbosity(logging.WARNING)
  variants = [parse_variant(v) for v in FLAGS.variant or STUDY_VARIANTS]
  base = FLAGS.gin_file or [BASE_GIN]
  is_chief = jax.process_index() == 0

  def record(runs):
    if is_chief:
      write_results({k: v for k, v in runs.items() if v}, FLAGS.model_dir)

  start = time.time()
  # Seeds of a variant compile the same programs: compiled once per study.
  jax.config.update(
      'jax_compilation_cache_dir', os.path.join(FLAGS.model_dir, XLA_CACHE)
  )
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  # Seeds recorded beyond --seeds (the study's, when the default runs again)
  # are shown too.
  seeds = max(FLAGS.seeds, recorded_seeds(variants, FLAGS.model_dir))
  runs = run_study(
      variants,
      range(seeds),
      FLAGS.model_dir,
      base,
      FLAGS.gin_bindings,
      on_seed_done=record,
  )
  if is_chief:
    table = write_results(runs, FLAGS.model_dir)
    print(
        '\nZero-shot held-out accuracy (%, rank classification), mean ± '
        'standard error over seeds:\n'
    )
    print(table)
    trained = sum(r.seconds for rs in runs.values() for r in rs)
    print(
        f'\nThis invocation: {time.time() - start:.0f} s; the runs recorded '
        f'took {trained:.0f} s to train and evaluate.'
    )
    print(
        f'Written to {os.path.join(FLAGS.model_dir, RESULTS_TABLE)} and '
        f'{RESULTS_PLOT}.'
    )


if __name__ == '__main__':
  flags.DEFINE_string(
      'model_dir',
      'runs/default',
      'Each run trains in MODEL_DIR/<variant>/seed_<seed>.',
  )
  flags.DEFINE_integer('seeds', DEFAULT_SEEDS, 'Seeds per variant (0, 1, ...).')
  flags.DEFINE_multi_string(
      'variant',
      [],
      'NAME:GIN_FILE[,GIN_FILE][@VARIANT] added to the base configuration; '
      "@VARIANT starts from that variant's run of the same seed (default: "
      f'{", ".join(STUDY_VARIANTS)}).',
  )
  FLAGS = flags.FLAGS
  gin_utils.run(main)
