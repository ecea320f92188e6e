"""The study's results: mean ± SE, paired t intervals, the tables and the plot."""

import math

import pytest

from spt_jax.study import results


def _result(variant, seed, datasets, loss=0.5, retrieval=None):
  return results.RunResult(
      variant=variant,
      seed=seed,
      step=10,
      train_loss=loss,
      datasets=datasets,
      tasks={},
      retrieval=retrieval or {},
  )


def test_mean_and_standard_error():
  mean, se = results.mean_and_se([50.0, 60.0, 70.0])
  assert mean == 60.0 and se == pytest.approx(10 / math.sqrt(3))
  mean, se = results.mean_and_se([42.0])
  assert mean == 42.0 and math.isnan(se)


def test_paired_difference_against_a_hand_computed_t_interval():
  # d = (10, 8, 5): mean 23/3, sd sqrt(19/3), t(0.975, 2 df) = 4.302653.
  mean, low, high = results.paired_difference([60, 70, 65], [50, 62, 60])
  half = 4.302653 * math.sqrt(19 / 3) / math.sqrt(3)
  assert mean == pytest.approx(23 / 3)
  assert (low, high) == pytest.approx((23 / 3 - half, 23 / 3 + half), abs=1e-5)
  mean, low, high = results.paired_difference([60], [50])
  assert mean == 10 and math.isnan(low) and math.isnan(high)
  with pytest.raises(ValueError, match='equal'):
    results.paired_difference([1, 2], [1])


def test_differences_table_pairs_runs_by_seed(tmp_path):
  runs = {
      'spt': [
          _result('spt', s, {'a': a, 'b': b})
          for s, a, b in [(0, 60, 70), (1, 70, 80), (2, 65, 75)]
      ],
      # Seed 2 of the baseline is missing: two pairs.
      'no_memory': [
          _result('no_memory', s, {'a': a, 'b': b})
          for s, a, b in [(1, 62, 80), (0, 50, 70)]
      ],
      'prompt_tuning': [_result('prompt_tuning', 0, {'a': 40, 'b': 30})],
  }
  body = _rows(results.differences_table(runs))
  assert body['dataset'] == [
      'spt - no_memory (2 seeds)',
      'spt - prompt_tuning (1 seeds)',
  ]
  # a: d = (10, 8), mean 9, t(0.975, 1) * sd / sqrt(2) = 12.706 * 1 = 12.7.
  assert body['a'] == ['+9.0 [-3.7, +21.7]', '+20.0']
  assert body['b'][0] == '+0.0 [+0.0, +0.0]'
  assert body['average'] == ['+4.5 [-1.9, +10.9]', '+30.0']
  assert results.differences_table({'spt': runs['spt']}) == ''
  first = results.paired_differences(runs)[0]
  assert (first.variant, first.baseline, first.seeds) == ('spt', 'no_memory', 2)
  assert first.datasets['a'] == pytest.approx((9.0, -3.706, 21.706), abs=1e-3)
  # The plot's last panel: the differences with their intervals.
  path = results.plot_results(runs, str(tmp_path / 'plot.png'))
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def _rows(table):
  return {
      row[0]: row[1:]
      for row in (
          [c.strip() for c in line.split('|')] for line in table.splitlines()
      )
  }


def test_results_table_is_mean_and_se_over_seeds_per_group():
  retrieval = {
      'same_family_jaccard': 0.5,
      'other_family_jaccard': 0.25,
      'heldout_own_family': 100.0,
      'heldout_chance': 25.0,
  }
  runs = {
      'spt': [
          _result('spt', 0, {'a': 50.0, 'b': 70.0}, retrieval=retrieval),
          _result('spt', 1, {'a': 60.0, 'b': 80.0}, retrieval=retrieval),
      ],
      'no_memory': [
          _result('no_memory', 0, {'a': 30.0, 'b': 40.0}, 1.5),
          _result('no_memory', 1, {'a': 30.0, 'b': 50.0}, 2.5),
      ],
      'frozen': [_result('frozen', 0, {'b': 20.0})],
  }
  first, second = results.results_table(runs).split('\n\n')
  assert first.startswith('seeds per variant: 2\n')
  body = _rows(first)
  assert body['dataset'] == ['spt', 'no_memory']
  assert body['a'] == ['55.0 ± 5.0', '30.0 ± 0.0']
  # Per seed the average over datasets (60, 70), then over seeds.
  assert body['average'] == ['65.0 ± 5.0', '37.5 ± 2.5']
  assert body['train loss (last)'] == ['0.500 ± 0.000', '2.000 ± 0.500']
  assert body['retrieval: same-family overlap'] == ['0.50 ± 0.00', '-']
  frozen = _rows(second)
  assert frozen['dataset'] == ['frozen'] and frozen['average'] == ['20.0']
