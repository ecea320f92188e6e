r"""Evaluation with `seqio.Evaluator`: rank classification and generation.

Score tasks (one row per answer choice) are scored by the summed target
log-likelihood; generation tasks decode greedily with the cache. Metrics come
from each task's seqio metric functions, and per-dataset mean and median over
templates (as T0 reports them) from `spt_jax.eval_protocol.aggregate_over_templates`.

    python -m spt_jax.local.eval --gin_file=gin_configs/local/synthetic.gin \
      --gin_file=gin_configs/local/eval.gin --gin.MODEL_DIR=\"runs/default/spt\"

(the run's own gin files, then eval.gin, so that the model matches the
checkpoint), or from the configuration the run wrote, alone:

    python -m spt_jax.local.eval --gin_file=runs/default/spt/config.gin
"""

import dataclasses
import json
import os
from typing import Any, Dict, Mapping, Optional, Sequence

from absl import logging
import gin
import jax
import numpy as np
import seqio

from spt_jax import eval_protocol
from spt_jax import gin_utils
from spt_jax.local import checks
from spt_jax.local import distributed
from spt_jax.local import train_checkpoints
from spt_jax.local import trainer
from spt_jax.model import models
from spt_jax.model import partitioning

# The model features scoring and decoding read from a batch.
_MODEL_FEATURES = (
    'encoder_input_tokens',
    'decoder_input_tokens',
    'decoder_target_tokens',
    'decoder_loss_weights',
)


@dataclasses.dataclass
class EvalResults:
  """Metrics per task, and per dataset over its templates."""

  tasks: Dict[str, Dict[str, float]]
  datasets: Dict[str, Dict[str, Any]]

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


def _padded_batches(dataset, batch_size: int):
  """(indices, batch, real rows) from an enumerated dataset, padded to batch_size."""
  for indices, batch in dataset.batch(batch_size).as_numpy_iterator():
    real = len(indices)
    features = {k: v for k, v in batch.items() if k in _MODEL_FEATURES}
    if real < batch_size:
      features = {
          k: np.pad(v, [(0, batch_size - real)] + [(0, 0)] * (v.ndim - 1))
          for k, v in features.items()
      }
    yield indices, features, real


class ModelFns:
  """Jitted scoring and decoding of one model, laid out as in training.

  The parameters keep the training partitioning (`model` axis for model
  parallelism, the bank split along `memory`), so a model that needs several
  devices per replica is evaluated as it was trained. Every host runs the
  evaluator over whole datasets, so each feeds the same batches; a batch is
  split over the `data` axis, and the small per-row results come back
  replicated to every host.
  """

  def __init__(
      self,
      model: models.SptModel,
      params: Any,
      batch_size: int,
      mesh: Optional[jax.sharding.Mesh] = None,
      rules: partitioning.LogicalRules = partitioning.default_rules(),
  ):
    """Places the parameters on the mesh.

    Args:
      model: the model to evaluate.
      params: its parameters: host arrays, or arrays already laid out on
        `mesh` (the training state's), which stay where they are.
      batch_size: rows per batch, a multiple of the mesh's `data` axis.
      mesh: the ('data', 'model') mesh (default: every device, one per replica).
      rules: logical axis rules, as in training.
    """
    self.mesh = mesh if mesh is not None else partitioning.create_mesh(1)
    data_parallelism = self.mesh.shape['data']
    if batch_size % data_parallelism:
      raise ValueError(
          f'The eval batch size {batch_size} must be a multiple of the '
          f'{data_parallelism} model replicas (the data axis).'
      )
    self.model = model
    self.batch_size = batch_size
    self.rules = rules
    self.params = jax.device_put(
        params,
        partitioning.params_shardings(
            trainer.params_axes(model), self.mesh, rules
        ),
    )
    self._batch_sharding = partitioning.data_sharding(self.mesh)
    replicated = jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec()
    )
    self._score = jax.jit(model.score_batch, out_shardings=replicated)
    self._predict = jax.jit(model.predict_batch, out_shardings=replicated)

  def _global_batch(
      self, batch: Mapping[str, np.ndarray]
  ) -> Dict[str, jax.Array]:
    """The same host batch on every host, as arrays split over `data`."""
    return {
        k: jax.make_array_from_callback(
            v.shape, self._batch_sharding, lambda index, v=v: v[index]
        )
        for k, v in batch.items()
    }

  def _run(self, fn, batch):
    with partitioning.mesh_and_rules(self.mesh, self.rules):
      result = fn(self.params, self._global_batch(batch))
    return np.asarray(result.addressable_data(0))

  def _map_batches(self, fn, dataset):
    """[(index, fn's row)] over an enumerated dataset, padding rows dropped."""
    results = []
    for indices, batch, real in _padded_batches(dataset, self.batch_size):
      rows = self._run(fn, batch)
      results.extend(zip(indices[:real].tolist(), rows[:real].tolist()))
    return results

  def score_fn(self, dataset, model_feature_shapes=None):
    """seqio score_fn: [(index, log-likelihood)] for an enumerated dataset."""
    del model_feature_shapes
    return self._map_batches(self._score, dataset)

  def predict_fn(self, dataset, model_feature_shapes=None):
    """seqio predict_fn: [(index, token ids)] by greedy decoding."""
    del model_feature_shapes
    return self._map_batches(self._predict, dataset)


def _aggregate(task_metrics):
  return eval_protocol.aggregate_over_templates(task_metrics)


