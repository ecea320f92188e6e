"""Variant specs and the side-by-side results table."""

import pytest

from spt_jax import compare
from spt_jax import eval as eval_lib
from spt_jax import train as train_lib


def test_parse_variant():
  assert compare.parse_variant('spt:') == ('spt', ())
  assert compare.parse_variant('pt:a.gin,b.gin') == ('pt', ('a.gin', 'b.gin'))
  with pytest.raises(ValueError, match='NAME:GIN_FILE'):
    compare.parse_variant(':a.gin')


def _result(datasets, cross_entropy):
  return train_lib.TrainResult(
      step=10, metrics={'cross_entropy': cross_entropy}, history=[],
      eval_results=eval_lib.EvalResults(tasks={}, datasets=datasets),
  )


def test_results_table_has_a_row_per_dataset_and_the_averages():
  table = compare.results_table({
      'spt': _result({'cb': {'mean': 50.0, 'median': 40.0},
                      'rte': {'mean': 70.0, 'median': 72.5}}, 1.25),
      'no_memory': _result({'cb': {'mean': 30.0, 'median': 30.0}}, 2.5),
  })
  rows = [[c.strip() for c in line.split('|')] for line in table.splitlines()]
  assert rows[0] == ['dataset', 'spt mean / median', 'no_memory mean / median']
  body = {row[0]: row[1:] for row in rows[2:]}
  assert body['cb'] == ['50.0 /  40.0', '30.0 /  30.0']
  assert body['rte'] == ['70.0 /  72.5', '-']
  assert body['average'] == ['60.0', '30.0']  # Over the datasets each has.
  assert body['train loss (last)'] == ['1.250', '2.500']
