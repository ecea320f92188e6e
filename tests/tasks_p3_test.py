"""Tests of the P3 reader and T0's mixtures over it (`tasks.p3`).

Every test builds a small P3-layout fixture: folders of TFRecord shards with
`info.<split>.json` and `stats.<split>.json` (one `_score_eval` folder per
held-out dataset, one folder in two shards) and a promptsource-style template
tree whose YAML uses promptsource's `!Template` tags. Token ids come from the
committed offline vocabulary; nothing is downloaded.
"""

import json
import logging
import os

import numpy as np
import pytest
import seqio
import tensorflow as tf

from spt_jax import eval_protocol
from spt_jax.model import feature_converters
from tasks import p3
from tasks import prompted
from tasks import template_jinja
from tasks import sources
from tasks import vocab

_VOCAB = vocab.synthetic_vocabulary()
_EOS = 1

# P3's feature descriptions (shape None: variable length).
_FEATURES = {
    'inputs': ('int32', [None]),
    'targets': ('int32', [None]),
    'inputs_pretokenized': ('string', []),
    'targets_pretokenized': ('string', []),
    'answer_choices': ('string', [None]),
}
_SCORE_FEATURES = {
    **_FEATURES,
    'idx': ('int32', [2]),
    'is_correct': ('bool', []),
    'weight': ('float32', []),
}
_CB_CHOICES = ('True', 'False', 'Neither')

# The promptsource fixture: (dataset, subset) -> [(name, input, choices,
# original_task)]. amazon_polarity has a fourth template that P3 lacks.
_PROMPTSOURCE = {
    ('super_glue', 'cb'): [
        (
            'GPT-3 style',
            '{{premise}} Question: {{hypothesis}} True, False, or ' 'Neither?',
            'True ||| False ||| Neither',
            True,
        ),
        (
            'can we infer',
            'Given "{{premise}}", may we conclude "{{hypothesis}}"?',
            'True ||| False ||| Neither',
            False,
        ),
    ],
    ('anli', None): [
        (
            'GPT-3 style',
            '{{premise}} Question: {{hypothesis}} True, False, or ' 'Neither?',
            'True ||| False ||| Neither',
            True,
        )
    ],
    ('super_glue', 'copa'): [
        (
            'best_option',
            'Which is the more likely {{question}}: {{choice1}} or '
            '{{choice2}}?',
            '{{choice1}} ||| {{choice2}}',
            True,
        )
    ],
    ('amazon_polarity', None): [
        (
            'Is this review',
            'Read the review: {{content}} Is it positive?',
            'negative ||| positive',
            True,
        ),
        (
            'flattering or not',
            'Is this flattering: {{content}}',
            'no ||| yes',
            True,
        ),
        (
            'would you buy',
            'Would you buy it after: {{content}}',
            'No ||| Yes',
            False,
        ),
        (
            'user satisfied',
            'Is the user satisfied? {{content}}',
            'No ||| Yes',
            True,
        ),
    ],
    ('imdb', None): [
        (
            'Movie Expressed Sentiment',
            '{{text}} The sentiment expressed is',
            'negative ||| positive',
            True,
        )
    ],
    ('hellaswag', None): [
        ('complete_first_then', 'Complete the description: {{ctx}}', None, True)
    ],
}

# P3 folder -> {split: (records written, `examples` claimed in stats)}.
# Rates read the stats, so a dataset can claim millions of examples.
_FOLDERS = {
    'amazon_polarity_Is_this_review': {'train': (2, 3_600_000)},
    'amazon_polarity_flattering_or_not': {'train': (2, 3_599_990)},
    'amazon_polarity_would_you_buy': {'train': (2, 3_600_000)},
    'imdb_Movie_Expressed_Sentiment': {'train': (5, 25_000)},  # Two shards.
    'hellaswag_complete_first_then': {'train': (2, 39_905)},
    'super_glue_copa_best_option': {'train': (2, 400)},
    'super_glue_copa_best_option_score_eval': {'validation': (2, 4)},
    'super_glue_cb_GPT_3_style_score_eval': {'validation': (2, 6)},
    'super_glue_cb_can_we_infer_score_eval': {'validation': (2, 6)},
    'anli_GPT_3_style_r1_score_eval': {'validation': (2, 6)},
    'gigaword_summarize_': {'train': (2, 3_803_957)},
}
_TWO_SHARDS = 'imdb_Movie_Expressed_Sentiment'


def _int_feature(values):
  return tf.train.Feature(
      int64_list=tf.train.Int64List(value=[int(v) for v in values])
  )


