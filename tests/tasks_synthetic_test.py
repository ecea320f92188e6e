"""Tests of the offline synthetic mixture (its vocabulary: tasks_build_vocab_test)."""

import numpy as np
import pytest
import seqio
import sentencepiece as spm

import tasks  # pylint: disable=unused-import
from spt_jax import eval_protocol
from tasks import synthetic
from tasks import synthetic_study
from tasks import vocab

_TRAINED = [f for f in synthetic.FAMILIES if not f.heldout]
_HELDOUT = [f for f in synthetic.FAMILIES if f.heldout]

# Words every instruction of a family uses, so that paraphrases pool close.
_KEY_WORDS = {
    'first': ('first',),
    'last': ('last',),
    'reverse': ('revers',),
    'category_first': ('first',),
    'count': ('word',),
    'cipher': ('secret code',),
    'has_color': ('color',),
    'category_last': ('last',),
    'cipher_first': ('secret code', 'first'),
}


@pytest.fixture(scope='module')
def sentencepiece():
  return spm.SentencePieceProcessor(model_file=vocab.SYNTHETIC_VOCAB_PATH)


def test_examples_are_deterministic_and_answer_among_choices():
  for family in synthetic.FAMILIES:
    for index in range(50):
      example = synthetic.make_example(family.name, 'train', index, 'salt')
      assert example == synthetic.make_example(
          family.name, 'train', index, 'salt'
      )
      words = example['words'].split()
      assert synthetic.MIN_WORDS <= len(words) <= synthetic.MAX_WORDS
      assert len(set(words)) == len(words)
      assert example['answer'] == family.answer(words)
      assert len(example['choices']) == family.num_choices
      assert len(set(example['choices'])) == family.num_choices
      assert example['answer'] in example['choices']
  assert synthetic.make_example(
      'first', 'train', 0, 'a'
  ) != synthetic.make_example('first', 'train', 0, 'b')


def test_answers_follow_the_task_definitions():
  words = ['cat', 'red', 'apple', 'saw']
  assert synthetic.FAMILIES_BY_NAME['reverse'].answer(words) == (
      'saw apple red cat'
  )
  assert synthetic.FAMILIES_BY_NAME['category_last'].answer(words) == 'tool'
  assert synthetic.FAMILIES_BY_NAME['count'].answer(words) == 'four'
  assert synthetic.FAMILIES_BY_NAME['has_color'].answer(words) == 'yes'
  assert synthetic.FAMILIES_BY_NAME['cipher_first'].answer(words) == (
      synthetic.CIPHER['cat']
  )
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
  answers = [
      synthetic.make_example('has_color', 'train', i)['answer']
      for i in range(400)
  ]
  assert 0.4 < answers.count('yes') / len(answers) < 0.6


def test_mixtures_hold_out_templates_and_families():
  def tasks_of(mixture):
    return [t.name for t in seqio.get_mixture_or_task(mixture).tasks]

  train = tasks_of(synthetic.TRAIN_MIXTURE)
  assert len(train) == 28
  assert (
      sum(
          seqio.get_mixture_or_task(n).num_input_examples('train')
          for n in train
      )
      == 28 * synthetic.TRAIN_EXAMPLES_PER_TASK
  )
  trained_families = {eval_protocol.template_info(n)[0] for n in train}
  assert trained_families == {f.name for f in _TRAINED}
  heldout_templates = tasks_of(synthetic.HELDOUT_TEMPLATES_MIXTURE)
  heldout_tasks = tasks_of(synthetic.HELDOUT_TASKS_MIXTURE)
  assert len(heldout_templates) == 7 and len(heldout_tasks) == 8
  for name in heldout_templates:
    family, template = eval_protocol.template_info(name)
    assert template in synthetic.FAMILIES_BY_NAME[family].templates.heldout
    assert name.replace('__score', '') not in train
  assert {eval_protocol.template_info(n)[0] for n in heldout_tasks} == {
      f.name for f in _HELDOUT
  }
  assert sorted(tasks_of(synthetic.HELDOUT_MIXTURE)) == sorted(
      heldout_templates + heldout_tasks
  )
  assert sorted(tasks_of(synthetic.HELDOUT_GEN_MIXTURE)) == sorted(
      n.replace('__score', '') for n in heldout_templates + heldout_tasks
  )
  assert len(tasks_of(synthetic.SEEN_MIXTURE)) == 28
  for name in heldout_templates + heldout_tasks:
    assert seqio.get_mixture_or_task(name).splits == ('validation',)


