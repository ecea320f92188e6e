"""run_t5x.sh: the TPU launcher's dry run and its argument errors."""

import os
import shlex
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'run_t5x.sh')


def _run(*args):
  return subprocess.run([SCRIPT, *args], capture_output=True, text=True, cwd=REPO)


def test_tpu_dry_run_prints_the_exact_gcloud_commands():
  t5x_args = [
      '--gin_file=gin_configs/models/spt_t5_1_1_base.gin',
      '--gin_file=gin_configs/runs/spt_finetune.gin',
      '--gin.MODEL_DIR="gs://bucket/spt base"',
  ]
  out = _run('tpu', '--tpu', 'my-tpu', '--zone', 'us-central2-b', '--project', 'proj',
             '--dry-run', '--', *t5x_args)
  assert out.returncode == 0, out.stderr
  copy, launch = [shlex.split(line) for line in out.stdout.splitlines()]
  assert copy == [
      'gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', '--recurse',
      f'{REPO}/spt_jax', f'{REPO}/tasks', f'{REPO}/gin_configs', 'my-tpu:~/spt',
      '--zone=us-central2-b', '--worker=all', '--project=proj',
  ]
  assert launch[:9] == [
      'gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'my-tpu',
      '--zone=us-central2-b', '--worker=all', '--project=proj',
  ]
  assert launch[9].startswith('--command=')
  remote = launch[9][len('--command='):]
  # What every worker's shell runs: T5X with this repository's gin files.
  assert remote.startswith('cd ~/spt && PYTHONPATH=~/spt:${PYTHONPATH:-} python3 -m t5x.train ')
  remote_argv = shlex.split(remote.split(' && ', 1)[1])
  assert remote_argv[1:] == ['python3', '-m', 't5x.train', '--gin_search_paths=~/spt'] + t5x_args


def test_tpu_requires_name_zone_and_t5x_flags():
  out = _run('tpu', '--zone', 'z', '--', '--gin_file=x.gin')
  assert out.returncode == 2 and '--tpu NAME is required' in out.stderr
  out = _run('tpu', '--tpu', 't', '--', '--gin_file=x.gin')
  assert out.returncode == 2 and '--zone ZONE is required' in out.stderr
  out = _run('tpu', '--tpu', 't', '--zone', 'z')
  assert out.returncode == 2 and 'give the T5X flags after --' in out.stderr


def test_unknown_command_is_named():
  out = _run('fly')
  assert out.returncode == 2 and "unknown command 'fly'" in out.stderr


def test_help_prints_the_header_comment_only():
  out = _run('help')
  assert out.returncode == 0
  assert out.stdout.startswith('Sets up what is missing and runs SPT.')
  assert 'set -euo pipefail' not in out.stdout
  assert 're-synced whenever a requirements file changes.' in out.stdout


@pytest.mark.parametrize('args', [
    ['--tpu'],
    ['--tpu', '--zone', 'z', '--', '--gin_file=x.gin'],
    ['--tpu', 't', '--zone'],
])
def test_tpu_option_without_a_value_is_named(args):
  out = _run('tpu', *args)
  assert out.returncode == 2
  assert 'needs a value' in out.stderr and 'unbound variable' not in out.stderr