def _record(example):
  """A tf.train.Example as P3 stores it (int32 and bool as int64)."""
  feature = {}
  for name, value in example.items():
    if isinstance(value, (str, bytes)) or (
        isinstance(value, list) and value and isinstance(value[0], str)
    ):
      values = [value] if isinstance(value, str) else value
      feature[name] = tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[v.encode() for v in values])
      )
    elif isinstance(value, float):
      feature[name] = tf.train.Feature(
          float_list=tf.train.FloatList(value=[value])
      )
    else:
      feature[name] = _int_feature(
          value if isinstance(value, list) else [value]
      )
  return tf.train.Example(
      features=tf.train.Features(feature=feature)
  ).SerializeToString()


def _examples(folder, split, num):
  """The examples of a folder's split; score folders: one per choice."""
  examples = []
  for e in range(num):
    text = f'{folder} {split} example {e} about a red cat'
    if not folder.endswith(p3.datasets.SCORE_EVAL_SUFFIX):
      target = f'answer {e}'
      examples.append(
          {
              'inputs': _VOCAB.encode(text),
              'targets': _VOCAB.encode(target) + [_EOS],
              'inputs_pretokenized': text,
              'targets_pretokenized': target,
              'answer_choices': ['yes', 'no'],
          }
      )
      continue
    for c, choice in enumerate(_CB_CHOICES):
      examples.append(
          {
              'inputs': _VOCAB.encode(text),
              'targets': _VOCAB.encode(choice) + [_EOS],
              'inputs_pretokenized': text,
              'targets_pretokenized': choice,
              'answer_choices': list(_CB_CHOICES),
              'idx': [e, c],
              'is_correct': c == e % len(_CB_CHOICES),
              'weight': 1.0,
          }
      )
  return examples


def _write_folder(path, splits, num_shards=1):
  os.makedirs(path)
  name = os.path.basename(path)
  features = (
      _SCORE_FEATURES
      if name.endswith(p3.datasets.SCORE_EVAL_SUFFIX)
      else _FEATURES
  )
  for split, (num, claimed) in splits.items():
    examples = _examples(name, split, num)
    for shard in range(num_shards):
      file = os.path.join(
          path, f'{split}.tfrecord-{shard:05d}-of-{num_shards:05d}'
      )
      with tf.io.TFRecordWriter(file) as writer:
        for example in examples[shard::num_shards]:
          writer.write(_record(example))
    with open(os.path.join(path, f'info.{split}.json'), 'w') as f:
      json.dump(
          {
              'features': {
                  k: {'dtype': d, 'shape': s} for k, (d, s) in features.items()
              },
              'num_shards': num_shards,
              'seqio_version': '0.0.6',
          },
          f,
      )
    with open(os.path.join(path, f'stats.{split}.json'), 'w') as f:
      json.dump({'examples': claimed, 'inputs_tokens': 100}, f)


def _write_promptsource(root):
  for (dataset, subset), templates in _PROMPTSOURCE.items():
    folder = os.path.join(
        root,
        'promptsource',
        'templates',
        dataset,
        *([subset] if subset else []),
    )
    os.makedirs(folder)
    lines = [f'dataset: {dataset}']
    if subset:
      lines.append(f'subset: {subset}')
    lines.append('templates:')
    for i, (name, source, choices, original) in enumerate(templates):
      lines += [
          f'  id-{i}: !Template',
          *([f"    answer_choices: '{choices}'"] if choices else []),
          f'    id: id-{i}',
          f"    jinja: '{source} ||| {{{{ answer_choices[label] }}}}'",
          '    metadata: !TemplateMetadata',
          '      languages:',
          '      - en',
          f'      original_task: {str(original).lower()}',
          f'    name: {name}',
      ]
    with open(os.path.join(folder, 'templates.yaml'), 'w') as f:
      f.write('\n'.join(lines) + '\n')


@pytest.fixture(name='p3_dir')
def _p3_dir(tmp_path, monkeypatch):
  """The P3 fixture as Hugging Face lays it out (`<root>/data/<folder>`)."""
  monkeypatch.delenv(p3.datasets.P3_DIR_ENV, raising=False)
  monkeypatch.delenv(p3.datasets.PROMPTSOURCE_DIR_ENV, raising=False)
  root = tmp_path / 'P3'
  for folder, splits in _FOLDERS.items():
    _write_folder(
        str(root / 'data' / folder),
        splits,
        num_shards=2 if folder == _TWO_SHARDS else 1,
    )
  yield str(root)
  p3.mixtures.unregister()


