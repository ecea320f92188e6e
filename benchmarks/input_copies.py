"""Pre-processed copies of the fixture's tasks for `benchmarks.input_pipeline`.

A SeqIO cache (written in this process in the layout of
`seqio.scripts.cache_tasks_main`, or by that script under Beam), a P3 folder
per task (pre-tokenised TFRecords with P3's info files), and the examples
rendered once up front as a mixture of their own.
"""

import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from benchmarks import input_fixture
from spt_jax import eval_protocol
from tasks import registry

# ------------------------- Pre-processed copies: SeqIO caches, P3 folders --


def precache_examples(
    task_name: str, split: str = 'train'
) -> List[Dict[str, Any]]:
  """A task's examples where SeqIO caches them: rendered, tokenised, no EOS.

  In the source's order, as `seqio.scripts.cache_tasks_main` computes them
  (`Task.preprocess_precache` on the unshuffled source).
  """
  task = seqio.get_mixture_or_task(task_name)
  ds = task.preprocess_precache(task.source.get_dataset(split, shuffle=False))
  return list(ds.as_numpy_iterator())


def _tf_example(example: Mapping[str, Any]) -> bytes:
  """A tf.train.Example as SeqIO's cache and P3 store one (ints as int64)."""
  feature = {}
  for key, value in example.items():
    flat = np.asarray(value).reshape(-1)
    if flat.dtype.kind in 'SUO':
      feature[key] = tf.train.Feature(
          bytes_list=tf.train.BytesList(
              value=[
                  v if isinstance(v, bytes) else str(v).encode() for v in flat
              ]
          )
      )
    elif flat.dtype.kind == 'f':
      feature[key] = tf.train.Feature(
          float_list=tf.train.FloatList(value=flat.tolist())
      )
    else:
      feature[key] = tf.train.Feature(
          int64_list=tf.train.Int64List(value=flat.astype(np.int64).tolist())
      )
  return tf.train.Example(
      features=tf.train.Features(feature=feature)
  ).SerializeToString()


