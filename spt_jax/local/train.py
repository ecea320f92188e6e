r"""The local runner: train SPT from a gin configuration, without T5X.

The same model gin files as the T5X runs, and T5X's flag conventions:

    python -m spt_jax.local.train \
      --gin_file=gin_configs/local/synthetic.gin \
      --gin.MODEL_DIR=\"/tmp/spt\" --gin.TRAIN_STEPS=2000

Data comes from seqio (packing off), parameters and optimizer state are laid
out on a ('data', 'model') mesh by the logical axis rules, checkpoints are
orbax steps under MODEL_DIR/checkpoints (a restarted run resumes from the
latest one, and its input pipeline skips the batches already seen), metrics go
to TensorBoard through clu, and a progress bar shows loss and throughput.
Several hosts run the same command with `--multiprocess` (see
`jax.distributed.initialize`).
"""

import contextlib
import dataclasses
import functools
import json
import math
import os
import signal
import threading
import time
from typing import Callable, Dict, Mapping, Optional, Sequence
from clu import metric_writers
import tqdm

from absl import flags
from absl import logging
import gin
import jax
import numpy as np
import optax
import seqio

from spt_jax import gin_utils
from spt_jax.local import checks
from spt_jax.local import distributed
from spt_jax.local import eval as eval_lib
from spt_jax.local import run_lock
from spt_jax.local import run_settings
from spt_jax.local import train_checkpoints
from spt_jax.local import train_data
from spt_jax.local import trainer
from spt_jax.model import models
from spt_jax.model import partitioning