@pytest.fixture(name='promptsource_dir')
def _promptsource_dir(tmp_path):
  root = tmp_path / 'promptsource_checkout'
  _write_promptsource(str(root))
  return str(root)


def _register(p3_dir, promptsource_dir=None):
  return p3.mixtures.register(p3_dir, promptsource_dir, vocabulary=_VOCAB)


def _records(task, split, **kwargs):
  return list(
      task.source.get_dataset(
          split, shuffle=False, **kwargs
      ).as_numpy_iterator()
  )


def test_a_task_per_folder(p3_dir, caplog):
  caplog.set_level(logging.INFO)
  registered = _register(p3_dir)

  assert sorted(registered.tasks) == sorted(_FOLDERS)
  assert registered.tasks['anli_GPT_3_style_r1_score_eval'] == (
      'spt_p3__anli_r1__GPT_3_style__score'
  )
  assert registered.tasks['super_glue_cb_can_we_infer_score_eval'] == (
      'spt_p3__super_glue_cb__can_we_infer__score'
  )
  assert registered.tasks['amazon_polarity_Is_this_review'] == (
      'spt_p3__amazon_polarity__Is_this_review'
  )
  assert registered.tasks['gigaword_summarize_'] == (
      'spt_p3__gigaword__summarize'
  )
  for folder, name in registered.tasks.items():
    task = seqio.get_mixture_or_task(name)
    assert set(task.splits) == set(_FOLDERS[folder])
    assert eval_protocol.is_score_task(name) == folder.endswith('_score_eval')
    eval_protocol.template_info(name)  # The evaluation's grouping reads it.
    assert set(task.output_features) == {'inputs', 'targets'}
  assert not registered.with_prompt
  assert 'no promptsource checkout' in caplog.text


def test_folder_names():
  prefixes = [d.prefix for d in p3.datasets.T0_DATASETS]
  assert p3.folders.parse_folder_name(
      'anli_GPT_3_style_r2_score_eval', prefixes
  ) == ('anli', 'anli_r2', 'GPT_3_style', True)
  assert p3.folders.parse_folder_name(
      'super_glue_wsc.fixed_GPT_3_Style', prefixes
  ) == ('super_glue_wsc.fixed', 'super_glue_wsc.fixed', 'GPT_3_Style', False)
  assert p3.folders.parse_folder_name('my_data_my_prompt', prefixes) == (
      'my_data_my_prompt',
      'my_data_my_prompt',
      '',
      False,
  )
  assert p3.datasets.p3_name(
      'ai2_arc', 'ARC-Challenge', 'pick the most "correct"'
  ) == ('ai2_arc_ARC_Challenge_pick_the_most_correct_')
  folder = p3.folders.P3Folder(
      '/p3/dbpedia_14_given_a_list__score_eval',
      'dbpedia_14',
      'dbpedia_14',
      'given_a_list_',
      True,
      ('validation',),
  )
  assert folder.task_name == 'spt_p3__dbpedia_14__given_a_list__score'
  unknown = p3.folders.P3Folder(
      '/p3/my_data', 'my_data', 'my_data', '', False, ('train',)
  )
  assert unknown.task_name == 'spt_p3__my_data__default'


def test_environment_variables_register_at_import(
    p3_dir, promptsource_dir, monkeypatch
):
  assert p3.mixtures.register_from_environment() is None
  monkeypatch.setenv(p3.datasets.P3_DIR_ENV, os.path.join(p3_dir, 'data'))
  monkeypatch.setenv(p3.datasets.PROMPTSOURCE_DIR_ENV, promptsource_dir)
  registered = p3.mixtures.register_from_environment()
  assert len(registered.tasks) == len(_FOLDERS) and registered.with_prompt
  task = seqio.get_mixture_or_task('spt_p3__imdb__Movie_Expressed_Sentiment')
  assert vocab.PROMPT in task.output_features