def test_instructions_share_their_key_words():
  for family in synthetic.FAMILIES:
    for template in family.templates.templates:
      for word in _KEY_WORDS[family.name]:
        assert word in template.instruction.lower(), (
            family.name,
            template.name,
        )


def test_feature_lengths_fit_every_template(sentencepiece):
  lengths = synthetic.SYNTHETIC_FEATURE_LENGTHS
  longest = sorted(synthetic.WORDS, key=len)[-synthetic.MAX_WORDS :]
  for family in synthetic.FAMILIES:
    for template in family.templates.templates:
      example = {
          'words': ' '.join(longest),
          'answer': ' '.join(longest),
          'choices': [' '.join(longest)],
      }
      rendered = template.render(example)
      assert len(sentencepiece.encode(rendered.inputs)) < lengths['inputs']
      assert len(sentencepiece.encode(rendered.targets)) < lengths['targets']
      assert (
          len(sentencepiece.encode(template.instruction)) < lengths['prompt']
      ), template.name


def test_training_task_output(sentencepiece):
  name = eval_protocol.task_name(synthetic.COLLECTION, 'reverse', 'backwards')
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(
      synthetic.SYNTHETIC_FEATURE_LENGTHS, split='train', shuffle=False
  )
  examples = list(ds.take(8).as_numpy_iterator())
  again = list(
      task.get_dataset(
          synthetic.SYNTHETIC_FEATURE_LENGTHS, split='train', shuffle=False
      )
      .take(8)
      .as_numpy_iterator()
  )

  for example, other in zip(examples, again):
    np.testing.assert_array_equal(example['inputs'], other['inputs'])
  first = examples[0]
  raw = synthetic.make_example('reverse', 'train', 0, 'backwards')
  assert first['inputs_pretokenized'].decode() == (
      f"Reverse this list, writing it backwards: {raw['words']}"
  )
  assert first['targets_pretokenized'].decode() == raw['answer']
  assert first['prompt_pretokenized'].decode() == (
      'Reverse this list, writing it backwards:'
  )
  for key in ('inputs', 'targets', 'prompt'):
    assert first[key].dtype == np.int32 and first[key][-1] == 1
    text = first[key + '_pretokenized'].decode()
    assert list(first[key][:-1]) == sentencepiece.encode(text)


def test_rank_classification_task_output():
  name = eval_protocol.task_name(
      synthetic.COLLECTION, 'category_last', 'is_last_a', score=True
  )
  task = seqio.get_mixture_or_task(name)
  rows = list(
      task.get_dataset(
          synthetic.SYNTHETIC_FEATURE_LENGTHS, split='validation', shuffle=False
      ).as_numpy_iterator()
  )

  assert len(rows) == 4 * synthetic.VALIDATION_EXAMPLES_PER_TASK
  for e in range(synthetic.VALIDATION_EXAMPLES_PER_TASK):
    example_rows = rows[4 * e : 4 * e + 4]
    assert [list(r['idx']) for r in example_rows] == [[e, c] for c in range(4)]
    assert sum(r['is_correct'] for r in example_rows) == 1
    assert {r['targets_pretokenized'].decode() for r in example_rows} == set(
        synthetic.LEXICON
    )
    assert all(r['targets'].dtype == np.int32 for r in example_rows)


def _tasks_of(mixture):
  return [t.name for t in seqio.get_mixture_or_task(mixture).tasks]


def _templates_of(mixture):
  return {eval_protocol.template_info(n) for n in _tasks_of(mixture)}


