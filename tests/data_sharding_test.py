"""Each host reads its own shard: together the hosts read every example once per epoch.

`train_data.get_train_dataset` is what every host of a multi-host run calls, with
its `seqio.ShardInfo` (`train_data.host_shard`). Here it is called for every shard
of a simulated cluster in one process, for each kind of source: the
synthetic tasks (sharded by example index), a JSON-lines export (one file:
fewer files than hosts), a TFRecord export and P3 folders with more files
than hosts and with fewer.
"""

import collections
import functools
import json

import pytest
import seqio
import tensorflow as tf

from spt_jax.local import train_data
from spt_jax.model import feature_converters
from tasks import p3
from tasks import prompted
from tasks import sources
from tasks import vocab
from tests import tasks_p3_test
from tests import tasks_test_utils

LENGTHS = {'inputs': 48, 'targets': 8, 'prompt': 16}
SEED = 3


def _epoch(name, shard_info, prompt_length, in_memory=False, seed=SEED):
  """The shard's first epoch, as a multiset of (encoder, target) token rows."""
  converter = functools.partial(
      feature_converters.SptEncDecFeatureConverter, prompt_length=prompt_length
  )
  batches = train_data.get_train_dataset(
      name,
      LENGTHS,
      batch_size=shard_info.num_shards,
      feature_converter_cls=converter,
      seed=seed,
      shard_info=shard_info,
      num_epochs=1,
      in_memory=in_memory,
  )
  return collections.Counter(
      (
          tuple(b['encoder_input_tokens'][0]),
          tuple(b['decoder_target_tokens'][0]),
      )
      for b in batches.as_numpy_iterator()
  )


def _check_hosts_partition_the_data(name, num_hosts, prompt_length=16):
  everything = _epoch(name, seqio.ShardInfo(0, 1), prompt_length)
  shards = [
      _epoch(name, seqio.ShardInfo(i, num_hosts), prompt_length)
      for i in range(num_hosts)
  ]
  assert all(shards), [sum(s.values()) for s in shards]
  # Each row as often over the shards as in the whole split: no example is
  # lost or read twice. (Rows can repeat: distinct lists of words may
  # tokenize alike once cut to their length.)
  assert sum(shards, collections.Counter()) == everything
  unique = {row for row, count in everything.items() if count == 1}
  for i in range(num_hosts):
    for j in range(i + 1, num_hosts):
      assert not unique & set(shards[i]) & set(shards[j]), (i, j)
  return [sum(s.values()) for s in shards]


def test_synthetic_task():
  sizes = _check_hosts_partition_the_data(tasks_test_utils.SHORT_RUN_TASK, 2)
  assert sizes == [1024, 1024]


def _first_rows(name, seed, in_memory, rows=64):
  converter = functools.partial(
      feature_converters.SptEncDecFeatureConverter, prompt_length=16
  )
  batches = train_data.get_train_dataset(
      name,
      LENGTHS,
      rows,
      converter,
      seed,
      seqio.ShardInfo(0, 1),
      in_memory=in_memory,
  )
  return next(batches.as_numpy_iterator())['encoder_input_tokens']


@pytest.fixture
def two_task_mixture():
  name = 'in_memory_mixture'
  seqio.MixtureRegistry.add(
      name,
      [
          (tasks_test_utils.SHORT_RUN_TASK, 3.0),
          ('spt_synthetic__last__give_last', 1.0),
      ],
  )
  yield name
  seqio.MixtureRegistry.remove(name)


def test_in_memory_mixture_reads_seqios_examples_at_its_rates(
    two_task_mixture,
):
  """An epoch is the tasks' examples as seqio reads them, each host its own
  share; a later run reads them from memory; the seed orders them; rates
  are seqio's."""
  name = two_task_mixture
  tasks = [t.name for t in seqio.get_mixture_or_task(name).tasks]
  for shard in (seqio.ShardInfo(0, 1), seqio.ShardInfo(1, 2)):
    assert _epoch(name, shard, 16, in_memory=True) == sum(
        (_epoch(t, shard, 16) for t in tasks), collections.Counter()
    )
  cached = len(train_data._IN_MEMORY)
  a, b = _first_rows(name, 0, True), _first_rows(name, 1, True)
  assert len(train_data._IN_MEMORY) == cached  # Read once per process.
  assert (a == _first_rows(name, 0, True)).all() and (a != b).any()
  # 3 : 1 by rate: the instruction's "first" or "last" at the row's start.
  vocabulary = vocab.synthetic_vocabulary()
  texts = [
      vocabulary.decode(r.tolist()) for r in _first_rows(name, 2, True, 512)
  ]
  share = sum('first' in t for t in texts) / len(texts)
  assert 0.68 < share < 0.82, share