def evaluate(
    *,
    model_fns: ModelFns,
    mixture_or_task_name: str,
    task_feature_lengths: Optional[Mapping[str, int]] = None,
    split: str = 'validation',
    output_dir: Optional[str] = None,
    step: Optional[int] = None,
) -> EvalResults:
  """Evaluates every task of a mixture; writes `eval_results.json` if asked.

  Args:
    model_fns: the model and parameters to evaluate.
    mixture_or_task_name: a registered seqio mixture or task.
    task_feature_lengths: feature lengths (None: the longest example).
    split: dataset split.
    output_dir: where seqio's JSON logger and the results file go.
    step: training step, recorded with the metrics.

  Returns:
    Metrics per task and per dataset (mean and median over templates).
  """
  logger_cls = [seqio.JSONLogger] if output_dir else []
  if output_dir:
    os.makedirs(output_dir, exist_ok=True)
  evaluator = seqio.Evaluator(
      mixture_or_task_name=mixture_or_task_name,
      feature_converter=model_fns.model.FEATURE_CONVERTER_CLS(pack=False),
      eval_split=split,
      sequence_length=task_feature_lengths,
      logger_cls=logger_cls,
      log_dir=output_dir,
      use_memory_cache=True,
  )
  all_metrics, _ = evaluator.evaluate(
      compute_metrics=True,
      step=step,
      predict_fn=model_fns.predict_fn,
      score_fn=model_fns.score_fn,
  )
  task_metrics = {
      task: {
          name: float(np.asarray(getattr(v, 'value', v)))
          for name, v in metrics.items()
      }
      for task, metrics in all_metrics.result().items()
  }
  if not task_metrics:
    raise gin_utils.ConfigError(
        f'Evaluating {mixture_or_task_name} produced no metric (no task of it '
        'has metric functions, or its split is empty).'
    )
  results = EvalResults(tasks=task_metrics, datasets=_aggregate(task_metrics))
  if output_dir:
    name = 'eval_results.json' if step is None else f'eval_results_{step}.json'
    path = os.path.join(output_dir, name)
    # Written whole or not at all: a killed evaluation leaves no partial file.
    with open(path + '.tmp', 'w') as f:
      f.write(results.to_json())
    os.replace(path + '.tmp', path)
  return results


def run_eval(
    *,
    model: models.SptModel,
    checkpoint_dir: str,
    mixture_or_task_name: str,
    mixture_or_task_module: Optional[str] = None,
    task_feature_lengths: Optional[Mapping[str, int]] = None,
    batch_size: int = 32,
    split: str = 'validation',
    output_dir: Optional[str] = None,
    step: Optional[int] = None,
    num_partitions: int = 1,
    logical_axis_rules: partitioning.LogicalRules = partitioning.default_rules(),
) -> EvalResults:
  """Restores a checkpoint of the local runner and evaluates it.

  The data, metrics and checkpoint are checked before any model work. The
  parameters are read straight into the training layout (`num_partitions`
  devices per replica, `logical_axis_rules`), whatever the device count the
  checkpoint was saved from; no device holds a full copy unless that layout
  replicates it.
  """
  if not mixture_or_task_name:
    raise gin_utils.ConfigError(
        'Nothing to evaluate: set --gin.EVAL_MIXTURE_OR_TASK_NAME=\\"NAME\\".'
    )
  checks.check_feature_lengths(task_feature_lengths)
  checks.check_mixture_or_task(mixture_or_task_name, mixture_or_task_module)
  checks.check_data(mixture_or_task_name, split)
  checks.check_metrics(mixture_or_task_name)
  if jax.process_index() == 0:
    # Found now rather than when the results are written, after scoring.
    checks.check_output_dir(
        output_dir or os.path.join(checkpoint_dir, 'eval'), 'EVAL_OUTPUT_DIR'
    )
  store = train_checkpoints.TrainCheckpoints(checkpoint_dir)
  step = store.latest_step() if step is None else step
  mesh = partitioning.create_mesh(num_partitions)
  if step is not None:
    checks.check_checkpoint_fits(
        model,
        store.step_dir(step),
        os.path.join(checkpoint_dir, gin_utils.CONFIG_FILE),
    )
  params = store.restore_params(
      step,
      partitioning.params_shardings(
          trainer.params_axes(model), mesh, logical_axis_rules
      ),
  )
  # Every host computes the same metrics; one writes them.
  if jax.process_index() == 0:
    output_dir = output_dir or os.path.join(checkpoint_dir, 'eval')
  else:
    output_dir = None
  results = evaluate(
      model_fns=ModelFns(model, params, batch_size, mesh, logical_axis_rules),
      mixture_or_task_name=mixture_or_task_name,
      task_feature_lengths=task_feature_lengths,
      split=split,
      output_dir=output_dir,
      step=step,
  )
  logging.info('Evaluation at step %s:\n%s', step, results.to_json())
  return results


def main(argv: Sequence[str]) -> None:
  del argv
  distributed.initialize_from_flags()
  # Gin binds the importable module's function, not this `__main__` copy.
  from spt_jax.local import eval as eval_lib  # pylint: disable=g-import-not-at-top

  gin_utils.parse_gin_flags(entry=eval_lib.run_eval)
  results = gin.get_configurable(eval_lib.run_eval)()
  if jax.process_index() == 0:
    print(results.to_json())


if __name__ == '__main__':
  distributed.define_flags()
  gin_utils.run(
      main,
      short_errors=(train_checkpoints.CheckpointError,),
      usage_errors=checks.input_errors(),
  )
