"""Tests of `python -m tasks.show`."""

import os
import subprocess
import sys

from tasks import show


def test_lists_mixtures_and_tasks(capsys):
  assert show.main(['--list']) == 0

  out = capsys.readouterr().out
  for mixture in (
      'spt_t0_train',
      'spt_t0_heldout',
      'spt_glue',
      'spt_super_glue',
      'spt_synthetic_train',
      'spt_synthetic_heldout',
  ):
    assert f'  {mixture}  (' in out
  assert 'spt_t0__super_glue_cb__premise_entails__score  splits=validation' in (
      out
  )
  assert 'spt_synthetic__first__give_first  splits=train,validation' in out


def test_prints_preprocessed_examples(capsys):
  assert show.main(['spt_synthetic_train', '--num_examples', '2']) == 0

  out = capsys.readouterr().out
  assert out.count('--- spt_synthetic_train [train] example') == 2
  for feature in ('inputs', 'targets', 'prompt'):
    assert f'  {feature}: [' in out


def test_prints_rank_classification_rows(capsys):
  name = 'spt_synthetic__has_color__among_the_words__score'
  assert show.main([name, '--num_examples', '2']) == 0

  out = capsys.readouterr().out
  assert f'--- {name} [validation] example 1' in out
  assert 'idx: [0, 1]' in out
  assert 'is_correct:' in out


def test_unknown_name(capsys):
  assert show.main(['no_such_task']) == 2
  assert "no task or mixture named 'no_such_task'" in capsys.readouterr().err


def test_runs_as_a_module():
  result = subprocess.run(
      [
          sys.executable,
          '-m',
          'tasks.show',
          'spt_synthetic_heldout_tasks',
          '--num_examples',
          '1',
          '--split',
          'validation',
      ],
      capture_output=True,
      text=True,
      check=False,
      timeout=120,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'Mixture spt_synthetic_heldout_tasks: 8 tasks' in result.stdout
