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
import inspect
import json
import os
import signal
import threading
from typing import Callable, Dict, Optional, Sequence

from absl import logging
import gin
import jax
import optax

from spt_jax import gin_utils
from spt_jax.local import checks
from spt_jax.local import distributed
from spt_jax.local import eval as eval_lib
from spt_jax.local import run_lock
from spt_jax.local import run_settings
from spt_jax.local import train_checkpoints
from spt_jax.local import train_data
from spt_jax.local import train_loop
from spt_jax.local import trainer
from spt_jax.model import models
from spt_jax.model import partitioning

TrainingInterrupted = train_loop.TrainingInterrupted
TrainingDiverged = train_loop.TrainingDiverged


@dataclasses.dataclass
class TrainResult:
  """What a finished run reports."""

  step: int
  metrics: Dict[str, float]
  history: list[tuple[int, Dict[str, float]]]
  eval_results: Optional[eval_lib.EvalResults] = None


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

  previous = {
      sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)
  }
  try:
    yield
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


def _input_shapes(dataset, batch_size: int) -> Dict[str, tuple]:
  """{feature: [batch_size, length]} of the training batches."""
  return {
      k: (batch_size,) + tuple(spec.shape[1:])
      for k, spec in dataset.element_spec.items()
  }


def _checked_and_locked(train_fn):
  """`train_fn` once `checks.check_run` passes its arguments, holding MODEL_DIR's
  `run_lock.RunLock` for the whole call.

  Only process 0 takes the lock: the other hosts are the same run.
  """
  signature = inspect.signature(train_fn)

  @functools.wraps(train_fn)
  def checked_and_locked(**kwargs):
    arguments = signature.bind(**kwargs)
    arguments.apply_defaults()
    checks.check_run(**arguments.arguments)
    if jax.process_index() != 0:
      return train_fn(**kwargs)
    with run_lock.RunLock(kwargs['model_dir']):
      return train_fn(**kwargs)

  return checked_and_locked


@_checked_and_locked
def train(
    *,
    model: models.SptModel,
    model_dir: str,
    data: train_data.TrainDataConfig,
    train_steps: int,
    optimizer: Optional[optax.GradientTransformation] = None,
    trainable: str = 'all',
    num_partitions: int = 1,
    logical_axis_rules: partitioning.LogicalRules = partitioning.default_rules(),
    checkpoint_period: int = 1000,
    keep_checkpoints: Optional[int] = 3,
    log_period: int = 50,
    random_seed: int = 0,
    initial_checkpoint_path: Optional[str] = None,
    eval_mixture_or_task_name: Optional[str] = None,
    eval_batch_size: int = 64,
    progress_bar: bool = True,
) -> TrainResult:
  """Trains to `train_steps`, resuming from MODEL_DIR; evaluates at the end.

  Args (the gin macros of gin_configs/local/train.gin):
    model: network and loss (`models.SptModel`).
    model_dir: checkpoints, TensorBoard logs and eval results go here.
    data: the training data and batch size (`train_data.TrainDataConfig`).
    train_steps: total steps (a resumed run's count).
    optimizer: of the trained parameters (default: T5X's Adafactor).
    trainable: 'all' (full fine-tuning) or 'spt_only' (frozen backbone).
    num_partitions: devices per model replica (the `model` mesh axis).
    logical_axis_rules: logical -> mesh axis rules.
    checkpoint_period, log_period: steps between checkpoints (one is always
      written at the end) and between metric summaries.
    keep_checkpoints: how many checkpoints to keep (None: all).
    random_seed: seeds parameters, dropout and data order.
    initial_checkpoint_path: parameters for a MODEL_DIR without checkpoint (a
      `convert_checkpoint` output or a MODEL_DIR); others keep their init.
    eval_mixture_or_task_name, eval_batch_size: evaluated after training.
    progress_bar: show a tqdm progress bar.

  Raises:
    run_lock.ModelDirInUse: another live run trains into MODEL_DIR.
    gin_utils.ConfigError: a setting is unusable (`checks.check_run`), or
      MODEL_DIR is another model's run (nothing in it is changed).
    train_loop.TrainingDiverged: the loss is not finite.
  """
  mesh = partitioning.create_mesh(num_partitions)
  optimizer = optimizer or trainer.adafactor()
  sharded = trainer.ShardedTrainer(
      model, optimizer, mesh, logical_axis_rules, trainable
  )
  dataset = data.dataset(model.FEATURE_CONVERTER_CLS, random_seed)
  init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(random_seed))
  store = train_checkpoints.TrainCheckpoints(model_dir, keep_checkpoints)
  state = sharded.init_state(init_rng, _input_shapes(dataset, data.batch_size))
  progress = _start_or_resume(
      sharded, store, state, model_dir, initial_checkpoint_path
  )
  train_loop.run_steps(
      progress,
      sharded,
      store,
      dataset,
      dropout_rng,
      train_loop.Periods(train_steps, log_period, checkpoint_period),
      data.mixture_or_task_name,
      progress_bar,
  )
  eval_results = eval_mixture_or_task_name and _final_evaluation(
      progress,
      sharded,
      eval_batch_size,
      eval_mixture_or_task_name,
      data.task_feature_lengths,
      store,
      model_dir,
  )
  store.close()
  return TrainResult(
      progress.step, progress.metrics, progress.history, eval_results
  )


