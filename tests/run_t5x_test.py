"""run_t5x.sh: its commands, its help, and where it runs Python."""

import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'run_t5x.sh')


def _run(*args):
  return subprocess.run(
      [SCRIPT, *args], capture_output=True, text=True, cwd=REPO
  )


def test_unknown_command_is_named():
  out = _run('fly')
  assert out.returncode == 2 and "unknown command 'fly'" in out.stderr


def test_help_prints_the_header_comment_only():
  out = _run('help')
  assert out.returncode == 0
  assert out.stdout.startswith('Sets up what is missing and runs SPT.')
  assert 'set -euo pipefail' not in out.stdout
  assert 're-synced whenever a requirements file changes.' in out.stdout


def test_relative_paths_mean_what_they_mean_in_the_callers_folder(tmp_path):
  """`run_t5x.sh` runs Python in the caller's folder, with the repository
  importable (the virtualenv's Python is stood in by a shell script)."""
  venv = tmp_path / 'venv'
  (venv / 'bin').mkdir(parents=True)
  (venv / 'bin' / 'python').write_text(
      '#!/bin/sh\necho "cwd=$(pwd) pythonpath=$PYTHONPATH args=$*"\n'
  )
  (venv / 'bin' / 'python').chmod(0o755)
  stamp = subprocess.run(
      f'cat {REPO}/requirements*.txt | sha256sum | cut -d" " -f1',
      shell=True,
      capture_output=True,
      text=True,
      check=True,
  ).stdout.strip()
  (venv / '.spt-requirements-requirements.txt.sha256').write_text(stamp + '\n')
  caller = tmp_path / 'my_project'
  caller.mkdir()
  out = subprocess.run(
      [SCRIPT, 'train', '--gin_file=my.gin', '--gin.MODEL_DIR="runs/x"'],
      capture_output=True,
      text=True,
      cwd=caller,
      env={**os.environ, 'SPT_VENV': str(venv), 'PYTHONPATH': '/mine'},
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == [
      f'cwd={caller}',
      f'pythonpath={REPO}:/mine',
      'args=-m',
      'spt_jax.local.train',
      '--gin_file=my.gin',
      '--gin.MODEL_DIR="runs/x"',
  ]
