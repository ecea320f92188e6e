"""The study: variant specs, recorded runs read back, the table and the plot."""

import math
import os

import pytest

from spt_jax import gin_utils
from spt_jax.study import compare
from spt_jax.study import results


def test_parse_variant():
  assert compare.parse_variant('spt:') == compare.Variant('spt')
  assert compare.parse_variant('pt:a.gin,b.gin') == compare.Variant(
      'pt', ('a.gin', 'b.gin')
  )
  assert compare.parse_variant('frozen:c.gin@base') == compare.Variant(
      'frozen', ('c.gin',), 'base'
  )
  with pytest.raises(ValueError, match='NAME:GIN_FILE'):
    compare.parse_variant(':a.gin')


def test_default_variants_start_from_earlier_ones():
  variants = [compare.parse_variant(v) for v in compare.STUDY_VARIANTS]
  compare.check_variants(variants)
  for variant in variants:
    for path in variant.gin_files:
      assert os.path.exists(os.path.join(gin_utils.REPO_ROOT, path)), path
  with pytest.raises(gin_utils.ConfigError, match='listed before it'):
    compare.check_variants(
        [compare.Variant('b', (), 'a'), compare.Variant('a')]
    )
  with pytest.raises(gin_utils.ConfigError, match='twice'):
    compare.check_variants([compare.Variant('a'), compare.Variant('a')])


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


def test_recorded_runs_are_read_back_not_retrained(tmp_path):
  variants = [
      compare.Variant('spt', ('never_parsed.gin',)),
      compare.Variant('stage2', ('never_parsed.gin',), 'spt'),
  ]
  for seed in range(2):
    for variant in variants:
      folder = compare.run_dir(str(tmp_path), variant.name, seed)
      os.makedirs(folder)
      _result(variant.name, seed, {'a': 10.0 * seed}).save(
          os.path.join(folder, compare.RESULT_FILE)
      )
  assert compare.recorded_seeds(variants, str(tmp_path)) == 2
  assert (
      compare.recorded_seeds(variants + [compare.Variant('new')], str(tmp_path))
      == 0
  )
  seen = []
  runs = compare.run_study(
      variants,
      range(2),
      str(tmp_path),
      ['never_parsed.gin'],
      [],
      on_seed_done=lambda r: seen.append(len(r['spt'])),
  )
  assert [r.seed for r in runs['stage2']] == [0, 1]
  assert runs['spt'][1].datasets == {'a': 10.0}
  assert seen == [1, 2]  # The table is rewritten after every seed.
  table = compare.write_results(runs, str(tmp_path))
  assert 'nan' not in table
  with open(tmp_path / compare.RESULTS_TABLE) as f:
    assert f.read() == table + '\n'
  with open(tmp_path / compare.RESULTS_PLOT, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def _configured(variant, tmp_path):
  """The variant's network config and TRAINABLE after `configure`."""
  import gin  # pylint: disable=g-import-not-at-top
  from spt_jax.model import network  # pylint: disable=g-import-not-at-top

  try:
    compare.configure([compare.BASE_GIN], variant, [], str(tmp_path), 1)
    spt = gin.get_configurable(network.SptTransformer)().spt
    settings = {
        m: gin.query_parameter(f'%{m}')
        for m in (
            'TRAINABLE',
            'MIXTURE_OR_TASK_NAME',
            'INITIAL_CHECKPOINT_PATH',
            'RANDOM_SEED',
        )
    }
    return spt, settings
  finally:
    gin.clear_config()


def test_default_variants_configure_the_study(tmp_path):
  variants = {
      v.name: v for v in map(compare.parse_variant, compare.STUDY_VARIANTS)
  }
  configured = {n: _configured(v, tmp_path) for n, v in variants.items()}
  spt, settings = configured['spt']
  assert spt.num_memories > spt.top_k >= 2 and settings['RANDOM_SEED'] == 1
  assert settings['TRAINABLE'] == 'all'
  assert configured['no_memory'][0].prefix_length == 0
  # Prompt tuning prepends as many positions as SPT retrieves.
  prompt_tuning = configured['prompt_tuning'][0]
  assert prompt_tuning.num_memories == 0
  assert prompt_tuning.soft_prompt_length == spt.prefix_length
  for _, settings in configured.values():
    assert settings['MIXTURE_OR_TASK_NAME'] == 'spt_study_train'
    assert settings['INITIAL_CHECKPOINT_PATH'] is None
