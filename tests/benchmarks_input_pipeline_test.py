"""Tests of `benchmarks.input_pipeline` on a tiny fixture.

Each variant's pipeline must read what the training pipeline reads: the
prompted tasks' batches as `spt_jax.local.train_data.get_train_dataset` builds them, the
same batches from a SeqIO cache written by `seqio.scripts.cache_tasks_main`
(`use_cached=True`, T5X's `USE_CACHED_TASKS = True`) and from pre-rendered
text, and the same examples from the P3 copy; the benchmark's in-process
cache writer writes what `cache_tasks_main` writes.
"""

import functools
import os

import numpy as np
import pytest
import seqio

from benchmarks import input_copies
from benchmarks import input_fixture
from benchmarks import input_pipeline as ip
from benchmarks import input_readers
from spt_jax import eval_protocol
from spt_jax.local import train_data
from spt_jax.model import feature_converters
from tasks import p3
from tasks import t0

DATASETS = ('app_reviews',)  # 3 short tasks, one without answer choices.
BATCH = 4


@pytest.fixture(name='prepared', scope='module')
def _prepared(tmp_path_factory):
  env = {k: os.environ.get(k) for k in ('SPT_DATA_DIR', 'SPT_VOCAB_PATH')}
  cache_dirs = list(seqio.utils.get_global_cache_dirs())
  prepared = ip.prepare(
      str(tmp_path_factory.mktemp('input_pipeline')),
      ('t0_cached', 't0_prerendered', 'p3'),
      DATASETS,
      records=24,
      cache_writer='beam',
  )
  # Shuffle buffers of 64, not SeqIO's 1000: each pipeline's first batch
  # then renders 3 x 64 examples, not 3 x 1000. The batches compared are
  # read through the same tasks either way.
  for mixture in (input_fixture.MIXTURE, input_fixture.PRERENDERED_MIXTURE):
    for task in seqio.get_mixture_or_task(mixture).tasks:
      task._shuffle_buffer_size = 64  # pylint: disable=protected-access
  yield prepared
  for key, value in env.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value
  seqio.set_global_cache_dirs(cache_dirs)
  p3.mixtures.unregister()
  for name in list(seqio.TaskRegistry.names()):
    if name.startswith(input_fixture.PRERENDERED_COLLECTION):
      seqio.TaskRegistry.remove(name)
  for name in (input_fixture.MIXTURE, input_fixture.PRERENDERED_MIXTURE):
    seqio.MixtureRegistry.remove(name)
  t0.register()  # Back to the environment's vocabulary.


def _batches(dataset, n=2):
  return list(dataset.take(n).as_numpy_iterator())


def _row(batch, i):
  return tuple((k, batch[k][i].tobytes()) for k in sorted(batch))


def _assert_same(batches, expected):
  assert len(batches) == len(expected)
  for got, want in zip(batches, expected):
    assert sorted(got) == sorted(want)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_variants_read_the_training_pipelines_batches(prepared):
  direct = _batches(
      train_data.get_train_dataset(
          input_fixture.MIXTURE,
          input_fixture.T0_LENGTHS,
          BATCH,
          functools.partial(
              feature_converters.SptEncDecFeatureConverter,
              prompt_length=input_fixture.T0_LENGTHS['prompt'],
          ),
          seed=0,
          shard_info=seqio.ShardInfo(0, 1),
      )
  )
  assert direct[0]['encoder_input_tokens'].shape == (BATCH, 1024 + 64)
  assert direct[0]['decoder_target_tokens'].shape == (BATCH, 256)

  pipelines = ip.pipelines(
      prepared, ('t0', 't0_cached', 't0_prerendered'), BATCH, seed=0
  )
  _assert_same(_batches(pipelines['t0']), direct)
  _assert_same(_batches(pipelines['t0_prerendered']), direct)
  # Beam writes a cache in its own order, so the same seed shuffles other
  # batches: each of their rows is one of the tasks' rows.
  rows = set()
  for name in prepared.task_names:
    epoch = _batches(
        train_data.get_train_dataset(
            name,
            input_fixture.T0_LENGTHS,
            BATCH,
            functools.partial(
                feature_converters.SptEncDecFeatureConverter,
                prompt_length=input_fixture.T0_LENGTHS['prompt'],
            ),
            seed=0,
            shard_info=seqio.ShardInfo(0, 1),
            num_epochs=1,
        ),
        n=-1,
    )
    rows |= {_row(batch, i) for batch in epoch for i in range(BATCH)}
  assert len(rows) == 3 * 24
  cached = _batches(pipelines['t0_cached'])
  assert sorted(cached[0]) == sorted(direct[0])
  for batch in cached:
    for i in range(BATCH):
      assert _row(batch, i) in rows
  # The cached variant did read the cache.
  task = seqio.get_mixture_or_task(prepared.task_names[0])
  assert task.cache_dir.startswith(prepared.fixture.cache_dir)


