"""The local runner's training data: this host's shard of a mixture's examples, batched."""

import dataclasses
from typing import Dict, Mapping, Optional, Sequence, Tuple, Type

import jax
import numpy as np
import seqio
import tensorflow as tf

from spt_jax import gin_utils

# (task, feature lengths, shard, use_cached) -> its preprocessed examples,
# held in memory by tf.data for every later run of this process.
_IN_MEMORY: Dict[Tuple, Tuple[tf.data.Dataset, int]] = {}


@dataclasses.dataclass(frozen=True)
class TrainDataConfig:
  """What a local run trains on, as T5X's `utils.DatasetConfig`.

  Attributes:
    mixture_or_task_name: the training mixture or task.
    task_feature_lengths: e.g. {'inputs': 512, 'targets': 64, 'prompt': 32}.
    batch_size: the global batch size.
    mixture_or_task_module: the module that registers it (imported first).
    use_cached: read the tasks from a SeqIO cache
      (`./run_t5x.sh cache`; T5X's `USE_CACHED_TASKS`).
    cache_dirs: more folders to look for caches in (seqio's global list,
      as T5X's `--seqio_additional_cache_dirs`).
    in_memory: `get_train_dataset`'s `in_memory`.
  """

  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  batch_size: int
  mixture_or_task_module: Optional[str] = None
  use_cached: bool = False
  cache_dirs: Sequence[str] = ()
  in_memory: bool = False

  def dataset(
      self, feature_converter_cls: Type[seqio.FeatureConverter], seed: int
  ):
    """This host's batches (`get_train_dataset`), repeated for ever."""
    return get_train_dataset(
        self.mixture_or_task_name,
        self.task_feature_lengths,
        self.batch_size,
        feature_converter_cls,
        seed,
        use_cached=self.use_cached,
        cache_dirs=self.cache_dirs,
        in_memory=self.in_memory,
    )


def host_shard() -> seqio.ShardInfo:
  """This process's share of the input: one shard per host."""
  return seqio.ShardInfo(
      index=jax.process_index(), num_shards=jax.process_count()
  )


def get_train_dataset(
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    batch_size: int,
    feature_converter_cls: Type[seqio.FeatureConverter],
    seed: int,
    shard_info: Optional[seqio.ShardInfo] = None,
    num_epochs: Optional[int] = None,
    use_cached: bool = False,
    cache_dirs: Sequence[str] = (),
    in_memory: bool = False,
):
  """One host's shard of the shuffled, repeated training batches.

  Each host reads its own shard of every task (seqio splits a task's files
  over the hosts, or its examples where it has fewer files than hosts), so
  the input pipeline's work is divided, not repeated; each host's batches
  are its rows of the global batch. The data order therefore depends on the
  number of hosts; the training step does not (tests/multihost_test.py).

  Args:
    mixture_or_task_name: the training mixture or task.
    task_feature_lengths: feature lengths.
    batch_size: the global batch size.
    feature_converter_cls: the model's feature converter.
    seed: shuffling seed.
    shard_info: the shard to read (default: this process's, `host_shard`).
    num_epochs: passes over the data (None: repeat for ever).
    use_cached: read the tasks from a SeqIO cache
      (`./run_t5x.sh cache`; T5X's `USE_CACHED_TASKS`).
    cache_dirs: more folders to look for caches in (seqio's global list,
      as T5X's `--seqio_additional_cache_dirs`).
    in_memory: keep each task's preprocessed examples in memory, read once
      per process, and mix them here (`_in_memory_mixture`) instead of by
      seqio: the same examples and rates in another order. For mixtures that
      fit in memory and train many times in one process (the study).

  Returns:
    Batches of `batch_size // num_shards` rows.
  """
  seqio.add_global_cache_dirs(list(cache_dirs))
  shard_info = shard_info or host_shard()
  if batch_size % shard_info.num_shards:
    raise gin_utils.ConfigError(
        f'BATCH_SIZE={batch_size} must divide over {shard_info.num_shards} hosts.'
    )
  if in_memory:
    dataset = _in_memory_mixture(
        mixture_or_task_name,
        task_feature_lengths,
        feature_converter_cls(pack=False),
        seed,
        shard_info,
        num_epochs,
        use_cached,
    )
    return dataset.batch(
        batch_size // shard_info.num_shards, drop_remainder=True
    )
  dataset = seqio.get_dataset(
      mixture_or_task_name,
      task_feature_lengths=task_feature_lengths,
      dataset_split='train',
      shuffle=True,
      num_epochs=num_epochs,
      shard_info=shard_info,
      feature_converter=feature_converter_cls(pack=False),
      seed=seed,
      use_cached=use_cached,
  )
  return dataset.batch(batch_size // shard_info.num_shards, drop_remainder=True)


def _task_in_memory(
    task: seqio.Task,
    task_feature_lengths: Mapping[str, int],
    shard_info: seqio.ShardInfo,
    use_cached: bool,
) -> Tuple[tf.data.Dataset, int]:
  """The shard's preprocessed examples of a task, cached in memory; and
  their number. Read (in full, so that tf.data keeps them) on first use."""
  key = (
      task.name,
      tuple(sorted(task_feature_lengths.items())),
      shard_info.index,
      shard_info.num_shards,
      use_cached,
  )
  if key not in _IN_MEMORY:
    examples = task.get_dataset(
        task_feature_lengths,
        split='train',
        shuffle=False,
        num_epochs=1,
        shard_info=shard_info,
        use_cached=use_cached,
    )
    features = list(task.output_features)
    examples = examples.map(lambda ex: {k: ex[k] for k in features}).cache()
    count = int(examples.reduce(np.int64(0), lambda n, _: n + 1))
    _IN_MEMORY[key] = (examples, count)
  return _IN_MEMORY[key]


def _in_memory_mixture(
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    feature_converter: seqio.FeatureConverter,
    seed: int,
    shard_info: seqio.ShardInfo,
    num_epochs: Optional[int],
    use_cached: bool,
) -> tf.data.Dataset:
  """Each task's in-memory examples, repeated and shuffled in full with
  `seed`, sampled at the mixture's rates (seqio's rates), converted."""
  mixture = seqio.get_mixture_or_task(mixture_or_task_name)
  tasks = seqio.get_subtasks(mixture)
  datasets = []
  for task in tasks:
    examples, count = _task_in_memory(
        task, task_feature_lengths, shard_info, use_cached
    )
    datasets.append(
        examples.repeat(num_epochs).shuffle(max(count, 1), seed=seed)
    )
  if isinstance(mixture, seqio.Mixture):
    rates = np.array([mixture.get_rate(t) for t in tasks], np.float64)
    dataset = tf.data.Dataset.sample_from_datasets(
        datasets, weights=list(rates / rates.sum()), seed=seed
    )
  else:
    (dataset,) = datasets
  return feature_converter(dataset, task_feature_lengths)