def test_train_data_config_reads_what_it_names(two_task_mixture):
  """`TrainDataConfig.dataset`, the local runner's data, is
  `get_train_dataset` of its fields, repeated."""
  converter = functools.partial(
      feature_converters.SptEncDecFeatureConverter, prompt_length=16
  )
  config = train_data.TrainDataConfig(
      two_task_mixture, LENGTHS, batch_size=4, in_memory=True
  )
  batches = config.dataset(converter, SEED).take(3).as_numpy_iterator()
  expected = train_data.get_train_dataset(
      two_task_mixture, LENGTHS, 4, converter, SEED, in_memory=True
  )
  for got, want in zip(batches, expected.as_numpy_iterator()):
    assert got.keys() == want.keys()
    for key in got:
      assert (got[key] == want[key]).all(), key
    assert got['encoder_input_tokens'].shape[0] == 4


def _register_local(tmp_path, name, write):
  """A prompted task over a LocalSource export that `write(folder)` makes."""
  folder = tmp_path / 'data' / name
  folder.mkdir(parents=True)
  write(folder)
  templates = tmp_path / f'{name}.json'
  templates.write_text(
      json.dumps(
          {
              'dataset': name,
              'templates': [
                  {
                      'name': 't',
                      'jinja': 'Is {{ number }} even? ||| {{ answer_choices[label] }}',
                      'answer_choices': 'no ||| yes',
                  }
              ],
          }
      )
  )
  source = sources.LocalSource(
      name,
      {'number': 'int', 'label': 'int'},
      ('train',),
      f"'{name}'",
      data_dir=str(tmp_path / 'data'),
  )
  [task] = prompted.register(
      'sharding',
      prompted.PromptedDataset(name, source, str(templates)),
      vocab.output_features(vocab.synthetic_vocabulary()),
  )
  return task


def _records(n):
  return [{'number': i, 'label': i % 2} for i in range(n)]


@pytest.fixture
def unregister():
  names = []
  yield names.append
  for name in names:
    seqio.TaskRegistry.remove(name)


def test_json_lines_export_one_file_for_two_hosts(tmp_path, unregister):
  def write(folder):
    (folder / 'train.jsonl').write_text(
        ''.join(json.dumps(r) + '\n' for r in _records(21))
    )

  task = _register_local(tmp_path, 'sharding_jsonl', write)
  unregister(task)
  assert _check_hosts_partition_the_data(task, 2) == [11, 10]


def test_tfrecord_export_three_files_for_two_hosts(tmp_path, unregister):
  def write(folder):
    records = _records(21)
    for shard in range(3):
      with tf.io.TFRecordWriter(str(folder / f'train.tfrecord-{shard}')) as w:
        for r in records[shard::3]:
          w.write(
              tf.train.Example(
                  features=tf.train.Features(
                      feature={
                          k: tf.train.Feature(
                              int64_list=tf.train.Int64List(value=[v])
                          )
                          for k, v in r.items()
                      }
                  )
              ).SerializeToString()
          )

  task = _register_local(tmp_path, 'sharding_tfrecord', write)
  unregister(task)
  # Files 0 and 2 on host 0, file 1 on host 1.
  assert _check_hosts_partition_the_data(task, 2) == [14, 7]


@pytest.fixture(name='p3_tasks')
def _p3_tasks(tmp_path, monkeypatch):
  """Two P3 folders of 12 training examples: in 3 shards, and in 2."""
  monkeypatch.delenv(p3.datasets.P3_DIR_ENV, raising=False)
  monkeypatch.delenv(p3.datasets.PROMPTSOURCE_DIR_ENV, raising=False)
  root = tmp_path / 'P3' / 'data'
  for folder, shards in (
      ('imdb_Movie_Expressed_Sentiment', 3),
      ('super_glue_copa_best_option', 2),
  ):
    # pylint: disable-next=protected-access
    tasks_p3_test._write_folder(
        str(root / folder), {'train': (12, 12)}, num_shards=shards
    )
  registered = p3.mixtures.register(
      str(root), vocabulary=vocab.synthetic_vocabulary()
  )
  yield registered.tasks
  p3.mixtures.unregister()


def test_p3_more_files_than_hosts(p3_tasks):
  task = p3_tasks['imdb_Movie_Expressed_Sentiment']
  assert sorted(_check_hosts_partition_the_data(task, 2, prompt_length=0)) == [
      4,
      8,
  ]


def test_p3_fewer_files_than_hosts(p3_tasks):
  task = p3_tasks['super_glue_copa_best_option']
  assert _check_hosts_partition_the_data(task, 3, prompt_length=0) == [4, 4, 4]
