"""Tests of the postprocessors, metrics, task naming and aggregation."""

import numpy as np
import pytest
import seqio

from spt_jax import eval_protocol
from tasks import metrics
from tasks import registry


def test_rank_classification_postprocessor_and_accuracy():
  rows = [
      {'idx': np.array([0, 0], np.int32), 'is_correct': np.False_},
      {'idx': np.array([0, 1], np.int32), 'is_correct': np.True_},
      {'idx': np.array([1, 0], np.int32), 'is_correct': np.True_},
      {'idx': np.array([1, 1], np.int32), 'is_correct': np.False_},
      {'idx': np.array([1, 2], np.int32), 'is_correct': np.False_},
  ]
  targets = [
      metrics.rank_classification_postprocessor(
          'ignored', example=row, is_target=True
      )
      for row in rows
  ]
  assert targets[1] == (0, 1, True)
  assert metrics.rank_classification_postprocessor(-1.5) == -1.5

  # Example 0 picks choice 1 (correct); example 1 picks choice 2 (wrong).
  scores = [-3.0, -1.0, -2.0, -4.0, -0.5]
  assert eval_protocol.rank_classification_accuracy(targets, scores) == {
      'accuracy': 50.0
  }
  assert eval_protocol.rank_classification_accuracy(
      targets, [-3.0, -1.0, -0.1, -4.0, -0.5]
  ) == {'accuracy': 100.0}
  with pytest.raises(ValueError):
    eval_protocol.rank_classification_accuracy(targets, scores[:2])


def test_rank_classification_metric_is_a_seqio_score_metric():
  metric = seqio.metrics.LegacyMetric.empty(
      eval_protocol.rank_classification_accuracy,
      metrics.rank_classification_postprocessor,
  )
  assert metric.model_output_type == seqio.metrics.ModelOutputType.SCORE


def test_label_metrics():
  assert metrics.choice_index(' Yes ', ('No', 'Yes')) == 1
  assert metrics.choice_index('perhaps', ('No', 'Yes')) == -1
  assert metrics.accuracy([1, 0, 1, 1], [1, 0, 0, 1]) == {'accuracy': 75.0}
  assert metrics.f1([1, 0, 1, 1], [1, 0, 0, 1]) == pytest.approx({'f1': 80.0})
  assert metrics.matthews_corrcoef([1, 0, 1, 0], [1, 0, 1, 0]) == {'mcc': 100.0}
  assert metrics.matthews_corrcoef([1, 1, 1], [1, 1, 1]) == {'mcc': 0.0}
  assert metrics.macro_f1(3)([0, 1, 2, 2], [0, 1, 2, 1]) == pytest.approx(
      {'macro_f1': 100 * (1 + 2 / 3 + 2 / 3) / 3}
  )


def test_correlations():
  result = metrics.correlations([0.0, 1.0, 2.0, 3.0], [0.1, 1.5, 1.9, 4.0])
  assert result['spearman_corrcoef'] == pytest.approx(100.0)
  assert 95 < result['pearson_corrcoef'] < 100
  assert metrics.string_to_float('3.4') == 3.4
  assert np.isnan(metrics.string_to_float('high'))


def test_multirc_and_squad():
  targets = [((0, 0), 1), ((0, 0), 0), ((0, 1), 1)]
  assert metrics.multirc(targets, [1, 0, 0]) == pytest.approx(
      {'f1a': 100 * 2 / 3, 'exact_match': 50.0}
  )
  example = {'paragraph_idx': np.int32(3), 'question_idx': np.int32(4)}
  assert metrics.multirc_postprocessor(
      'yes', ('No', 'Yes'), example=example, is_target=True
  ) == ((3, 4), 1)
  assert metrics.record_postprocessor(
      'x', example={'answers': np.array([b'Paris', b'France'])}, is_target=True
  ) == ['Paris', 'France']
  assert metrics.squad([['The Paris'], ['Rome city']], ['paris', 'Rome']) == (
      pytest.approx({'exact_match': 50.0, 'f1': 100 * (1 + 2 / 3) / 2})
  )


def test_template_info_reads_task_names():
  name = eval_protocol.task_name('spt_t0', 'anli_r1', 'claim_true_false', True)
  assert name == 'spt_t0__anli_r1__claim_true_false__score'
  assert eval_protocol.template_info(name) == ('anli_r1', 'claim_true_false')
  assert eval_protocol.template_info('spt_glue__glue_rte__then_correct') == (
      'glue_rte',
      'then_correct',
  )
  assert eval_protocol.is_score_task(name)
  with pytest.raises(ValueError):
    eval_protocol.template_info('spt_t0_train')
  with pytest.raises(ValueError):
    eval_protocol.task_name('spt', 'a__b', 'c')


def test_aggregate_over_templates():
  results = {
      'spt_t0__super_glue_cb__a__score': {'accuracy': 40.0},
      'spt_t0__super_glue_cb__b__score': {'accuracy': 50.0},
      'spt_t0__super_glue_cb__c__score': {'accuracy': 90.0},
      'spt_t0__anli_r1__a__score': {'accuracy': 33.0},
      'spt_t0__anli_r1__b__score': {'other': 1.0},
  }

  summary = eval_protocol.aggregate_over_templates(results)

  assert list(summary) == ['anli_r1', 'super_glue_cb']
  assert summary['super_glue_cb']['mean'] == pytest.approx(60.0)
  assert summary['super_glue_cb']['median'] == 50.0
  assert summary['super_glue_cb']['num_templates'] == 3
  assert summary['super_glue_cb']['per_template'] == {
      'a': 40.0,
      'b': 50.0,
      'c': 90.0,
  }
  assert summary['anli_r1']['num_templates'] == 1


def test_add_task_replaces_an_existing_registration():
  source = seqio.FunctionDataSource(
      lambda split, shuffle_files: None, splits=['train']
  )
  first = registry.add_task('spt_test__a__b', source=source, output_features={})
  second = registry.add_task(
      'spt_test__a__b', source=source, output_features={}
  )
  assert seqio.get_mixture_or_task('spt_test__a__b') is second
  assert first is not second
  registry.add_mixture('spt_test_mixture', ['spt_test__a__b'], 1.0)
  registry.add_mixture('spt_test_mixture', ['spt_test__a__b'], 2.0)
  assert seqio.get_mixture_or_task('spt_test_mixture').total_rate == 2.0
  seqio.MixtureRegistry.remove('spt_test_mixture')
  seqio.TaskRegistry.remove('spt_test__a__b')