class TrainingInterrupted(KeyboardInterrupt):
  """SIGINT or SIGTERM stopped training after the current step was saved."""


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite; nothing after the last good step is saved."""


@dataclasses.dataclass
class TrainResult:
  """What a finished run reports."""

  step: int
  metrics: Dict[str, float]
  history: list[tuple[int, Dict[str, float]]]
  eval_results: Optional[eval_lib.EvalResults] = None


# A loss that is not finite this soon after a restore suspects the restored
# checkpoint: the first step's loss reads its parameters, the second's the
# first update made with its optimizer state.
_SUSPECT_STEPS = 2


def _check_finite(pending, first_step: int, last_step: int, saved_step: int,
                  restored: Optional[tuple[int, str]] = None):
  """Raises TrainingDiverged when a step's loss is not finite.

  Args:
    pending: the metrics of steps `first_step`..`last_step`.
    first_step: the step of `pending[0]`.
    last_step: the step of `pending[-1]`.
    saved_step: the last checkpoint written.
    restored: (step, what to do) of the checkpoint this run resumed from, if
      it resumed from a trained one.
  """
  for offset, metrics in enumerate(jax.device_get(pending)):
    loss = float(metrics['loss'])
    if not math.isfinite(loss):
      step = first_step + offset
      not_saved = f'steps {first_step}..{last_step} not saved'
      if restored is not None and step <= restored[0] + _SUSPECT_STEPS:
        raise TrainingDiverged(
            f'The loss is {loss} at step {step}, {step - restored[0]} '
            f'step(s) after restoring checkpoint step {restored[0]} '
            f'({not_saved}): that checkpoint is suspect. {restored[1]}'
        )
      raise TrainingDiverged(
          f'The loss is {loss} at step {step} ({not_saved}; the last '
          f'checkpoint is step {saved_step}). Lower LEARNING_RATE, or check '
          'that VOCAB_SIZE covers the vocabulary.'
      )


def _suspect_hint(store: train_checkpoints.TrainCheckpoints, step: int) -> str:
  """What to do when the loss diverges right after restoring `step`."""
  earlier = [s for s in store.all_steps() if s < step]
  if not earlier:
    return ('It is the only checkpoint: train into a new MODEL_DIR, or lower '
            'LEARNING_RATE.')
  return (
      f'Move {store.step_dir(step)} out of {store.directory} to resume from '
      f'step {earlier[-1]}, the checkpoint before it; if that diverges too, '
      'lower LEARNING_RATE.'
  )


def _host_metrics(pending) -> list[Dict[str, float]]:
  return [{k: float(v) for k, v in m.items()} for m in jax.device_get(pending)]


class _StopRequest:
  """Turns SIGINT / SIGTERM into a flag the training loop checks every step."""

  def __init__(self):
    self.signal_name = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is not None:  # A second Ctrl-C: stop at once.
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name
    logging.warning('%s: saving the current step and stopping.', self.signal_name)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


@contextlib.contextmanager
def _interrupts_raise(message: Callable[[str], str]):
  """SIGINT / SIGTERM raise TrainingInterrupted(message(signal name)) at once.

  For the final evaluation, which has nothing to save: without it SIGTERM
  ends the process (exit 143) with no word on what was kept.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def handle(signum, frame):
    del frame
    raise TrainingInterrupted(message(signal.Signals(signum).name))

  previous = {sig: signal.signal(sig, handle)
              for sig in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


def _model_input_shapes(dataset) -> Dict[str, tuple]:
  return {
      k: (None,) + tuple(spec.shape[1:])
      for k, spec in dataset.element_spec.items()
  }


def _holding_run_lock(train_fn):
  """`train_fn` holding MODEL_DIR's `run_lock.RunLock` for the whole call.

  Only process 0 takes it: the other hosts are the same run.
  """

  @functools.wraps(train_fn)
  def locked(*args, model_dir: str, **kwargs):
    if jax.process_index() != 0:
      return train_fn(*args, model_dir=model_dir, **kwargs)
    checks.check_model_dir(model_dir)
    with run_lock.RunLock(model_dir):
      return train_fn(*args, model_dir=model_dir, **kwargs)

  return locked


@_holding_run_lock
def train(
    *,
    model: models.SptModel,
    model_dir: str,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    train_steps: int,
    batch_size: int,
    optimizer: Optional[optax.GradientTransformation] = None,
    trainable: str = 'all',
    mixture_or_task_module: Optional[str] = None,
    num_partitions: int = 1,
    logical_axis_rules: partitioning.LogicalRules = partitioning.default_rules(),
    checkpoint_period: int = 1000,
    keep_checkpoints: Optional[int] = 3,
    log_period: int = 50,
    random_seed: int = 0,
    initial_checkpoint_path: Optional[str] = None,
    eval_mixture_or_task_name: Optional[str] = None,
    eval_batch_size: int = 64,
    use_cached_tasks: bool = False,
    seqio_cache_dirs: Sequence[str] = (),
    progress_bar: bool = True,
) -> TrainResult:
  """Trains to `train_steps`, resuming from MODEL_DIR; evaluates at the end.

  Args:
    model: network and loss (`models.SptModel`).
    model_dir: checkpoints, TensorBoard logs and eval results go here.
    mixture_or_task_name: the training mixture or task.
    task_feature_lengths: e.g. {'inputs': 512, 'targets': 64, 'prompt': 32}.
    train_steps: total steps, counting those of a resumed run.
    batch_size: global batch size.
    optimizer: optax optimizer of the trained parameters (default: Adafactor).
    trainable: 'all' (full fine-tuning) or 'spt_only' (frozen backbone: only
      the memory bank and soft prompt train).
    mixture_or_task_module: module to import to register the tasks.
    num_partitions: devices per model replica (the `model` mesh axis).
    logical_axis_rules: logical -> mesh axis rules.
    checkpoint_period: steps between checkpoints (one is always written at
      the end).
    keep_checkpoints: how many checkpoints to keep (None: all).
    log_period: steps between metric summaries.
    random_seed: seeds parameters, dropout and data order.
    initial_checkpoint_path: parameters to start from when MODEL_DIR has no
      checkpoint: a `spt_jax.checkpoints.convert_checkpoint` output or another run's
      MODEL_DIR. Parameters it lacks (e.g. the memory bank) keep their
      initial values.
    eval_mixture_or_task_name: evaluated after training if given.
    eval_batch_size: batch size of that evaluation.
    use_cached_tasks: train from the SeqIO cache of the training tasks
      (written by `./run_t5x.sh cache`), as T5X's `USE_CACHED_TASKS`.
    seqio_cache_dirs: folders searched for those caches (T5X's
      `--seqio_additional_cache_dirs`).
    progress_bar: show a tqdm progress bar.

  Returns:
    The final step, the last logged metrics and the evaluation results.

  Raises:
    run_lock.ModelDirInUse: another live run trains into MODEL_DIR.
    gin_utils.ConfigError: a setting is unusable, or MODEL_DIR holds a run of
      another model (nothing in it is changed).
    TrainingDiverged: the loss is not finite.
  """
  is_chief = jax.process_index() == 0
  seqio.add_global_cache_dirs(list(seqio_cache_dirs))
  mesh = partitioning.create_mesh(num_partitions)
  checks.check_settings(
      train_steps=train_steps, batch_size=batch_size,
      checkpoint_period=checkpoint_period, log_period=log_period,
      eval_batch_size=eval_batch_size,
      data_parallelism=mesh.shape['data'],
  )
  if is_chief:
    checks.check_model_dir(model_dir)
  checks.check_feature_lengths(task_feature_lengths)
  checks.check_initial_checkpoint(initial_checkpoint_path)
  checks.check_mixture_or_task(mixture_or_task_name, mixture_or_task_module)
  checks.check_data(mixture_or_task_name, 'train')
  checks.check_vocabulary_size(model, mixture_or_task_name)
  if eval_mixture_or_task_name:
    checks.check_mixture_or_task(eval_mixture_or_task_name)
    checks.check_data(eval_mixture_or_task_name, 'validation')
    checks.check_metrics(eval_mixture_or_task_name)
  sharded = trainer.ShardedTrainer(
      model, optimizer or trainer.adafactor(), mesh, logical_axis_rules, trainable
  )
  dataset = train_data.get_train_dataset(
      mixture_or_task_name, task_feature_lengths, batch_size,
      model.FEATURE_CONVERTER_CLS, random_seed, use_cached=use_cached_tasks,
  )
  input_shapes = {
      k: (batch_size,) + shape[1:]
      for k, shape in _model_input_shapes(dataset).items()
  }

  rng = jax.random.PRNGKey(random_seed)
  init_rng, dropout_rng = jax.random.split(rng)
  state = sharded.init_state(init_rng, input_shapes)
  store = train_checkpoints.TrainCheckpoints(model_dir, max_to_keep=keep_checkpoints)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state,
  )
  # A changed model is refused before anything in MODEL_DIR is rewritten.
  settings = run_settings.run_settings(model, trainable)
  if store.all_steps():
    run_settings.check_resumable(model_dir, settings, abstract)
  restored = store.restore_latest(abstract)
  if is_chief:
    if gin.config_is_locked():
      gin_utils.write_config(model_dir)
    run_settings.write_run_settings(model_dir, settings, abstract)
  # The metrics summary resumes where the saved step left it: the last logged
  # metrics, and the steps of the log window not yet logged.
  metrics_host: Dict[str, float] = {}
  pending = []
  restored_hint = None
  if restored is not None:
    start_step, state = restored
    logging.info('Resumed from step %d in %s.', start_step, store.directory)
    saved = store.metadata(start_step)
    metrics_host = dict(saved.get('metrics', {}))
    pending = list(saved.get('window', []))
    if start_step > 0:
      restored_hint = (start_step, _suspect_hint(store, start_step))
  else:
    start_step = 0
    if initial_checkpoint_path:
      state = _with_initial_params(sharded, state, initial_checkpoint_path)
    store.save(0, state)
  carried = len(pending)  # Steps of `pending` run before this process.

  writer = metric_writers.create_default_writer(
      os.path.join(model_dir, 'train'), just_logging=not is_chief
  )
  batches = dataset.skip(start_step).as_numpy_iterator()
  tokens_per_batch = batch_size * (
      input_shapes['encoder_input_tokens'][1]
      + input_shapes['decoder_target_tokens'][1]
  )
  history = []
  bar = tqdm.tqdm(
      total=train_steps, initial=start_step, desc='train', unit='step',
      disable=not (progress_bar and is_chief), dynamic_ncols=True,
  )
  period_start = time.time()
  step = saved_step = start_step
  stop = _StopRequest()
  with stop:
    for step in range(start_step + 1, train_steps + 1):
      try:
        batch = sharded.shard_batch(next(batches))
      except StopIteration:  # The data repeats: it gave no example at all.
        raise gin_utils.ConfigError(
            f'The training data of {mixture_or_task_name} holds no example '
            f'(at step {step}): its files are empty, or its templates drop '
            'every record. `python -m tasks.show NAME` shows what a task '
            'yields.'
        ) from None
      state, step_metrics = sharded.train_step(state, batch, dropout_rng)
      pending.append(step_metrics)
      bar.update(1)
      stopping = stop.signal_name is not None
      if step % log_period == 0 or step == train_steps or stopping:
        _check_finite(pending, step - len(pending) + 1, step, saved_step,
                      restored_hint)
        values = jax.device_get(pending)
        metrics_host = {
            k: float(np.mean([m[k] for m in values if k in m]))
            for k in values[-1]
        }
        elapsed = time.time() - period_start
        run_here = len(pending) - carried
        metrics_host['steps_per_second'] = run_here / elapsed
        metrics_host['tokens_per_second'] = run_here * tokens_per_batch / elapsed
        writer.write_scalars(step, metrics_host)
        history.append((step, metrics_host))
        bar.set_postfix(
            loss=f'{metrics_host["loss"]:.3f}',
            tok_s=f'{metrics_host["tokens_per_second"]:.0f}',
        )
        pending, period_start, carried = [], time.time(), 0
      if step % checkpoint_period == 0 or step == train_steps or stopping:
        if pending:
          _check_finite(pending, step - len(pending) + 1, step, saved_step,
                        restored_hint)
        store.save(step, state, metadata={
            'metrics': metrics_host, 'window': _host_metrics(pending)})
        saved_step = step
      if stopping:
        break
  bar.close()
  if stop.signal_name is not None and step < train_steps:
    writer.flush()
    store.close()
    raise TrainingInterrupted(
        f'{stop.signal_name} at step {step}: saved checkpoint step {step} in '
        f'{store.directory}; run the same command again to resume.'
    )
  writer.flush()

  eval_results = None
  if eval_mixture_or_task_name:
    def interrupted(signal_name):
      return (
          f'{signal_name} during the final evaluation: training finished at '
          f'step {step}, saved in {store.directory}; evaluate it with python '
          f'-m spt_jax.local.eval --gin_file={os.path.join(model_dir, "config.gin")}'
      )

    with _interrupts_raise(interrupted):
      eval_results = eval_lib.evaluate(
          model_fns=eval_lib.ModelFns(
              model, state.params, eval_batch_size, mesh, logical_axis_rules),
          mixture_or_task_name=eval_mixture_or_task_name,
          task_feature_lengths=task_feature_lengths,
          output_dir=os.path.join(model_dir, 'eval') if is_chief else None,
          step=step,
      )
  store.close()
  return TrainResult(
      step=step, metrics=metrics_host, history=history, eval_results=eval_results
  )


