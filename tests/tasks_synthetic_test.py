"""Tests of the offline synthetic mixture (its vocabulary: tasks_build_vocab_test)."""

import numpy as np
import pytest
import seqio
import sentencepiece as spm

import tasks  # pylint: disable=unused-import
from tasks import registry
from tasks import synthetic
from tasks import vocab

_TRAINED = [f for f in synthetic.FAMILIES if not f.heldout]
_HELDOUT = [f for f in synthetic.FAMILIES if f.heldout]

# Words every instruction of a family uses, so that paraphrases pool close.
_KEY_WORDS = {
    'first': ('first',), 'last': ('last',), 'reverse': ('revers',),
    'category_first': ('first',), 'count': ('word',),
    'cipher': ('secret code',), 'has_color': ('color',),
    'category_last': ('last',), 'cipher_first': ('secret code', 'first'),
}


@pytest.fixture(scope='module')
def sentencepiece():
  return spm.SentencePieceProcessor(model_file=vocab.SYNTHETIC_VOCAB_PATH)


def test_examples_are_deterministic_and_answer_among_choices():
  for family in synthetic.FAMILIES:
    for index in range(50):
      example = synthetic.make_example(family.name, 'train', index, 'salt')
      assert example == synthetic.make_example(
          family.name, 'train', index, 'salt')
      words = example['words'].split()
      assert synthetic.MIN_WORDS <= len(words) <= synthetic.MAX_WORDS
      assert len(set(words)) == len(words)
      assert example['answer'] == family.answer(words)
      assert len(example['choices']) == family.num_choices
      assert len(set(example['choices'])) == family.num_choices
      assert example['answer'] in example['choices']
  assert (synthetic.make_example('first', 'train', 0, 'a') !=
          synthetic.make_example('first', 'train', 0, 'b'))


def test_answers_follow_the_task_definitions():
  words = ['cat', 'red', 'apple', 'saw']
  assert synthetic.FAMILIES_BY_NAME['reverse'].answer(words) == (
      'saw apple red cat')
  assert synthetic.FAMILIES_BY_NAME['category_last'].answer(words) == 'tool'
  assert synthetic.FAMILIES_BY_NAME['count'].answer(words) == 'four'
  assert synthetic.FAMILIES_BY_NAME['has_color'].answer(words) == 'yes'
  assert synthetic.FAMILIES_BY_NAME['cipher_first'].answer(words) == (
      synthetic.CIPHER['cat'])
  assert sorted(synthetic.CIPHER.values()) == sorted(synthetic.WORDS)
  assert all(k != v for k, v in synthetic.CIPHER.items())


def test_heldout_split_shares_no_example_with_training():
  train, validation = set(), set()
  for family in synthetic.FAMILIES:
    for template in family.templates.names:
      source = synthetic.SyntheticSource(family.name, template)
      train.update(e['words'] for e in source.examples('train'))
      validation.update(e['words'] for e in source.examples('validation'))
  assert len(train) > 40_000
  assert len(validation) > 800
  assert not train & validation
  assert all(synthetic.in_eval_pool(w.split()) for w in validation)


def test_has_color_is_balanced():
  answers = [synthetic.make_example('has_color', 'train', i)['answer']
             for i in range(400)]
  assert 0.4 < answers.count('yes') / len(answers) < 0.6


