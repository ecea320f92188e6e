"""Data sources of the real tasks: TFDS datasets and local exports.

* `TfdsSource`: a TFDS dataset that must already be prepared (read-only: it
  never downloads). TFDS finds it in `$TFDS_DATA_DIR` (default
  `~/tensorflow_datasets`) or in the `data_dir` given to the source.
* `LocalSource`: a dataset TFDS does not have, read from
  `$SPT_DATA_DIR/<name>/<split>.jsonl` (a Hugging Face export:
  `datasets.load_dataset(...)[split].to_json(path)`) or
  `$SPT_DATA_DIR/<name>/<split>.tfrecord[-*]` (tf.train.Example records whose
  keys are the dotted field paths of its `fields`).

When the data is missing both raise `DataNotFoundError` naming the dataset and
how to provide it, instead of an error from deep inside TFDS or tf.data.

A JSON lines split is read and checked whole when its dataset is built (and
kept in memory, once per file): it must be UTF-8 (a byte-order mark is
skipped) and hold at least one record, and every declared field must be
present, not null, and of its declared type, or `InvalidRecordError` names
the file, the line and the field. Nothing is filled with a default. (TFRecord exports, for
data too large for memory, are parsed by tf.data; missing scalar features are
errors there too.)
"""

import functools
import json
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from spt_jax import gin_utils

DATA_DIR_ENV = 'SPT_DATA_DIR'

# Field types of local datasets: scalars and 1-D lists.
_DTYPES = {
    'string': (tf.string, ()),
    'int': (tf.int64, ()),
    'float': (tf.float32, ()),
    'bool': (tf.bool, ()),
    'string_list': (tf.string, (None,)),
    'int_list': (tf.int64, (None,)),
    'float_list': (tf.float32, (None,)),
}
# Python types a JSON value of each field type may have (bool is not an int).
_JSON_TYPES = {
    tf.string: (str,),
    tf.int64: (int,),
    tf.float32: (int, float),
    tf.bool: (bool,),
}


# What TFDS raises for a data set that is not prepared (or not registered).
_NOT_PREPARED = (
    AssertionError,
    KeyError,
    FileNotFoundError,
    tf.errors.NotFoundError,
    tfds.core.registered.DatasetNotFoundError,
)


class DataNotFoundError(gin_utils.InputError, FileNotFoundError):
  """The data of a task is not available; the message says how to provide it."""


class InvalidRecordError(gin_utils.InputError, ValueError):
  """A record of a local export lacks a field or has one of the wrong type."""


