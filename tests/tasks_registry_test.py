"""Task names round-trip through template_info; registration replaces."""

import pytest
import seqio

from spt_jax import eval_protocol
from tasks import registry


def test_task_names_round_trip():
  name = eval_protocol.task_name('spt_t0', 'anli_r1', 'guaranteed')
  assert name == 'spt_t0__anli_r1__guaranteed'
  score = eval_protocol.task_name('spt_t0', 'anli_r1', 'guaranteed', score=True)
  assert score == name + '__score'
  for n in (name, score):
    assert eval_protocol.template_info(n) == ('anli_r1', 'guaranteed')
  assert eval_protocol.is_score_task(score) and not eval_protocol.is_score_task(
      name
  )
  with pytest.raises(ValueError, match='must not contain'):
    eval_protocol.task_name('spt', 'a__b', 'c')
  for bad in ('spt__anli', 'spt__anli____score', 'a__b__c__d'):
    with pytest.raises(ValueError, match='not a prompted task name'):
      eval_protocol.template_info(bad)


def test_adding_twice_replaces_the_task_and_the_mixture():
  source = seqio.FunctionDataSource(
      lambda split, shuffle_files: None, splits=['train']
  )
  name = 'registry_test__data__template'
  first = registry.add_task(name, source=source, output_features={})
  second = registry.add_task(name, source=source, output_features={})
  assert first is not second and seqio.get_mixture_or_task(name) is second
  mixture = registry.add_mixture('registry_test_mix', [name], default_rate=1.0)
  again = registry.add_mixture('registry_test_mix', [name], default_rate=2.0)
  assert seqio.get_mixture_or_task('registry_test_mix') is again is not mixture
  seqio.MixtureRegistry.remove('registry_test_mix')
  seqio.TaskRegistry.remove(name)
