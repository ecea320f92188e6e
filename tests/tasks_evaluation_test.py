"""Per-dataset aggregates over templates, as a function and in seqio's evaluator."""

import numpy as np
import pytest
import seqio

from spt_jax.model import feature_converters
from tasks import evaluation
from tasks import synthetic


def test_aggregates_are_mean_and_median_over_each_datasets_templates():
  aggregated = evaluation.aggregate_all_metrics(
      {
          'spt_t0__anli_r1__a__score': {'accuracy': 40.0, 'loss': 1.0},
          'spt_t0__anli_r1__b__score': {'accuracy': 60.0},
          'spt_t0__anli_r1__c__score': {'accuracy': 90.0},
          'spt_t0__rte__a__score': {'accuracy': seqio.metrics.Scalar(70.0)},
          'spt_t0__rte__b': {
              'histogram': np.arange(3)
          },  # Not a scalar: left out.
          'not_a_prompted_task': {'accuracy': 0.0},  # Left out.
      }
  )
  assert aggregated == {
      'anli_r1__templates': {
          'accuracy_mean': pytest.approx(190 / 3),
          'accuracy_median': 60.0,
          'loss_mean': 1.0,
          'loss_median': 1.0,
          'num_templates': 3,
      },
      'rte__templates': {
          'accuracy_mean': 70.0,
          'accuracy_median': 70.0,
          'num_templates': 1,
      },
  }


class _RecordingLogger(seqio.Logger):

  def __init__(self, output_dir=None):
    super().__init__(output_dir)
    self.logged = {}

  def __call__(self, task_name, step, metrics, dataset, inferences, targets):
    self.logged[task_name] = {k: v.value for k, v in metrics.items()}


def test_evaluator_adds_and_logs_the_aggregates(tmp_path):
  synthetic.register()
  evaluator = evaluation.TemplateAggregatingEvaluator(
      mixture_or_task_name=synthetic.HELDOUT_TEMPLATES_MIXTURE,
      feature_converter=feature_converters.SptEncDecFeatureConverter(
          prompt_length=4
      ),
      eval_split='validation',
      logger_cls=[_RecordingLogger],
      log_dir=str(tmp_path),
      use_memory_cache=True,
  )

  def score_fn(dataset, model_feature_shapes=None):
    del model_feature_shapes  # Any deterministic, varied score will do.
    return [
        (int(i), float(-np.sum(ex['decoder_target_tokens'] % 7)))
        for i, ex in dataset.as_numpy_iterator()
    ]

  results, _ = evaluator.evaluate(
      compute_metrics=True, step=3, predict_fn=None, score_fn=score_fn
  )
  results = results.result()
  per_template = {
      name: m
      for name, m in results.items()
      if not name.endswith(evaluation.AGGREGATE_SUFFIX)
  }
  expected = evaluation.aggregate_all_metrics(per_template)
  assert len(expected) >= 2
  for name, values in expected.items():
    assert results[name] == values
    assert evaluator.loggers[0].logged[name] == pytest.approx(values)
