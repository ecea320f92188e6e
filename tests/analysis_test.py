"""Retrieval analysis: collected indices, usage statistics, report files."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spt_jax.model import config
from spt_jax.model import models
from spt_jax.model import network
from spt_jax.study import analysis
from spt_jax.study import retrieval_stats
from tests import params_test_utils

VOCAB = 64
NUM_MEMORIES = 16
T5 = config.t5_1_1_config('tiny', vocab_size=VOCAB, dropout_rate=0.0)
SPT = config.SptConfig(
    num_memories=NUM_MEMORIES, memory_length=2, top_k=3, temperature=0.05
)


@pytest.fixture(scope='module')
def trained():
  model = models.SptModel(network.SptTransformer(T5, SPT))
  shapes = {
      'encoder_input_tokens': (2, 8),
      'decoder_input_tokens': (2, 4),
      'decoder_target_tokens': (2, 4),
  }
  params = params_test_utils.initial_params(model, shapes)
  return model, params


def _batches(seed, num_batches=3, batch_size=4, length=8, pad_last_row=False):
  """Batches whose prompts come from a task-specific slice of the vocabulary."""
  rng = np.random.default_rng(seed)
  low = 2 + 15 * seed
  for i in range(num_batches):
    tokens = rng.integers(low, low + 15, size=(batch_size, length))
    tokens[:, length - 2 :] = 0
    if pad_last_row and i == num_batches - 1:
      tokens[-1] = 0
    yield {
        'encoder_input_tokens': tokens,
        'decoder_target_tokens': np.ones((batch_size, 2), np.int32),
    }


def test_collect_retrievals_matches_the_network(trained):
  model, params = trained
  indices = analysis.collect_retrievals(
      model, params, _batches(0, pad_last_row=True)
  )
  # 12 rows, one of them padding.
  assert indices.shape == (11, 3) and indices.dtype == np.int32
  assert indices.min() >= 0 and indices.max() < NUM_MEMORIES
  assert all(len(set(row)) == 3 for row in indices)  # k distinct memories.
  # The same indices the full forward pass sows.
  batch = next(_batches(0))
  _, state = jax.jit(
      lambda p, tokens: model.module.apply(
          {'params': p},
          tokens,
          jnp.ones((4, 2), jnp.int32),
          jnp.ones((4, 2), jnp.int32),
          enable_dropout=False,
          mutable=['intermediates'],
      )
  )(params, batch['encoder_input_tokens'])
  np.testing.assert_array_equal(
      indices[:4], state['intermediates']['retrieval_indices'][0]
  )


def test_collect_retrievals_uses_the_in_band_prompt(trained):
  model, params = trained
  with_prompt_model = models.SptModel(
      network.SptTransformer(
          T5, dataclasses.replace(model.module.spt, prompt_length=5)
      )
  )
  tokens = np.random.default_rng(0).integers(2, VOCAB, size=(4, 8))
  prompts = np.random.default_rng(1).integers(2, VOCAB, size=(4, 5))
  with_prompt = analysis.collect_retrievals(
      with_prompt_model,
      params,
      [{'encoder_input_tokens': np.concatenate([tokens, prompts], axis=1)}],
  )
  from_prompt_alone = analysis.collect_retrievals(
      model, params, [{'encoder_input_tokens': prompts}]
  )
  np.testing.assert_array_equal(with_prompt, from_prompt_alone)


def test_collect_retrievals_needs_a_memory_bank():
  model = models.SptModel(network.SptTransformer(T5))
  with pytest.raises(ValueError, match='no memory bank'):
    analysis.collect_retrievals(model, {}, [])


def test_usage_statistics():
  indices = {
      'one_memory': np.full((5, 1), 3),
      'uniform': np.arange(NUM_MEMORIES)[:, None],
      'pair': np.array([[3], [4], [3], [4]]),
  }
  counts = retrieval_stats.usage_counts(indices, NUM_MEMORIES)
  assert {k: int(v.sum()) for k, v in counts.items()} == {
      'one_memory': 5,
      'uniform': 16,
      'pair': 4,
  }
  rows = {
      r['name']: r for r in retrieval_stats.retrieval_table(counts, top_k=1)
  }
  assert rows['one_memory']['entropy_bits'] == 0.0
  assert rows['one_memory']['top_memories'] == '3:1.00'
  assert rows['uniform']['normalized_entropy'] == pytest.approx(1.0)
  assert rows['pair']['entropy_bits'] == pytest.approx(1.0)
  assert rows['pair']['distinct_memories'] == 2
  jaccard = retrieval_stats.overlap_matrix(counts, 'jaccard')
  np.testing.assert_allclose(jaccard[0], [1.0, 1 / 16, 0.5])
  cosine = retrieval_stats.overlap_matrix(counts, 'cosine')
  assert cosine[0, 2] == pytest.approx(1 / np.sqrt(2))
  with pytest.raises(ValueError, match='outside a bank of 16'):
    retrieval_stats.usage_counts({'bad': np.array([[16]])}, NUM_MEMORIES)
  grouped = retrieval_stats.group_indices(
      {
          'rte/t0': np.zeros((2, 1)),
          'rte/t1': np.ones((3, 1)),
          'cb/t0': np.ones((1, 1)),
      },
      lambda name: name.split('/')[0],
  )
  shapes = {k: v.shape for k, v in grouped.items()}
  assert shapes == {'rte': (5, 1), 'cb': (1, 1)}


def test_report_on_a_model(trained, tmp_path):
  model, params = trained
  indices = {
      f'task_{i}/template_{j}': analysis.collect_retrievals(
          model, params, _batches(i + 2 * j, num_batches=2)
      )
      for i in range(2)
      for j in range(2)
  }
  paths = analysis.write_report(indices, NUM_MEMORIES, str(tmp_path / 'report'))
  assert set(paths) == {
      'table_tsv',
      'table_md',
      'jaccard',
      'cosine',
      'counts',
      'heatmap',
  }
  for path in paths.values():
    assert os.path.getsize(path) > 0
  with open(paths['heatmap'], 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with open(paths['table_tsv']) as f:
    lines = f.read().splitlines()
  assert lines[0].split('\t') == list(retrieval_stats.TABLE_COLUMNS)
  assert len(lines) == 1 + 4
  saved = np.load(paths['counts'])
  assert list(saved['names']) == list(indices)
  # Every example's k selections are counted.
  np.testing.assert_array_equal(saved['counts'].sum(1), [8 * 3] * 4)
  for kind in ('jaccard', 'cosine'):
    matrix = retrieval_stats.overlap_matrix(
        dict(zip(saved['names'], saved['counts'])), kind
    )
    np.testing.assert_allclose(matrix, matrix.T)
    np.testing.assert_array_equal(np.diag(matrix), 1.0)
    assert np.all((matrix >= 0) & (matrix <= 1))
  with open(paths['table_md']) as f:
    assert f.readline().startswith('| name | examples |')


def _counts(sets, num_memories=NUM_MEMORIES):
  """name -> counts [M] of a template that always retrieves `sets[name]`."""
  return retrieval_stats.usage_counts(
      {
          name: np.tile(np.array(ids)[None], (4, 1))
          for name, ids in sets.items()
      },
      num_memories,
  )


def test_nearest_family_shares_ties():
  families = {'a': np.array([4, 4, 0, 0]), 'b': np.array([0, 0, 4, 4])}
  assert retrieval_stats.nearest_family(np.array([1, 1, 0, 0]), families) == {
      'a': 1.0,
      'b': 0.0,
  }
  assert retrieval_stats.nearest_family(np.array([0, 1, 1, 0]), families) == {
      'a': 0.5,
      'b': 0.5,
  }


def test_retrieval_consistency():
  counts = _counts(
      {
          'a/t0': [0, 1],
          'a/t1': [0, 1],
          'a/t2': [0, 2],
          'b/t0': [3, 4],
          'b/t1': [3, 5],
          'a/new': [1, 2],  # Nearest to a.
          'b/new': [4, 3],  # Nearest to b.
          'b/miss': [0, 1],  # Nearest to a.
          'c/held_out_family': [5, 6],  # Not a trained family: not counted.
      }
  )
  trained = ['a/t0', 'a/t1', 'a/t2', 'b/t0', 'b/t1']
  stats = retrieval_stats.retrieval_consistency(counts, trained)
  # Pairs within a: 1, 1/3, 1/3; within b: 1/3.
  assert stats['same_family_jaccard'] == pytest.approx((1 + 3 * (1 / 3)) / 4)
  assert stats['other_family_jaccard'] == 0.0
  assert stats['heldout_own_family'] == pytest.approx(100 * 2 / 3)
  assert stats['heldout_chance'] == 50.0


def _png_size(path):
  with open(path, 'rb') as f:
    header = f.read(24)
  return int.from_bytes(header[16:20], 'big'), int.from_bytes(
      header[20:24], 'big'
  )


def test_heatmap_gives_every_name_a_legible_row(tmp_path):
  # 44 templates, the synthetic study's count.
  names = [f'family_{i // 4}/template_{i % 4}' for i in range(44)]
  counts = _counts(
      {
          n: [i % NUM_MEMORIES, (i + 1) % NUM_MEMORIES]
          for i, n in enumerate(names)
      }
  )
  width, height = _png_size(
      analysis.plot_heatmap(counts, str(tmp_path / 'heatmap.png'))
  )
  # At 100 dpi each panel gives a name at least 0.25 inch: room for 8 pt labels.
  assert height >= 2 * 44 * 25
  assert width >= 44 * 25
