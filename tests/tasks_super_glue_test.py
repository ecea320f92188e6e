"""Tests of the prompted SuperGLUE tasks on mocked TFDS data."""

import pytest
import seqio

import tasks  # pylint: disable=unused-import
from spt_jax import eval_protocol
from tasks import super_glue
from tests import tasks_test_utils as tu


@pytest.mark.parametrize('dataset', super_glue.DATASETS, ids=lambda d: d.name)
def test_super_glue_task(dataset):
  template = dataset.template_collection.templates[0]
  task = tu.offline_task(
      eval_protocol.task_name(
          super_glue.COLLECTION, dataset.name, template.name
      )
  )

  examples = tu.preprocess(
      task, tu.mocked_source_dataset(task, 'train', num_examples=3)
  )

  assert len(examples) == 3
  for example in examples:
    tu.check_prompted(example, template.instruction)
    for name in dataset.keep_features:
      assert name in example
  _, results = tu.score_own_targets(task, examples)
  expected = {
      'super_glue_cb': {'accuracy', 'macro_f1'},
      'super_glue_multirc': {'f1a', 'exact_match'},
      'super_glue_record': {'exact_match', 'f1'},
  }.get(dataset.name, {'accuracy'})
  assert set(results) == expected
  assert all(v == 100.0 for k, v in results.items() if k != 'macro_f1')


def test_super_glue_mixtures():
  everything = seqio.get_mixture_or_task(super_glue.MIXTURE)
  assert {eval_protocol.template_info(t.name)[0] for t in everything.tasks} == {
      d.name for d in super_glue.DATASETS
  }
  for dataset in super_glue.DATASETS:
    config = dataset.name[len('super_glue_') :]
    mixture = seqio.get_mixture_or_task(f'{super_glue.MIXTURE}_{config}')
    assert len(mixture.tasks) == len(dataset.template_collection.names)
    assert all(t.splits == ('train', 'validation') for t in mixture.tasks)
