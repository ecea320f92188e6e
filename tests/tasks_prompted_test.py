"""T0's mixing rates, counted lazily from the data; one task per template."""

import seqio

from tasks import prompted
from tasks import sources
from tasks import vocab


def test_mixing_rate_caps_large_datasets_per_template():
  assert prompted.mixing_rate(1_000, 4) == 1_000
  assert prompted.mixing_rate(prompted.MAX_EXAMPLES_PER_DATASET, 4) == 500_000
  assert prompted.mixing_rate(600_000, 4) == 125_000
  assert prompted.mixing_rate(11, 2, cap=10) == 5


def _local_source(tmp_path, lines):
  (tmp_path / 'toy').mkdir()
  (tmp_path / 'toy' / 'train.jsonl').write_text(
      ''.join('{"q": "a b", "label": %d}\n' % (i % 2) for i in range(lines))
      + '\n'  # A blank line is not an example.
  )
  return sources.LocalSource(
      'toy',
      {'q': 'string', 'label': 'int'},
      ('train',),
      "'toy'",
      data_dir=str(tmp_path),
  )


def test_lazy_mixing_rate_counts_the_data_once_when_asked(
    tmp_path, monkeypatch
):
  source = _local_source(tmp_path, 7)
  assert prompted.count_examples(source) == 7
  counted = []
  count = prompted.count_examples
  monkeypatch.setattr(
      prompted, 'count_examples', lambda *a: counted.append(a) or count(*a)
  )
  rate = prompted.lazy_mixing_rate(source, num_templates=3)
  assert not counted  # Nothing is read at registration.
  assert rate(None) == 7 and rate(None) == 7
  assert len(counted) == 1


def test_register_adds_a_task_per_template(tmp_path):
  templates = tmp_path / 'toy_templates.json'
  templates.write_text(
      '{"templates": ['
      '{"name": "ask", "jinja": "{{ q }} ? ||| {{ answer_choices[label] }}",'
      ' "answer_choices": "no ||| yes"},'
      '{"name": "say", "jinja": "say {{ q }} ||| {{ answer_choices[label] }}",'
      ' "answer_choices": "no ||| yes"}]}'
  )
  dataset = prompted.PromptedDataset(
      'toy', _local_source(tmp_path, 2), str(templates)
  )
  features = vocab.output_features(vocab.synthetic_vocabulary())
  names = prompted.register('prompted_test', dataset, features)
  scored = prompted.register('prompted_test', dataset, features, score=True)
  assert names == ['prompted_test__toy__ask', 'prompted_test__toy__say']
  assert scored == [n + '__score' for n in names]
  task = seqio.get_mixture_or_task(names[0])
  assert task.source is dataset.source
  assert set(task.output_features) == set(features)
  for name in names + scored:
    seqio.TaskRegistry.remove(name)
