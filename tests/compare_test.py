"""The study's runner: variant specs, configuration, recorded runs read back."""

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


def test_recorded_runs_are_read_back_not_retrained(tmp_path):
  variants = [
      compare.Variant('spt', ('never_parsed.gin',)),
      compare.Variant('stage2', ('never_parsed.gin',), 'spt'),
  ]
  for seed in range(2):
    for variant in variants:
      folder = compare.run_dir(str(tmp_path), variant.name, seed)
      os.makedirs(folder)
      results.RunResult(
          variant=variant.name,
          seed=seed,
          step=10,
          train_loss=0.5,
          datasets={'a': 10.0 * seed},
          tasks={},
          retrieval={},
      ).save(os.path.join(folder, compare.RESULT_FILE))
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