class TfdsSource(seqio.TfdsDataSource):
  """A prepared TFDS dataset; missing data raises `DataNotFoundError`."""

  def __init__(
      self,
      tfds_name: str,
      splits: Mapping[str, str],
      data_dir: Optional[str] = None,
      manual_download: bool = False,
  ):
    """Constructor.

    Args:
      tfds_name: `name[/config]:version`.
      splits: seqio split name -> TFDS split.
      data_dir: TFDS data directory; None lets TFDS use `$TFDS_DATA_DIR`.
      manual_download: whether TFDS needs files downloaded by hand.
    """
    super().__init__(
        tfds_name=tfds_name,
        tfds_data_dir=data_dir,
        splits=splits,
        read_only=True,
    )
    self._manual_download = manual_download

  def _not_found(self, split: str, error: Exception) -> DataNotFoundError:
    name = self.tfds_dataset.name.split(':')[0]
    data_dir = self.tfds_dataset.data_dir or os.environ.get(
        'TFDS_DATA_DIR', tfds.core.constants.DATA_DIR
    )
    how = f'  tfds build {name} --data_dir={data_dir}'
    if self._manual_download:
      how += (
          ' --manual_dir=<dir with the files>  (this dataset needs a '
          'manual download; `tfds build` prints where to get the files)'
      )
    first_line = str(error).strip().splitlines()[0] if str(error) else ''
    return DataNotFoundError(
        f"TFDS dataset '{self.tfds_dataset.name}' (split '{split}') is not "
        f'prepared in {data_dir}. Prepare it with\n{how}\nor point '
        f'$TFDS_DATA_DIR at a directory holding it. ({type(error).__name__}: '
        f'{first_line})'
    )

  def get_dataset(
      self, split: str = tfds.Split.TRAIN, *args, **kwargs
  ) -> tf.data.Dataset:
    try:
      return super().get_dataset(split, *args, **kwargs)
    except _NOT_PREPARED as e:
      raise self._not_found(split, e) from None

  def list_shards(self, split: str) -> Sequence[str]:
    """The split's files; raises DataNotFoundError when it is not prepared."""
    try:
      shards = super().list_shards(split)
    except _NOT_PREPARED as e:
      raise self._not_found(split, e) from None
    if not shards:
      raise self._not_found(split, KeyError(f'no files for split {split!r}'))
    return shards

  def num_input_examples(self, split: str) -> Optional[int]:
    """The split's size, or None when TFDS does not know it (not prepared)."""
    try:
      return super().num_input_examples(split)
    except (KeyError, AssertionError, FileNotFoundError):
      return None


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{'a.b': x} -> {'a': {'b': x}}."""
  nested = {}
  for path, value in flat.items():
    *parents, leaf = path.split('.')
    node = nested
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return nested


def _lookup(record: Mapping[str, Any], path: str) -> Any:
  value = record
  for key in path.split('.'):
    value = value.get(key) if isinstance(value, Mapping) else None
  return value


class LocalSource(seqio.DataSource):
  """A dataset exported to `$SPT_DATA_DIR/<name>/<split>.{jsonl,tfrecord}`."""

  # The runners read the first example of a local export before training.
  IS_LOCAL_EXPORT = True

  def __init__(
      self,
      name: str,
      fields: Mapping[str, str],
      splits: Sequence[str],
      hf_name: str,
      data_dir: Optional[str] = None,
  ):
    """Constructor.

    Args:
      name: the folder of the export under the data directory.
      fields: dotted field path -> type ('string', 'int', 'float', 'bool',
        'string_list', 'int_list', 'float_list'). Only these fields are read;
        the examples are nested dicts following the paths.
      splits: the split names (file stems).
      hf_name: the Hugging Face `load_dataset` arguments, for the error message
        (e.g. "'adversarial_qa', 'adversarialQA'").
      data_dir: the data directory; None reads `$SPT_DATA_DIR` when loading.
    """
    for path, kind in fields.items():
      if kind not in _DTYPES:
        raise ValueError(f'Unknown type {kind!r} of field {path!r} of {name}.')
    super().__init__(splits=splits)
    self._name = name
    self._fields = dict(fields)
    self._hf_name = hf_name
    self._data_dir = data_dir

  @property
  def name(self) -> str:
    return self._name

  @property
  def fields(self) -> Mapping[str, str]:
    return self._fields

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def __repr__(self) -> str:
    return f'{type(self).__name__}(name={self._name!r}, splits={self.splits})'

  def _files(self, split: str) -> tuple[str, list[str]]:
    """('jsonl' | 'tfrecord', files) of the split; raises when none exist."""
    data_dir = self._data_dir or os.environ.get(DATA_DIR_ENV)
    if data_dir:
      where = os.path.join(os.path.expanduser(data_dir), self._name)
      unset = ''
      jsonl = os.path.join(where, f'{split}.jsonl')
      if tf.io.gfile.exists(jsonl):
        return 'jsonl', [jsonl]
      records = sorted(
          tf.io.gfile.glob(os.path.join(where, f'{split}.tfrecord*'))
      )
      if records:
        return 'tfrecord', records
    else:
      where = f'${DATA_DIR_ENV}/{self._name}'
      unset = f' (${DATA_DIR_ENV} is not set)'
    fields = ', '.join(f'{p} ({t})' for p, t in self._fields.items())
    export = (
        f'  datasets.load_dataset({self._hf_name}, split={split!r})'
        f".to_json('<{DATA_DIR_ENV}>/{self._name}/{split}.jsonl')"
    )
    raise DataNotFoundError(
        f"Dataset '{self._name}' (split '{split}') not found: expected "
        f'{where}/{split}.jsonl or {where}/{split}.tfrecord*{unset}. TFDS '
        f'does not have it; export it from Hugging Face as JSON lines:\n'
        f'{export}\nand set ${DATA_DIR_ENV}. Fields read: {fields}.'
    )

  def list_shards(self, split: str) -> Sequence[str]:
    return self._files(split)[1]

  def _parse_tfrecord(self, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    spec = {}
    for p, t in self._fields.items():
      dtype, shape = _DTYPES[t]
      io_dtype = {tf.string: tf.string, tf.float32: tf.float32}.get(
          dtype, tf.int64
      )
      spec[p] = (
          tf.io.VarLenFeature(io_dtype)
          if shape
          else tf.io.FixedLenFeature((), io_dtype)
      )
    parsed = tf.io.parse_single_example(serialized, spec)
    flat = {}
    for p, t in self._fields.items():
      value = parsed[p]
      if isinstance(value, tf.SparseTensor):
        value = tf.sparse.to_dense(value)
      flat[p] = tf.cast(value, _DTYPES[t][0])
    return _nest(flat)

  def get_dataset(
      self,
      split: str = tfds.Split.TRAIN,
      shuffle: bool = True,
      seed: Optional[int] = None,
      shard_info: Optional[seqio.ShardInfo] = None,
      *,
      sequence_length: Optional[Mapping[str, int]] = None,
      use_cached: bool = False,
      num_epochs: Optional[int] = 1,
  ) -> tf.data.Dataset:
    """Reads the split; `shard_info` shards the list of files."""
    del sequence_length, use_cached, num_epochs  # Unused.
    kind, files = self._files(split)
    if shard_info:
      files = files[shard_info.index :: shard_info.num_shards]
    if kind == 'jsonl':
      columns = [_read_jsonl(f, tuple(self._fields.items())) for f in files]
      flat = {
          p: _concat([c[p] for c in columns], _DTYPES[t])
          for p, t in self._fields.items()
      }
      return tf.data.Dataset.from_tensor_slices(_nest(flat))
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
      ds = ds.shuffle(len(files), seed=seed)
    return tf.data.TFRecordDataset(ds).map(
        self._parse_tfrecord, num_parallel_calls=tf.data.AUTOTUNE
    )


def _concat(parts: Sequence[Any], kind: tuple[tf.DType, tuple[Any, ...]]):
  """One column from per-file columns: a tensor, or ragged for list fields."""
  dtype, shape = kind
  if shape:
    rows = [row for part in parts for row in part]
    return (
        tf.ragged.constant(rows, dtype=dtype, ragged_rank=1, inner_shape=())
        if rows
        else tf.zeros([0, 0], dtype)
    )
  values = np.concatenate(parts) if parts else np.zeros([0])
  return tf.constant(values, dtype=dtype)


def _check_value(value: Any, path: str, field_type: str, where: str) -> Any:
  """The value of one field, checked against its declared type."""
  dtype, shape = _DTYPES[field_type]
  if value is None:
    raise InvalidRecordError(
        f'{where}: field {path!r} ({field_type}) is missing or null. Fix the '
        "export, or drop the field from the dataset's `fields`."
    )
  values = value if shape else [value]
  if shape and not isinstance(value, list):
    values = None
  if values is None or not all(
      isinstance(v, _JSON_TYPES[dtype])
      and not (dtype != tf.bool and isinstance(v, bool))
      for v in values
  ):
    raise InvalidRecordError(
        f'{where}: field {path!r} should be {field_type}, got '
        f'{json.dumps(value)[:80]}.'
    )
  if dtype == tf.string:
    return (
        [v.encode('utf-8') for v in values] if shape else value.encode('utf-8')
    )
  return value


@functools.lru_cache(maxsize=16)
def _read_jsonl_cached(
    path: str, mtime: float, fields: tuple[tuple[str, str], ...]
) -> dict[str, Any]:
  del mtime  # Part of the cache key only.
  columns = {p: [] for p, _ in fields}
  records = 0
  with tf.io.gfile.GFile(path, 'rb') as f:
    for number, raw in enumerate(f, start=1):
      where = f'{path}, line {number}'
      try:
        # A byte-order mark (Windows editors write one) is not data.
        line = raw.decode('utf-8-sig' if number == 1 else 'utf-8')
      except UnicodeDecodeError as e:
        raise InvalidRecordError(
            f'{where}: not UTF-8 (byte {raw[e.start:e.start + 1]!r} at '
            f'column {e.start + 1}). Export the data as UTF-8.'
        ) from None
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise InvalidRecordError(f'{where}: not valid JSON ({e}).') from None
      if not isinstance(record, Mapping):
        raise InvalidRecordError(f'{where}: a JSON object was expected.')
      for p, t in fields:
        columns[p].append(_check_value(_lookup(record, p), p, t, where))
      records += 1
  if not records:
    raise InvalidRecordError(
        f'{path}: no records (the file is empty). Export the split again, or '
        'remove the file and the split from the dataset.'
    )
  result = {}
  for p, t in fields:
    dtype, shape = _DTYPES[t]
    if shape:
      result[p] = columns[p]
    else:
      result[p] = np.array(
          columns[p],
          dtype=object if dtype == tf.string else dtype.as_numpy_dtype,
      )
  return result


def _read_jsonl(
    path: str, fields: tuple[tuple[str, str], ...]
) -> dict[str, Any]:
  """The columns of a JSON lines file, checked (see the module docstring)."""
  return _read_jsonl_cached(path, tf.io.gfile.stat(path).mtime_nsec, fields)


def write_tfrecord(
    path: str, examples: Sequence[Mapping[str, Any]], fields: Mapping[str, str]
) -> None:
  """Writes examples (nested dicts) as tf.train.Examples keyed by paths."""

  def feature(value, kind):
    values = value if _DTYPES[kind][1] else [value]
    if _DTYPES[kind][0] == tf.string:
      return tf.train.Feature(
          bytes_list=tf.train.BytesList(
              value=[v.encode('utf-8') for v in values]
          )
      )
    if _DTYPES[kind][0] == tf.float32:
      return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Feature(
        int64_list=tf.train.Int64List(value=[int(v) for v in values])
    )

  with tf.io.TFRecordWriter(path) as writer:
    for example in examples:
      features = {p: feature(_lookup(example, p), t) for p, t in fields.items()}
      writer.write(
          tf.train.Example(
              features=tf.train.Features(feature=features)
          ).SerializeToString()
      )