def test_mixtures_hold_out_templates_and_families():
  def tasks_of(mixture):
    return [t.name for t in seqio.get_mixture_or_task(mixture).tasks]

  train = tasks_of(synthetic.TRAIN_MIXTURE)
  assert len(train) == 28
  assert sum(seqio.get_mixture_or_task(n).num_input_examples('train')
             for n in train) == 28 * synthetic.TRAIN_EXAMPLES_PER_TASK
  trained_families = {registry.template_info(n)[0] for n in train}
  assert trained_families == {f.name for f in _TRAINED}
  heldout_templates = tasks_of(synthetic.HELDOUT_TEMPLATES_MIXTURE)
  heldout_tasks = tasks_of(synthetic.HELDOUT_TASKS_MIXTURE)
  assert len(heldout_templates) == 7 and len(heldout_tasks) == 8
  for name in heldout_templates:
    family, template = registry.template_info(name)
    assert template in synthetic.FAMILIES_BY_NAME[family].templates.heldout
    assert name.replace('__score', '') not in train
  assert {registry.template_info(n)[0] for n in heldout_tasks} == {
      f.name for f in _HELDOUT}
  assert sorted(tasks_of(synthetic.HELDOUT_MIXTURE)) == sorted(
      heldout_templates + heldout_tasks)
  assert sorted(tasks_of(synthetic.HELDOUT_GEN_MIXTURE)) == sorted(
      n.replace('__score', '') for n in heldout_templates + heldout_tasks)
  assert len(tasks_of(synthetic.SEEN_MIXTURE)) == 28
  for name in heldout_templates + heldout_tasks:
    assert seqio.get_mixture_or_task(name).splits == ('validation',)


def test_instructions_share_their_key_words():
  for family in synthetic.FAMILIES:
    for template in family.templates.templates:
      for word in _KEY_WORDS[family.name]:
        assert word in template.instruction.lower(), (
            family.name, template.name)


def test_feature_lengths_fit_every_template(sentencepiece):
  lengths = synthetic.SYNTHETIC_FEATURE_LENGTHS
  longest = sorted(synthetic.WORDS, key=len)[-synthetic.MAX_WORDS:]
  for family in synthetic.FAMILIES:
    for template in family.templates.templates:
      example = {'words': ' '.join(longest), 'answer': ' '.join(longest),
                 'choices': [' '.join(longest)]}
      rendered = template.render(example)
      assert len(sentencepiece.encode(rendered.inputs)) < lengths['inputs']
      assert len(sentencepiece.encode(rendered.targets)) < lengths['targets']
      assert (len(sentencepiece.encode(template.instruction)) <
              lengths['prompt']), template.name


def test_training_task_output(sentencepiece):
  name = registry.task_name(synthetic.COLLECTION, 'reverse', 'backwards')
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(synthetic.SYNTHETIC_FEATURE_LENGTHS, split='train',
                        shuffle=False)
  examples = list(ds.take(8).as_numpy_iterator())
  again = list(task.get_dataset(synthetic.SYNTHETIC_FEATURE_LENGTHS,
                                split='train', shuffle=False)
               .take(8).as_numpy_iterator())

  for example, other in zip(examples, again):
    np.testing.assert_array_equal(example['inputs'], other['inputs'])
  first = examples[0]
  raw = synthetic.make_example('reverse', 'train', 0, 'backwards')
  assert first['inputs_pretokenized'].decode() == (
      f"Reverse this list, writing it backwards: {raw['words']}")
  assert first['targets_pretokenized'].decode() == raw['answer']
  assert first['prompt_pretokenized'].decode() == (
      'Reverse this list, writing it backwards:')
  for key in ('inputs', 'targets', 'prompt'):
    assert first[key].dtype == np.int32 and first[key][-1] == 1
    text = first[key + '_pretokenized'].decode()
    assert list(first[key][:-1]) == sentencepiece.encode(text)


def test_rank_classification_task_output():
  name = registry.task_name(
      synthetic.COLLECTION, 'category_last', 'is_last_a', score=True)
  task = seqio.get_mixture_or_task(name)
  rows = list(task.get_dataset(synthetic.SYNTHETIC_FEATURE_LENGTHS,
                               split='validation', shuffle=False)
              .as_numpy_iterator())

  assert len(rows) == 4 * synthetic.VALIDATION_EXAMPLES_PER_TASK
  for e in range(synthetic.VALIDATION_EXAMPLES_PER_TASK):
    example_rows = rows[4 * e:4 * e + 4]
    assert [list(r['idx']) for r in example_rows] == [[e, c] for c in range(4)]
    assert sum(r['is_correct'] for r in example_rows) == 1
    assert {r['targets_pretokenized'].decode() for r in example_rows} == set(
        synthetic.LEXICON)
    assert all(r['targets'].dtype == np.int32 for r in example_rows)