def test_reads_every_shard_as_info_describes(p3_dir):
  _register(p3_dir)
  task = seqio.get_mixture_or_task('spt_p3__imdb__Movie_Expressed_Sentiment')
  written = _examples(_TWO_SHARDS, 'train', 5)

  records = _records(task, 'train')

  assert len(task.source.list_shards('train')) == 2
  assert sorted(r['inputs_pretokenized'].decode() for r in records) == sorted(
      e['inputs_pretokenized'] for e in written
  )
  by_text = {e['inputs_pretokenized']: e for e in written}
  for record in records:
    expected = by_text[record['inputs_pretokenized'].decode()]
    assert record['inputs'].dtype == np.int32
    np.testing.assert_array_equal(record['inputs'], expected['inputs'])
    np.testing.assert_array_equal(record['targets'], expected['targets'])
    assert [c.decode() for c in record['answer_choices']] == ['yes', 'no']
  halves = [
      _records(task, 'train', shard_info=seqio.ShardInfo(i, 2))
      for i in range(2)
  ]
  assert sorted(len(h) for h in halves) == [2, 3]
  assert task.source.num_input_examples('train') == 25_000


def test_score_eval_records(p3_dir):
  _register(p3_dir)
  task = seqio.get_mixture_or_task('spt_p3__super_glue_cb__GPT_3_style__score')

  records = _records(task, 'validation')

  assert [tuple(r['idx']) for r in records] == [
      (e, c) for e in range(2) for c in range(3)
  ]
  assert records[0]['idx'].dtype == np.int32
  assert records[0]['is_correct'].dtype == np.bool_
  assert [bool(r['is_correct']) for r in records] == [
      True,
      False,
      False,
      False,
      True,
      False,
  ]
  assert records[0]['weight'] == pytest.approx(1.0)


def test_instructions_from_promptsource(p3_dir, promptsource_dir, caplog):
  caplog.set_level(logging.INFO)
  registered = _register(p3_dir, promptsource_dir)

  assert registered.with_prompt
  assert 'instruction from promptsource' in caplog.text
  assert 'gigaword_summarize_' in caplog.text  # No template in the checkout.
  task = seqio.get_mixture_or_task('spt_p3__super_glue_cb__GPT_3_style__score')
  examples = list(
      task.get_dataset(
          {'inputs': 64, 'targets': 8, 'prompt': 32},
          split='validation',
          shuffle=False,
      ).as_numpy_iterator()
  )
  instruction = 'Question: True, False, or Neither?'
  assert examples[0]['prompt_pretokenized'].decode() == instruction
  np.testing.assert_array_equal(
      examples[0]['prompt'], _VOCAB.encode(instruction) + [_EOS]
  )
  # Inputs and targets are P3's tokens, unchanged.
  np.testing.assert_array_equal(
      examples[0]['targets'], _VOCAB.encode('True') + [_EOS]
  )
  assert examples[0]['inputs'][-1] != _EOS
  templates = p3.promptsource.Promptsource(promptsource_dir).templates(
      'super_glue_cb'
  )
  assert templates['can_we_infer'].instruction == 'Given, may we conclude?'
  assert not templates['can_we_infer'].original_task


def test_examples_flow_into_model_features(p3_dir, promptsource_dir):
  lengths = {'inputs': 32, 'targets': 8}
  _register(p3_dir)
  task = seqio.get_mixture_or_task('spt_p3__amazon_polarity__Is_this_review')
  converter = feature_converters.SptEncDecFeatureConverter(pack=False)

  batch = next(
      converter(
          task.get_dataset(lengths, split='train', shuffle=False), lengths
      ).as_numpy_iterator()
  )

  assert batch['encoder_input_tokens'].shape == (32,)
  assert batch['decoder_target_tokens'].shape == (8,)
  assert batch['decoder_input_tokens'][0] == 0
  np.testing.assert_array_equal(
      batch['decoder_input_tokens'][1:], batch['decoder_target_tokens'][:-1]
  )
  assert (
      batch['decoder_loss_weights'].sum()
      == (batch['decoder_target_tokens'] > 0).sum()
  )

  _register(p3_dir, promptsource_dir)
  task = seqio.get_mixture_or_task('spt_p3__amazon_polarity__Is_this_review')
  converter = feature_converters.SptEncDecFeatureConverter(
      pack=False, prompt_length=8
  )
  ds = task.get_dataset({**lengths, 'prompt': 8}, split='train', shuffle=False)
  batch = next(converter(ds, lengths).as_numpy_iterator())

  prompt = _VOCAB.encode('Read the review: Is it positive?')[:7] + [_EOS]
  assert batch['encoder_input_tokens'].shape == (32 + 8,)
  np.testing.assert_array_equal(
      batch['encoder_input_tokens'][32 : 32 + len(prompt)], prompt
  )


def _rates(mixture_name):
  mixture = seqio.get_mixture_or_task(mixture_name)
  return {
      t.name.split('__')[1] + '/' + t.name.split('__')[2]: mixture.get_rate(t)
      for t in mixture.tasks
  }