def _task_examples(name, use_cached=False):
  return list(
      seqio.get_mixture_or_task(name)
      .get_dataset(None, split='train', shuffle=False, use_cached=use_cached)
      .as_numpy_iterator()
  )


def test_p3_copy_holds_each_tasks_examples(prepared):
  registered = p3.mixtures.register(
      prepared.fixture.p3_dir,
      vocabulary=seqio.SentencePieceVocabulary(
          prepared.fixture.vocab_path, extra_ids=100
      ),
  )
  assert len(registered.mixtures[p3.datasets.T0_TRAIN_MIXTURE]) == 3
  for folder, p3_name in registered.tasks.items():
    ours = [
        n
        for n in prepared.task_names
        if eval_protocol.template_info(n)
        == eval_protocol.template_info(p3_name)
    ]
    assert len(ours) == 1, folder
    expected = _task_examples(ours[0])
    got = _task_examples(p3_name)
    assert len(got) == len(expected) > 0
    for g, e in zip(got, expected):
      # P3's inputs have no EOS; targets end in it, as ours do.
      np.testing.assert_array_equal(g['inputs'], e['inputs'][:-1])
      np.testing.assert_array_equal(g['targets'], e['targets'])
      assert g['inputs_pretokenized'] == e['inputs_pretokenized']


def test_measure_times_the_variants(prepared):
  readers = {
      name: input_readers.PipelineReader(ds, BATCH)
      for name, ds in ip.pipelines(
          prepared, ('t0', 't0_render_only', 't0_cached'), BATCH
      ).items()
  }
  ip.warm_up(readers, BATCH)
  rows = ip.measure(readers, {}, 0, batches=2, drain=1, repeats=1, pause_s=0.0)
  assert [r['variant'] for r in rows] == list(readers)
  for row in rows:
    assert row['examples_per_call'] == 2 * BATCH
    assert row['examples_per_s'] > 0 and row['cpu_ms_per_example'] > 0
  assert set(ip.ratios(rows)) == {'t0_render_only_over_t0', 't0_cached_over_t0'}
  ceiling = input_readers.render_ceiling(DATASETS, seconds=0.2)
  assert ceiling['examples_per_cpu_s'] > 0
  assert ceiling['rendered_chars_per_example'] > 0


def test_render_only_yields_the_rendered_text(prepared):
  batch = _batches(input_readers.render_only_batches(DATASETS, BATCH), 1)[0]
  assert sorted(batch) == ['inputs', 'prompt', 'targets']
  instructions = {
      seqio.get_mixture_or_task(n)
      .preprocessors[0]
      .keywords['template']
      .instruction.encode()
      for n in prepared.task_names
  }
  assert set(batch['prompt']) <= instructions


def _cached_examples(name, cache_dir):
  seqio.set_global_cache_dirs([cache_dir])  # The fixture restores them.
  task = seqio.get_mixture_or_task(name)
  task._cache_dir = None  # pylint: disable=protected-access
  assert os.path.exists(os.path.join(task.cache_dir, 'COMPLETED'))
  key = lambda ex: (ex['inputs_pretokenized'], ex['targets_pretokenized'])
  return sorted(_task_examples(name, use_cached=True), key=key)


def test_cache_tasks_main_and_in_process_cache_the_same_examples(
    prepared, tmp_path
):
  in_process_dir = str(tmp_path / 'in_process')
  input_copies.write_cache_in_process(
      in_process_dir,
      prepared.task_names,
      {n: input_copies.precache_examples(n) for n in prepared.task_names},
  )
  key = lambda ex: (ex['inputs_pretokenized'], ex['targets_pretokenized'])
  for name in prepared.task_names:
    fresh = sorted(_task_examples(name), key=key)
    for cache_dir in (prepared.fixture.cache_dir, in_process_dir):
      cached = _cached_examples(name, cache_dir)
      assert len(cached) == len(fresh) == 24
      for c, f in zip(cached, fresh):
        assert sorted(c) == sorted(f)
        for k in f:
          np.testing.assert_array_equal(c[k], f[k], err_msg=k)
