"""The local runner's step loop: steps, metric windows, checkpoints, stops.

`run_steps` trains a `Progress` to the last step: every `log_period` steps it
checks the losses are finite and writes the window's mean metrics (with
throughput) to TensorBoard; every `checkpoint_period` steps, at the last
step and on SIGINT / SIGTERM it saves the state with the window not yet
logged, so that a resumed run logs the same summaries.
"""

import dataclasses
import math
import os
import signal
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

from absl import logging
from clu import metric_writers
import jax
import numpy as np
import tqdm

from spt_jax import gin_utils
from spt_jax.local import train_checkpoints
from spt_jax.local import trainer


class TrainingInterrupted(KeyboardInterrupt):
  """SIGINT or SIGTERM stopped training after the current step was saved."""


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite; nothing after the last good step is saved."""


@dataclasses.dataclass
class Progress:
  """Where a run stands; `run_steps` advances it.

  Attributes:
    step: the last step taken (0 before training).
    state: the train state after it.
    metrics: the last logged metrics.
    pending: the metrics of the steps since the last log, oldest first.
    carried: how many of `pending` an earlier process ran (a resumed window).
    restored_hint: (step, what to do) of the trained checkpoint this run
      resumed from, for a loss that diverges right after it.
    history: (step, metrics) of every log of this process.
  """

  step: int
  state: trainer.TrainState
  metrics: Dict[str, float] = dataclasses.field(default_factory=dict)
  pending: List[Any] = dataclasses.field(default_factory=list)
  carried: int = 0
  restored_hint: Optional[Tuple[int, str]] = None
  history: List[Tuple[int, Dict[str, float]]] = dataclasses.field(
      default_factory=list
  )


@dataclasses.dataclass(frozen=True)
class Periods:
  """TRAIN_STEPS, LOG_PERIOD and CHECKPOINT_PERIOD."""

  train_steps: int
  log_period: int
  checkpoint_period: int


# A loss that is not finite this soon after a restore suspects the restored
# checkpoint: the first step's loss reads its parameters, the second's the
# first update made with its optimizer state.
_SUSPECT_STEPS = 2


def _check_finite(
    pending,
    first_step: int,
    last_step: int,
    saved_step: int,
    restored: Optional[tuple[int, str]] = None,
):
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


def suspect_hint(store: train_checkpoints.TrainCheckpoints, step: int) -> str:
  """What to do when the loss diverges right after restoring `step`."""
  earlier = [s for s in store.all_steps() if s < step]
  if not earlier:
    return (
        'It is the only checkpoint: train into a new MODEL_DIR, or lower '
        'LEARNING_RATE.'
    )
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
    logging.warning(
        '%s: saving the current step and stopping.', self.signal_name
    )

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _log_window(
    progress: Progress, saved_step: int, elapsed: float, tokens_per_batch: int
) -> Dict[str, float]:
  """The mean metrics of `progress.pending`, with this process's throughput.

  Raises:
    TrainingDiverged: a loss in the window is not finite.
  """
  pending = progress.pending
  _check_finite(
      pending,
      progress.step - len(pending) + 1,
      progress.step,
      saved_step,
      progress.restored_hint,
  )
  values = jax.device_get(pending)
  metrics = {
      k: float(np.mean([m[k] for m in values if k in m])) for k in values[-1]
  }
  run_here = len(pending) - progress.carried
  metrics['steps_per_second'] = run_here / elapsed
  metrics['tokens_per_second'] = run_here * tokens_per_batch / elapsed
  return metrics


def _next_batch(batches, step: int, mixture_or_task_name: str):
  try:
    return next(batches)
  except StopIteration:  # The data repeats: it gave no example at all.
    raise gin_utils.ConfigError(
        f'The training data of {mixture_or_task_name} holds no example '
        f'(at step {step}): its files are empty, or its templates drop '
        'every record. `python -m tasks.show NAME` shows what a task '
        'yields.'
    ) from None


def run_steps(
    progress: Progress,
    sharded: trainer.ShardedTrainer,
    store: train_checkpoints.TrainCheckpoints,
    dataset: Any,
    dropout_rng: jax.Array,
    periods: Periods,
    mixture_or_task_name: str,
    progress_bar: bool = True,
) -> None:
  """Trains `progress` to `periods.train_steps` (see the module docstring).

  Args:
    progress: from step 0 or a restored checkpoint; advanced in place.
    sharded: steps the state.
    store: MODEL_DIR's checkpoints.
    dataset: the training batches from step 1 (a tf.data.Dataset).
    dropout_rng: folded with the step in each step.
    periods: the last step, and the logging and checkpoint periods.
    mixture_or_task_name: the training data, for errors.
    progress_bar: show a tqdm bar on process 0.

  Raises:
    TrainingInterrupted: a signal stopped it before the last step (saved).
    TrainingDiverged: a loss is not finite (nothing after it saved).
  """
  is_chief = jax.process_index() == 0
  writer = metric_writers.create_default_writer(
      os.path.join(store.model_dir, 'train'), just_logging=not is_chief
  )
  batches = dataset.skip(progress.step).as_numpy_iterator()
  bar = tqdm.tqdm(
      total=periods.train_steps,
      initial=progress.step,
      desc='train',
      unit='step',
      disable=not (progress_bar and is_chief),
      dynamic_ncols=True,
  )
  period_start, saved_step, stop = time.time(), progress.step, _StopRequest()
  with stop:
    while progress.step < periods.train_steps:
      progress.step += 1
      batch = sharded.shard_batch(
          _next_batch(batches, progress.step, mixture_or_task_name)
      )
      progress.state, step_metrics = sharded.train_step(
          progress.state, batch, dropout_rng
      )
      progress.pending.append(step_metrics)
      bar.update(1)
      # A signal stops the run after the step it arrived in, saved.
      stopping = stop.signal_name is not None
      last = progress.step == periods.train_steps or stopping
      if progress.step % periods.log_period == 0 or last:
        _summarize_window(
            progress, batch, saved_step, period_start, writer, bar
        )
        period_start = time.time()
      if progress.step % periods.checkpoint_period == 0 or last:
        _save(progress, store, saved_step)
        saved_step = progress.step
      if stopping:
        break
  bar.close()
  writer.flush()
  if stop.signal_name is not None and progress.step < periods.train_steps:
    store.close()
    raise TrainingInterrupted(
        f'{stop.signal_name} at step {progress.step}: saved checkpoint step '
        f'{progress.step} in {store.directory}; run the same command again '
        'to resume.'
    )


def _summarize_window(
    progress: Progress,
    batch: Mapping[str, Any],
    saved_step: int,
    period_start: float,
    writer: Any,
    bar: tqdm.tqdm,
) -> None:
  """Writes the metrics of the steps since the last summary and starts anew.

  Args:
    progress: its pending step metrics become `metrics` and join `history`.
    batch: the window's last batch, whose token count sets tokens per second.
    saved_step: the last saved step (see `_log_window`).
    period_start: when the window began (time.time()).
    writer: the TensorBoard metric writer.
    bar: shows the loss and throughput.
  """
  tokens_per_batch = (
      batch['encoder_input_tokens'].size + batch['decoder_target_tokens'].size
  )
  progress.metrics = _log_window(
      progress, saved_step, time.time() - period_start, tokens_per_batch
  )
  writer.write_scalars(progress.step, progress.metrics)
  progress.history.append((progress.step, progress.metrics))
  bar.set_postfix(
      loss=f'{progress.metrics["loss"]:.3f}',
      tok_s=f'{progress.metrics["tokens_per_second"]:.0f}',
  )
  progress.pending, progress.carried = [], 0


def _save(
    progress: Progress,
    store: train_checkpoints.TrainCheckpoints,
    saved_step: int,
) -> None:
  """Saves the step with the metrics window a resumed run continues."""
  if progress.pending:
    _check_finite(
        progress.pending,
        progress.step - len(progress.pending) + 1,
        progress.step,
        saved_step,
        progress.restored_hint,
    )
  store.save(
      progress.step,
      progress.state,
      metadata={
          'metrics': progress.metrics,
          'window': _host_metrics(progress.pending),
      },
  )
