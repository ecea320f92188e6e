"""The local runner's training data: this host's shard of a mixture's examples, batched."""

from typing import Mapping, Optional, Sequence, Type

import jax
import seqio

from spt_jax import gin_utils


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

  Returns:
    Batches of `batch_size // num_shards` rows.
  """
  seqio.add_global_cache_dirs(list(cache_dirs))
  shard_info = shard_info or host_shard()
  if batch_size % shard_info.num_shards:
    raise gin_utils.ConfigError(
        f'BATCH_SIZE={batch_size} must divide over {shard_info.num_shards} hosts.'
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
