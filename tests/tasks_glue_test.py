"""Tests of the prompted GLUE tasks on mocked TFDS data."""

import importlib

import pytest
import seqio
import tensorflow_datasets as tfds

import tasks  # pylint: disable=unused-import
from spt_jax import eval_protocol
from spt_jax.model import feature_converters
from spt_jax.model import vocabularies
from tasks import glue
from tasks import sources
from tests import tasks_test_utils as tu


@pytest.mark.parametrize('dataset', glue.DATASETS, ids=lambda d: d.name)
def test_glue_task(dataset):
  template = dataset.template_collection.templates[-1]
  task = tu.offline_task(
      eval_protocol.task_name(glue.COLLECTION, dataset.name, template.name)
  )

  examples = tu.preprocess(
      task, tu.mocked_source_dataset(task, 'validation', num_examples=4)
  )

  assert len(examples) == 4
  for example in examples:
    tu.check_prompted(example, template.instruction)
  targets, results = tu.score_own_targets(task, examples)
  if dataset.name == 'glue_stsb':
    assert all(0 <= t <= 5 for t in targets)
    assert set(results) == {'pearson_corrcoef', 'spearman_corrcoef'}
  else:
    assert all(0 <= t < len(template.fixed_answer_choices) for t in targets)
    assert results['accuracy'] == 100.0
  if dataset.name == 'glue_cola':
    assert 'mcc' in results
  if dataset.name in ('glue_mrpc', 'glue_qqp'):
    assert 'f1' in results


def test_glue_mixture(monkeypatch):
  # The prepared datasets' sizes (TFDS info): stand-ins here.
  sizes = {'glue/qqp': 363_846, 'glue/mnli': 600_000}
  monkeypatch.setattr(
      sources.TfdsSource,
      'num_input_examples',
      lambda self, split: sizes.get(
          self.tfds_dataset.name.split(':')[0], 2_490
      ),
  )
  glue.register()  # Fresh rate functions: sizes are read once, then kept.
  mixture = seqio.get_mixture_or_task(glue.MIXTURE)
  assert len(mixture.tasks) == 27
  rates = {
      eval_protocol.template_info(t.name)[0]: mixture.get_rate(t)
      for t in mixture.tasks
  }
  assert rates['glue_qqp'] == 363_846  # T0: N <= 500,000 keeps N.
  assert rates['glue_mnli'] == 500_000 // 3  # Larger: capped per template.
  assert rates['glue_rte'] == 2_490
  rte = seqio.get_mixture_or_task('spt_glue_rte')
  assert [rte.get_rate(t) for t in rte.tasks] == [1.0] * 3
  glue.register()  # Forget the stand-in sizes.
  mnli = seqio.get_mixture_or_task(
      eval_protocol.task_name(glue.COLLECTION, 'glue_mnli', 'premise_entails')
  )
  assert set(mnli.splits) == {'train', 'validation', 'validation_mismatched'}


def test_glue_mixture_batches_for_the_model(monkeypatch):
  monkeypatch.setenv(vocabularies.VOCAB_PATH_ENV, tu.TEST_VOCAB_PATH)
  # Mocked TFDS data has no recorded size: say the mock's.
  monkeypatch.setattr(
      sources.TfdsSource, 'num_input_examples', lambda self, split: 16
  )
  importlib.reload(glue)
  try:
    # The mixture ends with its first exhausted task: enough examples for
    # full batches at T0's rates.
    with tfds.testing.mock_data(num_examples=16):
      ds = seqio.get_dataset(
          glue.MIXTURE,
          tu.LENGTHS,
          dataset_split='train',
          shuffle=False,
          batch_size=8,
          feature_converter=feature_converters.SptEncDecFeatureConverter(
              prompt_length=tu.LENGTHS['prompt']
          ),
      )
      batches = list(ds.as_numpy_iterator())
  finally:
    monkeypatch.delenv(vocabularies.VOCAB_PATH_ENV)
    importlib.reload(glue)

  assert batches
  for batch in batches:
    assert batch['encoder_input_tokens'].shape == (
        8,
        tu.LENGTHS['inputs'] + tu.LENGTHS['prompt'],
    )
    assert batch['decoder_target_tokens'].shape == (8, tu.LENGTHS['targets'])
    prompt = batch['encoder_input_tokens'][:, tu.LENGTHS['inputs'] :]
    assert (prompt == 1).sum() == 8  # One EOS each.