def _feature_info(example: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
  """{'dtype', 'shape'} per feature, as `seqio.beam_utils.GetInfo` writes."""
  info = {}
  for key, value in example.items():
    value = np.asarray(value)
    dtype = (
        'string'
        if value.dtype.kind in 'SUO'
        else 'bool'
        if value.dtype.kind == 'b'
        else value.dtype.name
    )
    info[key] = {
        'dtype': dtype,
        'shape': [None] + list(value.shape[1:]) if value.ndim else [],
    }
  return info


def write_split(
    folder: str,
    split: str,
    examples: Sequence[Mapping[str, Any]],
    stats: Mapping[str, Any],
) -> None:
  """One shard with `info.<split>.json` and `stats.<split>.json`."""
  os.makedirs(folder, exist_ok=True)
  with tf.io.TFRecordWriter(
      os.path.join(folder, f'{split}.tfrecord-00000-of-00001')
  ) as writer:
    for example in examples:
      writer.write(_tf_example(example))
  with open(os.path.join(folder, f'info.{split}.json'), 'w') as f:
    json.dump(
        {
            'features': _feature_info(examples[0]),
            'num_shards': 1,
            'seqio_version': seqio.__version__,
        },
        f,
    )
  with open(os.path.join(folder, f'stats.{split}.json'), 'w') as f:
    json.dump(dict(stats), f)


def write_cache_in_process(
    cache_dir: str,
    task_names: Sequence[str],
    examples: Mapping[str, Sequence[Mapping[str, Any]]],
) -> None:
  """The SeqIO cache `cache_tasks_main` writes, of the `train` split, in-process.

  Beam's DirectRunner, the runner a single host has, needed more than 12 GB
  and 13 minutes for the 63 tasks x 200 records of the full fixture here
  (a real mixture is cached on a Beam cluster: `--pipeline_options=
  --runner=DataflowRunner,...`). This writes the same layout, one shard per
  task: `<cache_dir>/<task>/train.tfrecord-*`, `info.train.json`,
  `stats.train.json` and `COMPLETED`; `tests/benchmarks_input_pipeline_test.py`
  checks that both caches hold the same examples.

  Args:
    cache_dir: the cache directory.
    task_names: the tasks.
    examples: task name -> `precache_examples(task)`.
  """
  for name in task_names:
    task_examples = examples[name]
    stats = {'examples': len(task_examples)}
    for key in seqio.get_mixture_or_task(name).output_features:
      lengths = [len(ex[key]) for ex in task_examples]
      stats[f'{key}_tokens'] = int(np.sum(lengths))
      stats[f'{key}_max_tokens'] = int(np.max(lengths))
    folder = os.path.join(cache_dir, seqio.get_task_dir_from_name(name))
    write_split(folder, 'train', task_examples, stats)
    with open(os.path.join(folder, 'COMPLETED'), 'w') as f:
      f.write('')


def cache_command(task_names: Sequence[str], cache_dir: str) -> List[str]:
  """`seqio.scripts.cache_tasks_main` for these tasks (Beam's DirectRunner).

  `--tasks` takes task names (regular expressions), not a mixture's name.
  """
  return [
      sys.executable,
      '-m',
      'seqio.scripts.cache_tasks_main',
      '--module_import=tasks',
      f'--tasks={",".join(task_names)}',
      f'--output_cache_dir={cache_dir}',
      '--min_shards=1',
      # One process: the multi-process DirectRunner grew past 20 GB on
      # the full fixture here.
      '--pipeline_options=--runner=DirectRunner,'
      '--direct_running_mode=in_memory',
  ]


def write_cache_with_beam(cache_dir: str, task_names: Sequence[str]) -> None:
  """Caches the tasks with `seqio.scripts.cache_tasks_main` (every split)."""
  out = subprocess.run(
      cache_command(task_names, cache_dir),
      env=os.environ,
      capture_output=True,
      text=True,
  )
  if out.returncode:
    raise RuntimeError(f'cache_tasks_main failed:\n{out.stderr[-3000:]}')


def write_p3_fixture(
    fixture: input_fixture.Fixture,
    datasets: Sequence[str],
    examples: Mapping[str, Sequence[Mapping[str, Any]]],
) -> List[str]:
  """One P3 folder per `spt_t0` task of `datasets`, holding its examples.

  As P3 stores them: inputs without EOS, targets with EOS, the pretokenised
  text and the answer choices; `stats.train.json` claims the dataset's real
  size (`input_fixture.TRAIN_SIZES`), from which `tasks.p3` computes T0's rates.

  Args:
    fixture: where to write (`fixture.p3_dir`).
    datasets: the datasets.
    examples: task name -> `precache_examples(task)`.

  Returns:
    The folder names.
  """
  eos = 1
  folders = []
  for dataset, names in input_fixture.t0_task_names(datasets).items():
    for name in names:
      folder = f'{input_fixture.P3_PREFIXES.get(dataset, dataset)}_{eval_protocol.template_info(name)[1]}'
      records = [
          {
              'inputs': ex['inputs'].astype(np.int32),
              'targets': np.append(ex['targets'], eos).astype(np.int32),
              'inputs_pretokenized': ex['inputs_pretokenized'],
              'targets_pretokenized': ex['targets_pretokenized'],
              'answer_choices': np.asarray(ex['answer_choices'], object),
          }
          for ex in examples[name]
      ]
      write_split(
          os.path.join(fixture.p3_dir, 'data', folder),
          'train',
          records,
          {'examples': input_fixture.TRAIN_SIZES[dataset]},
      )
      folders.append(folder)
  return folders


def register_prerendered_mixture(
    datasets: Sequence[str],
    examples: Mapping[str, Sequence[Mapping[str, Any]]],
    name: str = input_fixture.PRERENDERED_MIXTURE,
) -> List[str]:
  """The T0 mixture's tasks, each starting from its rendered text.

  A task per `spt_t0` task, whose source holds that task's rendered
  `inputs`, `targets` and `prompt` strings in memory (its examples'
  `*_pretokenized` features) and which then tokenises and appends EOS as the
  `spt_t0` task does: the same examples, without rendering.
  """
  entries = []
  for dataset, names in input_fixture.t0_task_names(datasets).items():
    rate = input_fixture.t0_rate(dataset, len(names))
    for original in names:
      text = {
          key: [ex[f'{key}_pretokenized'] for ex in examples[original]]
          for key in ('inputs', 'targets', 'prompt')
      }

      def dataset_fn(split, shuffle_files, seed=None, text=text):
        del split, shuffle_files, seed  # One in-memory split.
        return tf.data.Dataset.from_tensor_slices(
            {k: tf.constant(v, tf.string) for k, v in text.items()}
        )

      task_name = eval_protocol.task_name(
          input_fixture.PRERENDERED_COLLECTION,
          *eval_protocol.template_info(original),
      )
      registry.add_task(
          task_name,
          source=seqio.FunctionDataSource(dataset_fn, splits=['train']),
          preprocessors=[
              seqio.preprocessors.tokenize,
              seqio.CacheDatasetPlaceholder(),
              seqio.preprocessors.append_eos_after_trim,
          ],
          output_features=seqio.get_mixture_or_task(original).output_features,
      )
      entries.append((task_name, rate))
  registry.add_mixture(name, entries)
  return [n for n, _ in entries]