def test_t0_training_mixtures_and_rates(p3_dir, promptsource_dir):
  registered = _register(p3_dir)
  # T0's rule, worked by hand on the fixture's stats: a dataset above 500,000
  # examples gives each template 500,000 // templates, else its size.
  # amazon_polarity: 3.6M examples, 3 templates in P3 -> 166,666 each.
  # imdb: 25,000 -> 25,000. gigaword_summarize_ is excluded, as in T0.
  assert _rates(p3.datasets.T0_TRAIN_MIXTURE) == {
      'amazon_polarity/Is_this_review': 166_666,
      'amazon_polarity/flattering_or_not': 166_666,
      'amazon_polarity/would_you_buy': 166_666,
      'imdb/Movie_Expressed_Sentiment': 25_000,
  }
  # T0+ adds HellaSwag (39,905), T0++ adds COPA (400).
  assert _rates(p3.datasets.T0_PLUS_TRAIN_MIXTURE) == {
      **_rates(p3.datasets.T0_TRAIN_MIXTURE),
      'hellaswag/complete_first_then': 39_905,
  }
  assert _rates(p3.datasets.T0_PLUS_PLUS_TRAIN_MIXTURE) == {
      **_rates(p3.datasets.T0_PLUS_TRAIN_MIXTURE),
      'super_glue_copa/best_option': 400,
  }
  assert set(registered.mixtures) == {
      p3.datasets.T0_TRAIN_MIXTURE,
      p3.datasets.T0_PLUS_TRAIN_MIXTURE,
      p3.datasets.T0_PLUS_PLUS_TRAIN_MIXTURE,
      p3.datasets.HELDOUT_MIXTURE,
  }

  # With promptsource, T counts its 4 amazon_polarity templates, as T0 did.
  _register(p3_dir, promptsource_dir)
  rates = _rates(p3.datasets.T0_TRAIN_MIXTURE)
  assert rates['amazon_polarity/Is_this_review'] == 125_000
  assert rates['imdb/Movie_Expressed_Sentiment'] == 25_000


def test_rates_are_read_lazily(p3_dir):
  stats = os.path.join(
      p3_dir, 'data', 'imdb_Movie_Expressed_Sentiment', 'stats.train.json'
  )
  os.remove(stats)
  _register(p3_dir)  # Registration reads no data.
  mixture = seqio.get_mixture_or_task(p3.datasets.T0_TRAIN_MIXTURE)
  task = seqio.get_mixture_or_task('spt_p3__imdb__Movie_Expressed_Sentiment')
  with pytest.raises(
      sources.DataNotFoundError,
      match='imdb_Movie_Expressed_Sentiment has no stats',
  ):
    mixture.get_rate(task)


def test_heldout_mixture_rank_classification(p3_dir, promptsource_dir):
  registered = _register(p3_dir)
  # Without promptsource: every score folder of the held-out datasets.
  assert sorted(registered.mixtures[p3.datasets.HELDOUT_MIXTURE]) == [
      'spt_p3__anli_r1__GPT_3_style__score',
      'spt_p3__super_glue_cb__GPT_3_style__score',
      'spt_p3__super_glue_cb__can_we_infer__score',
      'spt_p3__super_glue_copa__best_option__score',
  ]
  registered = _register(p3_dir, promptsource_dir)
  # With it: T0's original-task templates only.
  assert sorted(registered.mixtures[p3.datasets.HELDOUT_MIXTURE]) == [
      'spt_p3__anli_r1__GPT_3_style__score',
      'spt_p3__super_glue_cb__GPT_3_style__score',
      'spt_p3__super_glue_copa__best_option__score',
  ]

  results = {}
  for name, right in (
      ('spt_p3__super_glue_cb__GPT_3_style__score', 2),
      ('spt_p3__super_glue_cb__can_we_infer__score', 1),
      ('spt_p3__anli_r1__GPT_3_style__score', 0),
  ):
    task = seqio.get_mixture_or_task(name)
    examples = list(
        task.get_dataset(
            None, split='validation', shuffle=False
        ).as_numpy_iterator()
    )
    targets = [
        task.postprocess_fn(
            ex['targets_pretokenized'].decode(), example=ex, is_target=True
        )
        for ex in examples
    ]
    # Fake scores: the correct choice scores best for the first `right`
    # examples, a wrong one for the others.
    scores = [
        float(is_correct == (example < right))
        for example, _, is_correct in targets
    ]
    task_results = {}
    for metric_fn in task.metric_fns:
      task_results.update(metric_fn(targets, scores))
    results[name] = task_results
  assert results['spt_p3__super_glue_cb__GPT_3_style__score'] == {
      'accuracy': 100.0
  }
  assert results['spt_p3__super_glue_cb__can_we_infer__score'] == {
      'accuracy': 50.0
  }
  summary = eval_protocol.aggregate_over_templates(results)
  assert summary['super_glue_cb']['mean'] == 75.0
  assert summary['super_glue_cb']['median'] == 75.0
  assert summary['super_glue_cb']['per_template'] == {
      'GPT_3_style': 100.0,
      'can_we_infer': 50.0,
  }
  assert summary['anli_r1']['mean'] == 0.0


