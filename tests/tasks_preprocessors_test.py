"""Tests of `apply_template` and `rank_classification`."""

import numpy as np
import tensorflow as tf

from tasks import preprocessors
from tasks import prompt_templates

_TEMPLATE = prompt_templates.Template(
    name='pick',
    jinja='Pick the {{ kind }}: {{ options.text | join(", ") }} ||| '
    '{{ answer_choices[label] }}',
    answer_choices="{{ options.text | join(' ||| ') }}",
)


def _raw():
  return tf.data.Dataset.from_tensor_slices(
      {
          'kind': ['fruit', 'tool', 'color'],
          'label': tf.constant([1, -1, 0], tf.int64),
          'options': {
              'text': tf.ragged.constant(
                  [['cat', 'apple'], ['saw', 'red'], ['red', 'pear', 'hoe']]
              )
          },
          'id': tf.constant([10, 11, 12], tf.int32),
      }
  ).map(lambda ex: {**ex, 'options': {'text': ex['options']['text']}})


def test_apply_template_renders_and_drops_unlabelled():
  ds = preprocessors.apply_template(
      _raw(), _TEMPLATE, keep_features={'example_id': 'id'}
  )

  examples = list(ds.as_numpy_iterator())

  assert len(examples) == 2  # The label -1 example is dropped.
  assert examples[0]['inputs'] == b'Pick the fruit: cat, apple'
  assert examples[0]['targets'] == b'apple'
  assert examples[0]['prompt'] == b'Pick the:'
  np.testing.assert_array_equal(
      examples[0]['answer_choices'], [b'cat', b'apple']
  )
  assert examples[0]['example_id'] == 10
  assert examples[1]['targets'] == b'red'
  assert examples[1]['example_id'] == 12
  assert ds.element_spec['answer_choices'].shape.as_list() == [None]


def test_rank_classification_makes_one_row_per_choice():
  ds = preprocessors.rank_classification(
      preprocessors.apply_template(_raw(), _TEMPLATE)
  )

  rows = list(ds.as_numpy_iterator())

  assert [r['targets'] for r in rows] == [
      b'cat',
      b'apple',
      b'red',
      b'pear',
      b'hoe',
  ]
  np.testing.assert_array_equal(
      [r['idx'] for r in rows], [[0, 0], [0, 1], [1, 0], [1, 1], [1, 2]]
  )
  assert [bool(r['is_correct']) for r in rows] == [
      False,
      True,
      True,
      False,
      False,
  ]
  assert all(r['inputs'] == b'Pick the color: red, pear, hoe' for r in rows[2:])
  assert all(r['prompt'] == b'Pick the:' for r in rows)
  assert set(rows[0]) == {'inputs', 'targets', 'prompt', 'idx', 'is_correct'}
  assert ds.element_spec['idx'].dtype == tf.int32


def test_to_python_converts_nested_numpy_values():
  value = {
      'a': np.array([b'x', b'y'], dtype=object),
      'b': np.int64(3),
      'c': {'d': np.array(b'z', dtype=object)},
      'e': np.float32(0.5),
  }
  assert preprocessors.to_python(value) == {
      'a': ['x', 'y'],
      'b': 3,
      'c': {'d': 'z'},
      'e': 0.5,
  }