def test_study_splits_keep_dev_and_test_apart_from_training():
  mixtures = synthetic_study.STUDY_MIXTURES
  train = _templates_of(mixtures['train'])
  dev, test = _templates_of(mixtures['dev']), _templates_of(mixtures['test'])
  assert (len(train), len(dev), len(test)) == (7 * 8, 7 * 4 + 8, 7 * 4 + 16)
  assert not train & dev and not train & test and not dev & test
  trained_families = {f for f, _ in train}
  assert trained_families == {f.name for f in _TRAINED}
  # Held-out families are test only; the dev family is dev only.
  assert {f for f, _ in test} - trained_families == {
      'category_last',
      'cipher_first',
  }
  assert {f for f, _ in dev} - trained_families == {'cipher_last'}
  for name in _tasks_of(mixtures['train']):
    task = seqio.get_mixture_or_task(name)
    assert task.splits == ('train', 'validation')
    assert task.num_input_examples('train') == (
        synthetic_study.STUDY_TRAIN_EXAMPLES_PER_TASK
    )
  for mixture in ('dev', 'test'):
    for name in _tasks_of(mixtures[mixture]):
      assert name.endswith('__score')
      task = seqio.get_mixture_or_task(name)
      assert task.splits == ('validation',)
      assert task.num_input_examples('validation') == (
          synthetic_study.STUDY_EVAL_EXAMPLES_PER_TASK
      )


def test_study_frames_do_not_tell_families_apart():
  """Every frame trains with every trained family, each family's phrases
  both train, and a held-out template pairs a trained frame with a phrase
  the family trains on with other frames."""
  frames = [f for f, _ in synthetic_study.FRAMES]
  trained_frames, trained_phrases = {}, {}
  for family in _TRAINED:
    roles = synthetic_study.study_templates(family)
    pairs = [t.name.rsplit('_', 1) for t in roles['train']]
    trained_frames[family.name] = {f for f, _ in pairs}
    trained_phrases[family.name] = {p for _, p in pairs}
    for role in ('dev', 'test'):
      for template in roles[role]:
        frame, phrase = template.name.rsplit('_', 1)
        assert [frame, phrase] not in pairs
        assert phrase in trained_phrases[family.name]
  assert all(f == set(frames) for f in trained_frames.values())
  assert all(p == {'a', 'b'} for p in trained_phrases.values())


def _phrase_words(family):
  return {
      w
      for phrase in synthetic_study.PHRASES[family]
      for w in phrase.split()
      if w not in ('the', 'of', 'in', 'a', 'at')
  }


def test_study_instructions_fit_and_recombine_trained_words(sentencepiece):
  trained_words = set().union(*(_phrase_words(f.name) for f in _TRAINED))
  lengths = dict(synthetic.SYNTHETIC_FEATURE_LENGTHS, inputs=24)
  longest = ' '.join(sorted(synthetic.WORDS, key=len)[-synthetic.MAX_WORDS :])
  for family in synthetic.FAMILIES + synthetic.DEV_FAMILIES:
    if family.heldout:
      # A held-out family's phrases are made of trained families' words.
      assert _phrase_words(family.name) <= trained_words, family.name
    for templates in synthetic_study.study_templates(family).values():
      for template in templates:
        phrase = synthetic_study.PHRASES[family.name][
            synthetic_study.PHRASE_NAMES.index(template.name[-1])
        ]
        assert phrase in template.instruction, template.name
        rendered = template.render(
            {'words': longest, 'answer': longest, 'choices': [longest]}
        )
        # gin_configs/local/study/base.gin's feature lengths, with EOS.
        assert len(sentencepiece.encode(rendered.inputs)) < lengths['inputs']
        assert len(sentencepiece.encode(template.instruction)) < (
            lengths['prompt']
        )


def test_dev_examples_are_other_lists_of_the_evaluation_pool():
  for family in ('first', 'cipher_last'):
    dev = synthetic.SyntheticSource(
        family, 't', ('validation',), 256, synthetic_study.DEV_SALT
    )
    test = synthetic.SyntheticSource(family, 't', ('validation',), 256)
    dev_lists = {e['words'] for e in dev.examples('validation')}
    test_lists = {e['words'] for e in test.examples('validation')}
    assert all(synthetic.in_eval_pool(w.split()) for w in dev_lists)
    assert len(dev_lists & test_lists) < 5
  example = synthetic.make_example('cipher_last', 'validation', 0, 'dev')
  words = example['words'].split()
  assert example['answer'] == synthetic.CIPHER[words[-1]]
  assert len(set(example['choices'])) == 4