def test_missing_p3_dir(tmp_path, monkeypatch):
  monkeypatch.delenv(p3.datasets.P3_DIR_ENV, raising=False)
  with pytest.raises(
      p3.datasets.P3ConfigError, match=r'\$SPT_P3_DIR is not set'
  ):
    p3.mixtures.register(vocabulary=_VOCAB)
  missing = str(tmp_path / 'nowhere')
  with pytest.raises(
      p3.datasets.P3ConfigError, match=f'{missing}.*does not exist'
  ):
    p3.mixtures.register(missing, vocabulary=_VOCAB)
  with pytest.raises(p3.datasets.P3ConfigError, match='No P3 folder under'):
    p3.mixtures.register(str(tmp_path), vocabulary=_VOCAB)
  with pytest.raises(
      p3.datasets.P3ConfigError, match='No promptsource template'
  ):
    p3.mixtures.register(str(tmp_path), str(tmp_path), vocabulary=_VOCAB)


def test_folder_without_info_file(p3_dir):
  folder = os.path.join(p3_dir, 'data', 'super_glue_cb_GPT_3_style_score_eval')
  os.remove(os.path.join(folder, 'info.validation.json'))
  _register(p3_dir)
  task = seqio.get_mixture_or_task('spt_p3__super_glue_cb__GPT_3_style__score')
  with pytest.raises(
      sources.DataNotFoundError,
      match=f'P3 folder {folder} has no info.validation.json',
  ):
    task.get_dataset(None, split='validation')


def test_missing_shard(p3_dir):
  folder = os.path.join(p3_dir, 'data', _TWO_SHARDS)
  os.remove(os.path.join(folder, 'train.tfrecord-00001-of-00002'))
  _register(p3_dir)
  task = seqio.get_mixture_or_task('spt_p3__imdb__Movie_Expressed_Sentiment')
  with pytest.raises(
      sources.DataNotFoundError,
      match=f'P3 folder {folder} lacks 1 of the 2 shards',
  ):
    task.get_dataset(None, split='train')


def test_git_lfs_pointer(p3_dir):
  folder = os.path.join(p3_dir, 'data', _TWO_SHARDS)
  with open(os.path.join(folder, 'train.tfrecord-00000-of-00002'), 'w') as f:
    f.write(
        'version https://git-lfs.github.com/spec/v1\n'
        'oid sha256:0123\nsize 1234\n'
    )
  _register(p3_dir)
  task = seqio.get_mixture_or_task('spt_p3__imdb__Movie_Expressed_Sentiment')
  with pytest.raises(
      sources.DataNotFoundError,
      match=f'P3 folder {folder}: .* is a git-lfs pointer',
  ):
    task.get_dataset(None, split='train')


