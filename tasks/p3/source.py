"""P3Source: one P3 folder's TFRecords, parsed as its info files describe.

Part of `tasks.p3` (see its docstring).
"""

import functools
import json
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from tasks.p3 import datasets as p3_datasets
from tasks import sources


class P3Source(seqio.DataSource):
  """The TFRecords of one P3 folder, parsed as its info files describe.

  Nothing is read until a split is requested. Shards are interleaved (and
  shuffled as files when `shuffle`); each is checked to be read in full, so a
  corrupt record raises an error naming the folder and shard.

  Why not `seqio.TFExampleDataSource`: it takes its feature description when
  it is built, where P3's is in each split's `info.<split>.json` (read
  lazily here: a P3 clone has about 2000 folders), and parses without the
  casts to the info's dtypes; its reader sees a file's path alone, where the
  check that a shard was read in full needs its size; and it refuses more
  hosts than files, which P3's one-shard folders have on a pod. What would be
  left of it is the file interleave.
  """

  def __init__(self, folder: str, splits: Sequence[str]):
    """Constructor.

    Args:
      folder: the P3 folder.
      splits: the splits it holds.
    """
    super().__init__(splits=splits)
    self._folder = folder
    self._info = {}

  @property
  def folder(self) -> str:
    return self._folder

  @property
  def supports_arbitrary_sharding(self) -> bool:
    # Sharded here (`get_dataset`), by files or by examples: seqio's own
    # example sharding would split a stream whose order is not the same on
    # every host (shards are interleaved non-deterministically).
    return True

  def __repr__(self) -> str:
    return f'{type(self).__name__}({self._folder!r}, splits={self.splits})'

  def _read_json(self, kind: str, split: str) -> dict[str, Any]:
    path = os.path.join(self._folder, f'{kind}.{split}.json')
    if not tf.io.gfile.exists(path):
      present = sorted(
          os.path.basename(f)
          for f in tf.io.gfile.glob(os.path.join(self._folder, '*'))
      )
      raise sources.DataNotFoundError(
          f'P3 folder {self._folder} has no {kind}.{split}.json (it holds '
          f'{present}). The download is incomplete: fetch the folder again '
          'from huggingface.co/datasets/bigscience/P3.'
      )
    with tf.io.gfile.GFile(path) as f:
      try:
        return json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(
            f'{path} (P3 folder {self._folder}) is not valid JSON: {e}. Fetch '
            'the folder again.'
        ) from e

  def info(self, split: str) -> dict[str, Any]:
    """`info.<split>.json`: the features and the number of shards."""
    if split not in self._info:
      info = self._read_json('info', split)
      if not isinstance(info.get('features'), Mapping) or not isinstance(
          info.get('num_shards'), int
      ):
        raise ValueError(
            f"P3 folder {self._folder}: info.{split}.json lacks 'features' or "
            f"'num_shards' ({sorted(info)})."
        )
      self._info[split] = info
    return self._info[split]

  def num_input_examples(self, split: str) -> int:
    """The split's size, from `stats.<split>.json`."""
    return int(self._read_json('stats', split)['examples'])

  def list_shards(self, split: str) -> Sequence[str]:
    """The split's shards; all `num_shards` of them must be present."""
    num_shards = self.info(split)['num_shards']
    expected = [
        os.path.join(
            self._folder, f'{split}.tfrecord-{i:05d}-of-{num_shards:05d}'
        )
        for i in range(num_shards)
    ]
    missing = [f for f in expected if not tf.io.gfile.exists(f)]
    if missing:
      raise sources.DataNotFoundError(
          f'P3 folder {self._folder} lacks {len(missing)} of the {num_shards} '
          f"shards of split '{split}' that info.{split}.json lists: "
          f'{[os.path.basename(f) for f in missing]}. Fetch the folder again.'
      )
    return expected

  def _check_not_lfs_pointer(self, file: str, size: int) -> None:
    """Raises if a shard is a git-lfs pointer (a clone without its data)."""
    if size > p3_datasets.LFS_POINTER_MAX_BYTES:
      return
    with tf.io.gfile.GFile(file, 'rb') as f:
      if (
          f.read(len(p3_datasets.LFS_POINTER_START))
          == p3_datasets.LFS_POINTER_START
      ):
        raise sources.DataNotFoundError(
            f'P3 folder {self._folder}: {os.path.basename(file)} is a git-lfs '
            'pointer, not the data. In the P3 clone, run git lfs pull '
            f'--include "data/{os.path.basename(self._folder)}/*" (or delete '
            'the folder to leave it out).'
        )

  def _parser(self, split: str) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """Serialized tf.train.Example -> features, as the info file describes."""
    features = self.info(split)['features']
    spec = {}
    for name, feature in features.items():
      dtype, shape = feature['dtype'], list(feature['shape'])
      if any(d is None for d in shape[1:]):
        raise ValueError(
            f"P3 folder {self._folder}: feature '{name}' has shape {shape}; "
            'only scalars, fixed shapes and variable-length vectors are read.'
        )
      stored = 'int64' if dtype in p3_datasets.INT64_STORED else dtype
      if shape and shape[0] is None:
        spec[name] = tf.io.FixedLenSequenceFeature(
            shape[1:], stored, allow_missing=True
        )
      else:
        spec[name] = tf.io.FixedLenFeature(shape, stored)

    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
      parsed = tf.io.parse_single_example(serialized, spec)
      return {
          name: tf.cast(value, features[name]['dtype'])
          for name, value in parsed.items()
      }

    return parse

  def _read_shard(
      self, parse, path: tf.Tensor, size: tf.Tensor
  ) -> tf.data.Dataset:
    """The examples of one shard; fails if the shard is not read in full.

    tf.data reports a damaged record without the file's name, and a record
    that does not parse with its (unprintable) bytes. Here both are skipped
    where they occur (`ignore_errors`), the bytes of the records read are
    counted (each record takes its length + 16 bytes of framing), and an end
    marker asserts that they add up to the shard's size.

    Args:
      parse: the split's parser.
      path: the shard's path, string [].
      size: its size in bytes, int64 [].

    Returns:
      Its examples.
    """
    examples = (
        tf.data.TFRecordDataset(path)
        .map(
            lambda record: (
                parse(record),
                tf.cast(tf.strings.length(record), tf.int64) + 16,
                False,
            )
        )
        .ignore_errors()
    )
    marker = tf.nest.map_structure(
        lambda s: tf.zeros([d or 0 for d in s.shape], s.dtype),
        examples.element_spec[0],
    )
    end = tf.data.Dataset.from_tensors((marker, tf.constant(0, tf.int64), True))
    message = (
        f'P3 folder {self._folder}: shard has a corrupt record, or records '
        'that do not match its info.<split>.json; fetch the folder again. '
        'Shard, bytes read, bytes in the file:'
    )

    def check(bytes_read, element):
      example, length, is_end = element
      bytes_read += length
      ok = tf.logical_or(tf.logical_not(is_end), tf.equal(bytes_read, size))
      assertion = tf.debugging.Assert(
          ok, [message, path, bytes_read, size], summarize=1
      )
      with tf.control_dependencies([assertion]):
        is_end = tf.identity(is_end)
      return bytes_read, (example, is_end)

    return (
        examples.concatenate(end)
        .scan(tf.constant(0, tf.int64), check)
        .filter(lambda example, is_end: tf.logical_not(is_end))
        .map(lambda example, is_end: example)
    )

  def get_dataset(
      self,
      split: str = p3_datasets.TRAIN_SPLIT,
      shuffle: bool = True,
      seed: Optional[int] = None,
      shard_info: Optional[seqio.ShardInfo] = None,
      *,
      sequence_length: Optional[Mapping[str, int]] = None,
      use_cached: bool = False,
      num_epochs: Optional[int] = 1,
  ) -> tf.data.Dataset:
    """Reads a split, or one host's part of it (`shard_info`).

    With at least as many files as hosts, each host reads every
    `num_shards`-th file; with fewer, every host reads all files in one
    fixed order and keeps every `num_shards`-th example.
    """
    del sequence_length, use_cached, num_epochs  # Unused.
    if split not in self.splits:
      raise ValueError(
          f"P3 folder {self._folder} has no split '{split}' (it has "
          f'{list(self.splits)}).'
      )
    files = list(self.list_shards(split))
    if shard_info and len(files) < shard_info.num_shards:
      ds = self._read_files(split, files, shuffle=False, seed=None)
      return ds.shard(shard_info.num_shards, shard_info.index)
    if shard_info:
      files = files[shard_info.index :: shard_info.num_shards]
    return self._read_files(split, files, shuffle, seed)

  def _read_files(
      self, split: str, files: Sequence[str], shuffle: bool, seed: Optional[int]
  ) -> tf.data.Dataset:
    """The examples of `files`, in a fixed order unless `shuffle`."""
    sizes = [tf.io.gfile.stat(f).length for f in files]
    for file, size in zip(files, sizes):
      self._check_not_lfs_pointer(file, size)
    parse = self._parser(split)
    ds = tf.data.Dataset.from_tensor_slices(
        (files, tf.constant(sizes, tf.int64))
    )
    if shuffle:
      ds = ds.shuffle(len(files), seed=seed)
    return ds.interleave(
        functools.partial(self._read_shard, parse),
        cycle_length=max(1, min(16, len(files))),
        block_length=16,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not shuffle,
    )