def _with_initial_params(sharded, state, path):
  """The state with parameters from `path` put in place (partial restore).

  Raises:
    gin_utils.ConfigError: `path` holds no checkpoint, or parameters that do
      not fit the model (the message names the parameter and both shapes).
  """
  try:
    pretrained = train_checkpoints.load_params(path)
    params = train_checkpoints.merge_params(
        jax.device_get(state.params), pretrained)
  except (FileNotFoundError, ValueError) as e:
    raise gin_utils.ConfigError(
        f'INITIAL_CHECKPOINT_PATH {path!r}: {gin_utils.error_message(e)} '
        'Start from a checkpoint of this model (its T5 size, VOCAB_SIZE and '
        'SptConfig), or set INITIAL_CHECKPOINT_PATH = None.'
    ) from None
  return sharded.state_from_params(params)


def main(argv: Sequence[str]) -> None:
  del argv
  distributed.initialize_from_flags()
  # Gin binds the importable module's function, not this `__main__` copy.
  from spt_jax.local import train as train_lib  # pylint: disable=g-import-not-at-top
  gin_utils.parse_gin_flags(entry=train_lib.train)
  result = gin.get_configurable(train_lib.train)()
  if jax.process_index() == 0:
    summary = {'step': result.step, 'metrics': result.metrics}
    if result.eval_results is not None:
      summary['eval'] = result.eval_results.datasets
    print(json.dumps(summary, indent=2, sort_keys=True))


if __name__ == '__main__':
  # Defined here, as in T5X, so that importing this module defines no flags.
  distributed.define_flags()
  # `main` runs the importable module's `train`, which raises that module's
  # TrainingDiverged, not this `__main__` copy's.
  from spt_jax.local import train as _train_lib  # pylint: disable=g-import-not-at-top
  gin_utils.run(
      main,
      short_errors=(train_checkpoints.CheckpointError,
                    _train_lib.TrainingDiverged),
      usage_errors=checks.input_errors(),
  )