def _start_or_resume(
    sharded: trainer.ShardedTrainer,
    store: train_checkpoints.TrainCheckpoints,
    state: trainer.TrainState,
    model_dir: str,
    initial_checkpoint_path: Optional[str],
) -> train_loop.Progress:
  """The latest checkpoint of MODEL_DIR, or `state` (with the initial
  parameters) saved as step 0; MODEL_DIR's config and settings written.

  A changed model is refused before anything in MODEL_DIR is rewritten.
  """
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state,
  )
  settings = run_settings.run_settings(sharded.model, sharded.trainable)
  if store.all_steps():
    run_settings.check_resumable(model_dir, settings, abstract)
  restored = store.restore_latest(abstract)
  if jax.process_index() == 0:
    if gin.config_is_locked():
      gin_utils.write_config(model_dir)
    run_settings.write_run_settings(model_dir, settings, abstract)
  if restored is None:
    if initial_checkpoint_path:
      state = _with_initial_params(sharded, state, initial_checkpoint_path)
    store.save(0, state)
    return train_loop.Progress(step=0, state=state)
  step, state = restored
  logging.info('Resumed from step %d in %s.', step, store.directory)
  # The metrics summary resumes where the saved step left it: the last logged
  # metrics, and the steps of the log window not yet logged.
  saved = store.metadata(step)
  pending = list(saved.get('window', []))
  return train_loop.Progress(
      step=step,
      state=state,
      metrics=dict(saved.get('metrics', {})),
      pending=pending,
      carried=len(pending),
      restored_hint=(step, train_loop.suspect_hint(store, step))
      if step
      else None,
  )


def _final_evaluation(
    progress,
    sharded,
    eval_batch_size,
    mixture_or_task_name,
    task_feature_lengths,
    store,
    model_dir,
):
  """`eval_lib.evaluate` of the trained parameters into MODEL_DIR/eval."""

  def interrupted(signal_name):
    return (
        f'{signal_name} during the final evaluation: training finished at '
        f'step {progress.step}, saved in {store.directory}; evaluate it with '
        f'python -m spt_jax.local.eval '
        f'--gin_file={os.path.join(model_dir, "config.gin")}'
    )

  with _interrupts_raise(interrupted):
    return eval_lib.evaluate(
        model_fns=eval_lib.ModelFns(
            sharded.model,
            progress.state.params,
            eval_batch_size,
            sharded.mesh,
            sharded.rules,
        ),
        mixture_or_task_name=mixture_or_task_name,
        task_feature_lengths=task_feature_lengths,
        output_dir=(
            os.path.join(model_dir, 'eval')
            if jax.process_index() == 0
            else None
        ),
        step=progress.step,
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
        jax.device_get(state.params), pretrained
    )
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
      short_errors=(
          train_checkpoints.CheckpointError,
          _train_lib.TrainingDiverged,
      ),
      usage_errors=checks.input_errors(),
  )
