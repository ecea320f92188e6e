"""Tests of the data sources: local exports and missing-data errors."""

import json

import numpy as np
import pytest
import seqio

import tasks  # pylint: disable=unused-import
from spt_jax import eval_protocol
from tasks import show
from tasks import sources
from tasks import t0

_FIELDS = {
    'question': 'string',
    'choices.text': 'string_list',
    'choices.score': 'float_list',
    'label': 'int',
    'hard': 'bool',
}
_RECORDS = [
    {
        'question': 'Which is red?',
        'label': 1,
        'hard': True,
        'choices': {'text': ['sky', 'apple'], 'score': [0.5, 1.0]},
    },
    {
        'question': 'Ünïcode?',
        'label': 0,
        'hard': False,
        'choices': {'text': [], 'score': []},
    },
]


def _source(tmp_path, **kwargs):
  return sources.LocalSource(
      'toy', _FIELDS, ['train'], "'toy'", data_dir=str(tmp_path), **kwargs
  )


def _check_records(examples):
  assert len(examples) == 2
  assert examples[0]['question'] == b'Which is red?'
  np.testing.assert_array_equal(
      examples[0]['choices']['text'], [b'sky', b'apple']
  )
  np.testing.assert_allclose(examples[0]['choices']['score'], [0.5, 1.0])
  assert examples[0]['label'] == 1 and examples[0]['hard']
  assert examples[1]['question'].decode() == 'Ünïcode?'
  assert examples[1]['choices']['text'].shape == (0,)
  assert not examples[1]['hard']


def test_reads_json_lines(tmp_path):
  (tmp_path / 'toy').mkdir()
  with open(tmp_path / 'toy' / 'train.jsonl', 'w') as f:
    for record in _RECORDS:
      f.write(json.dumps({**record, 'extra': {'x': 1}}) + '\n')
    f.write('\n')
  source = _source(tmp_path)

  ds = source.get_dataset('train', shuffle=False)

  _check_records(list(ds.as_numpy_iterator()))
  assert ds.element_spec['choices']['text'].shape.as_list() == [None]
  assert source.list_shards('train') == [str(tmp_path / 'toy' / 'train.jsonl')]


@pytest.mark.parametrize(
    'line, problem',
    [
        (
            '{"question": "q", "label": 1, "hard": true, "choices": {"text": []}}',
            "field 'choices.score' \\(float_list\\) is missing",
        ),
        (
            '{"question": "q", "label": null, "hard": true, '
            '"choices": {"text": [], "score": []}}',
            "field 'label' \\(int\\) is missing or null",
        ),
        (
            '{"question": 3, "label": 1, "hard": true, '
            '"choices": {"text": [], "score": []}}',
            "field 'question' should be string, got 3",
        ),
        (
            '{"question": "q", "label": "1", "hard": true, '
            '"choices": {"text": [], "score": []}}',
            "field 'label' should be int",
        ),
        (
            '{"question": "q", "label": true, "hard": true, '
            '"choices": {"text": [], "score": []}}',
            "field 'label' should be int",
        ),
        (
            '{"question": "q", "label": 1, "hard": true, '
            '"choices": {"text": "sky", "score": []}}',
            "field 'choices.text' should be string_list",
        ),
        ('{"question": "q", ', 'not valid JSON'),
    ],
)
def test_bad_json_records_name_the_file_line_and_field(tmp_path, line, problem):
  (tmp_path / 'toy').mkdir()
  path = tmp_path / 'toy' / 'train.jsonl'
  path.write_text(json.dumps(_RECORDS[0]) + '\n\n' + line + '\n')

  with pytest.raises(
      sources.InvalidRecordError, match=f'{path}, line 3: .*{problem}'
  ):
    _source(tmp_path).get_dataset('train')


def test_reads_sharded_tfrecords(tmp_path):
  (tmp_path / 'toy').mkdir()
  for shard, record in enumerate(_RECORDS):
    sources.write_tfrecord(
        str(tmp_path / 'toy' / f'train.tfrecord-0000{shard}-of-00002'),
        [record],
        _FIELDS,
    )
  source = _source(tmp_path)

  _check_records(
      list(source.get_dataset('train', shuffle=False).as_numpy_iterator())
  )
  assert len(source.list_shards('train')) == 2
  second = list(
      source.get_dataset(
          'train', shuffle=False, shard_info=seqio.ShardInfo(1, 2)
      ).as_numpy_iterator()
  )
  assert [e['question'] for e in second] == ['Ünïcode?'.encode()]


def test_missing_local_export_names_the_dataset_and_the_fix(
    tmp_path, monkeypatch
):
  monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
  task = seqio.get_mixture_or_task(
      eval_protocol.task_name(t0.COLLECTION, 'dream', 'read_conversation')
  )

  with pytest.raises(sources.DataNotFoundError) as error:
    task.get_dataset(None, split='train')

  message = str(error.value)
  assert "Dataset 'dream' (split 'train') not found" in message
  assert '$SPT_DATA_DIR is not set' in message
  assert "datasets.load_dataset('dream', split='train')" in message
  assert 'dialogue (string_list)' in message

  monkeypatch.setenv(sources.DATA_DIR_ENV, str(tmp_path))
  with pytest.raises(sources.DataNotFoundError, match=str(tmp_path / 'dream')):
    task.get_dataset(None, split='train')


def test_unprepared_tfds_dataset_names_the_dataset_and_the_fix(tmp_path):
  source = sources.TfdsSource(
      'super_glue/cb:1.0.2', {'train': 'train'}, data_dir=str(tmp_path)
  )

  with pytest.raises(sources.DataNotFoundError) as error:
    source.get_dataset('train')

  message = str(error.value)
  assert "TFDS dataset 'super_glue/cb:1.0.2' (split 'train')" in message
  assert f'tfds build super_glue/cb --data_dir={tmp_path}' in message
  assert error.value.__cause__ is None and error.value.__suppress_context__
  assert source.num_input_examples('train') is None


def test_manual_download_datasets_say_so(tmp_path):
  source = sources.TfdsSource(
      'story_cloze/2016:1.0.0',
      {'validation': 'validation'},
      data_dir=str(tmp_path),
      manual_download=True,
  )
  with pytest.raises(sources.DataNotFoundError, match='manual_dir'):
    source.get_dataset('validation')


def test_show_reports_missing_data_without_a_traceback(capsys, monkeypatch):
  monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
  name = eval_protocol.task_name(t0.COLLECTION, 'sciq', 'quiz')

  assert show.main([name]) == 1

  err = capsys.readouterr().err
  assert err.startswith("error: Dataset 'sciq' (split 'train') not found")
  assert 'Traceback' not in err


def test_unknown_field_type_is_rejected():
  with pytest.raises(ValueError, match='Unknown type'):
    sources.LocalSource('x', {'a': 'str'}, ['train'], "'x'")