def _damage_a_byte(shard):
  data = bytearray(open(shard, 'rb').read())
  data[len(data) // 2] ^= 0xFF
  with open(shard, 'wb') as f:
    f.write(bytes(data))


def _truncate(shard):
  data = open(shard, 'rb').read()
  with open(shard, 'wb') as f:
    f.write(data[:-7])


def _write_a_non_example(shard):
  with tf.io.TFRecordWriter(shard) as writer:
    writer.write(b'\xff\xfe not a protocol buffer')


def _write_a_record_without_a_feature(shard):
  example = _examples(_TWO_SHARDS, 'train', 1)[0]
  del example['inputs_pretokenized']
  with tf.io.TFRecordWriter(shard) as writer:
    writer.write(_record(example))


@pytest.mark.parametrize(
    'corrupt',
    [
        _damage_a_byte,
        _truncate,
        _write_a_non_example,
        _write_a_record_without_a_feature,
    ],
)
def test_corrupt_record_names_the_folder(p3_dir, corrupt):
  folder = os.path.join(p3_dir, 'data', _TWO_SHARDS)
  corrupt(os.path.join(folder, 'train.tfrecord-00001-of-00002'))
  _register(p3_dir)
  task = seqio.get_mixture_or_task('spt_p3__imdb__Movie_Expressed_Sentiment')
  with pytest.raises(tf.errors.InvalidArgumentError) as error:
    list(task.get_dataset(None, split='train', shuffle=False))
  assert f'P3 folder {folder}: shard has a corrupt record' in str(error.value)
  assert 'train.tfrecord-00001-of-00002' in str(error.value)


# ------------- promptsource's Jinja, as promptsource writes it --------------

# Templates written for these tests in promptsource's style (its helpers, a
# `|||` inside an `{% if %}` block, ...): name -> (jinja, answer_choices,
# the instruction derived, how).
_STYLE_TEMPLATES = {
    'zip pairs': (
        '{% for w, n in zip(["one", "two"], ["1", "2"]) %}{{ w }}={{ n }} '
        '{% endfor %}Pair {{ left }} with {{ right }}. ||| {{ target }}',
        None,
        'one=1 two=2 Pair with.',
        p3.promptsource.DERIVED,
    ),
    'choice of verb': (
        '{{ ["Summarize", "Shorten", "Condense"] | choice }} the note: '
        '{{ note }} ||| {{ summary }}',
        None,
        'Summarize the note:',
        p3.promptsource.DERIVED,
    ),
    'most frequent tag': (
        'Usual tag: {{ ["red", "blue", "blue"] | most_frequent | join }}. '
        'Tag {{ text }} as the voters did. ||| '
        '{{ votes | most_frequent | first }}',
        None,
        'Usual tag: blue. Tag as the voters did.',
        p3.promptsource.DERIVED,
    ),
    'separator inside if': (
        '{% if label == 1 %}Ask something that {{ sentence }} answers. '
        '|||\n{{ question }}\n{% endif %}',
        None,
        'Ask something that answers.',
        p3.promptsource.DERIVED,
    ),
    'comparison on a field': (
        '{% if stars > 3 %}Why did the reviewer like it?{% else %}Why did '
        'the reviewer dislike it?{% endif %} {{ review }} ||| {{ reason }}',
        None,
        'Why did the reviewer like it?',
        p3.promptsource.DERIVED,
    ),
    'last choice': (
        'Answer {{ answer_choices[0] }} or {{ answer_choices[-1] }}: is '
        '"{{ claim }}" true? ||| {{ answer_choices[label] }}',
        'no ||| yes',
        'Answer no or yes: is true?',
        p3.promptsource.DERIVED,
    ),
    # Looks up a choice it does not have: raises in both halves, so the
    # literal text outside Jinja blocks is used.
    'no answer': (
        'Reply {{ answer_choices.index("maybe") }} about {{ claim }} now. '
        '||| {{ answer_choices[label] }}',
        'no ||| yes',
        'Reply about now.',
        p3.promptsource.LITERAL,
    ),
    # Its text is guarded by a list the template builds from its fields,
    # empty when they are blank: also the literal text.
    'built list': (
        '{% set kept = [] %}{% for item in items %}{% if item %}'
        '{{ kept.append(item) | default("", True) }}{% endif %}{% endfor %}'
        '{% if kept %}List what is kept: {{ kept | join(", ") }} ||| '
        '{{ kept | first }}{% endif %}',
        None,
        'List what is kept:',
        p3.promptsource.LITERAL,
    ),
    # Nothing but fields: no instruction.
    'just the question': (
        '{{ question }} ||| {{ answer }}',
        None,
        '',
        p3.promptsource.DERIVED,
    ),
}
_STYLE_DATASET = 'my_style_qa'


def _write_style_templates(root):
  """A promptsource checkout with `_STYLE_TEMPLATES`; returns its file."""
  folder = os.path.join(root, 'promptsource', 'templates', _STYLE_DATASET)
  os.makedirs(folder)
  lines = [f'dataset: {_STYLE_DATASET}', 'templates:']
  for i, (name, (source, choices, _, _)) in enumerate(_STYLE_TEMPLATES.items()):
    lines += [
        f'  style-{i}: !Template',
        f'    answer_choices: {json.dumps(choices) if choices else "null"}',
        f'    id: style-{i}',
        f'    jinja: {json.dumps(source)}',  # JSON strings are YAML too.
        '    metadata: !TemplateMetadata',
        '      original_task: true',
        f'    name: {name}',
        "    reference: ''",
    ]
  path = os.path.join(folder, 'templates.yaml')
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return path


def test_reads_promptsource_jinja_as_promptsource_writes_it(tmp_path, caplog):
  caplog.set_level(logging.WARNING)
  path = _write_style_templates(str(tmp_path))

  templates = p3.promptsource.read_promptsource_yaml(path)

  assert [t.name for t in templates] == list(_STYLE_TEMPLATES)
  for template in templates:
    _, _, instruction, how = _STYLE_TEMPLATES[template.name]
    assert template.derivation == (instruction, how), template.name
    assert template.instruction == instruction
    assert template.file == path
  # Each fallback is logged once, naming the file and the template.
  fallbacks = [
      r.getMessage()
      for r in caplog.records
      if 'outside Jinja blocks' in r.getMessage()
  ]
  assert len(fallbacks) == 2
  assert f"{path}, template 'no answer'" in fallbacks[0]
  assert "ValueError: 'maybe' is not in list" in fallbacks[0]
  assert f"{path}, template 'built list'" in fallbacks[1]
  assert 'its input is empty' in fallbacks[1]


def test_an_error_while_rendering_is_a_logged_fallback(
    tmp_path, monkeypatch, caplog
):
  caplog.set_level(logging.WARNING)
  path = _write_style_templates(str(tmp_path))

  def no_answer(self, index):
    raise template_jinja.NoAnswer(index)

  # Fixed answer choices that say "no answer" whatever the index.
  monkeypatch.setattr(template_jinja.BlankChoices, '__getitem__', no_answer)
  template = {t.name: t for t in p3.promptsource.read_promptsource_yaml(path)}[
      'last choice'
  ]

  assert template.derivation == ('Answer or: is true?', p3.promptsource.LITERAL)
  assert f"{path}, template 'last choice'" in caplog.text
  assert 'NoAnswer' in caplog.text


def test_a_template_without_instruction_pools_over_its_input(
    tmp_path, monkeypatch, caplog
):
  monkeypatch.delenv(p3.datasets.P3_DIR_ENV, raising=False)
  caplog.set_level(logging.INFO)
  checkout = tmp_path / 'checkout'
  _write_style_templates(str(checkout))
  p3_dir = tmp_path / 'P3'
  for template in ('just_the_question', 'no_answer', 'choice_of_verb'):
    _write_folder(
        str(p3_dir / f'{_STYLE_DATASET}_{template}'), {'train': (2, 2)}
    )
  try:
    registered = _register(str(p3_dir), str(checkout))

    question = f'spt_p3__{_STYLE_DATASET}__just_the_question'
    assert registered.instruction_sources == {
        f'spt_p3__{_STYLE_DATASET}__choice_of_verb': p3.promptsource.DERIVED,
        question: p3.promptsource.INPUTS,
        f'spt_p3__{_STYLE_DATASET}__no_answer': p3.promptsource.LITERAL,
    }
    assert registered.prompt_from_inputs == (question,)
    assert 'have no instruction' in caplog.text
    assert f"['{question}']" in caplog.text
    assert "1 derived, 1 from their template's literal text" in caplog.text

    lengths = {'inputs': 32, 'targets': 8, 'prompt': 6}
    examples = list(
        seqio.get_mixture_or_task(question)
        .get_dataset(lengths, split='train', shuffle=False)
        .as_numpy_iterator()
    )
    for example in examples:
      # The prompt is the start of the input, never an empty query.
      np.testing.assert_array_equal(
          example['prompt'], list(example['inputs'][:5]) + [_EOS]
      )
      assert example['prompt_pretokenized'] == example['inputs_pretokenized']
    verb = next(
        seqio.get_mixture_or_task(f'spt_p3__{_STYLE_DATASET}__choice_of_verb')
        .get_dataset(lengths, split='train', shuffle=False)
        .as_numpy_iterator()
    )
    assert verb['prompt_pretokenized'].decode() == 'Summarize the note:'
  finally:
    p3.mixtures.unregister()


def test_mixing_rate_follows_t0_code():
  # T0 (t-zero, t0/seqio_tasks/tasks.py): N if N <= 500,000, else
  # 500,000 // T. Values worked by hand.
  assert prompted.mixing_rate(363_846, 3) == 363_846  # QQP keeps 1.09M in all.
  assert prompted.mixing_rate(500_000, 7) == 500_000
  assert prompted.mixing_rate(500_001, 7) == 71_428
  assert prompted.mixing_rate(3_803_957, 3) == 166_666
