"""`run_t5x.sh tpu` against a simulated two-worker TPU VM on this machine.

The commands are checked as a real worker would receive them (dry runs), then
run for real through a stand-in `gcloud` (tests/pod_sim/gcloud): `setup` in
both workers' homes (a stand-in `uv` records the installs), and `train`,
which starts a two-process job (gloo on CPU in place of the TPU runtime,
tests/pod_sim/runtime) that writes its checkpoints, `logs`, `stop`, and the
same launch again, which resumes. What this cannot check: libtpu and the TPU
runtime themselves, and the real downloads of `setup`.
"""

import json
import os
import shlex
import subprocess
import sys
import time

import pytest

from spt_jax.launch import tpu_pod
from tests import tasks_test_utils
from tests import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'run_t5x.sh')
SIM = os.path.join(REPO, 'tests', 'pod_sim')
WHERE = ['--tpu', 'my-tpu', '--zone', 'us-central2-b']


def _run(args, root=None, env=None, timeout=300):
  """`run_t5x.sh tpu ARGS`, always with the stand-in gcloud first on PATH."""
  full_env = {**os.environ, **(env or {})}
  full_env.update(
      PATH=SIM + os.pathsep + os.environ['PATH'],
      SPT_SIM_ROOT=str(root or '/nonexistent'),
      SPT_SIM_PYTHON=sys.executable,
      XLA_FLAGS=xla_flags.xla_flags(4),
      JAX_PLATFORMS='cpu',
      TF_CPP_MIN_LOG_LEVEL='3',
  )
  return subprocess.run(
      [SCRIPT, 'tpu', *args],
      capture_output=True,
      text=True,
      env=full_env,
      timeout=timeout,
      cwd=REPO,
  )


def _dry_run(*args, env=None):
  out = _run([args[0], '--dry-run', *args[1:]], env=env)
  assert out.returncode == 0, out.stderr
  return [shlex.split(line) for line in out.stdout.splitlines()]


def _remote(command):
  assert command[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh']
  assert command[5:8] == ['my-tpu', '--zone=us-central2-b', '--worker=all']
  assert command[-1].startswith('--command=')
  return command[-1][len('--command=') :]


def test_train_copies_the_project_and_starts_a_detached_job_per_worker():
  args = [
      '--gin_file=gin_configs/runs/spt_finetune.gin',
      '--gin.MODEL_DIR="gs://bucket/spt base"',
  ]
  mkdir, copy, launch = _dry_run(
      'train',
      *WHERE,
      '--env',
      'EXTRA=a b',
      '--',
      *args,
      env={'SPT_VOCAB_PATH': '/data/spiece.model'},
  )
  assert _remote(mkdir) == 'mkdir -p "$HOME/spt"'
  assert copy[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp']
  assert copy[6:] == [
      'my-tpu:spt/code.tar.gz',
      '--zone=us-central2-b',
      '--worker=all',
  ]
  steps = _remote(launch).split('; ')
  assert steps[0] == 'set -euo pipefail'
  assert 'is still running on $(hostname): stop it first' in _remote(launch)
  start = [s for s in steps if 'setsid nohup' in s][0]
  assert start == (
      "EXTRA='a b' SPT_VOCAB_PATH=/data/spiece.model "
      'PYTHONPATH="$HOME/spt/code${PYTHONPATH:+:$PYTHONPATH}" setsid nohup '
      '"$HOME/spt/venv/bin/python" -m t5x.train '
      '"--gin_search_paths=$HOME/spt/code" '
      '--gin_file=gin_configs/runs/spt_finetune.gin '
      + shlex.quote('--gin.MODEL_DIR="gs://bucket/spt base"')
      + ' >> "$HOME/spt/logs/train.log" 2>&1 < /dev/null & '
      'echo $! > "$HOME/spt/logs/train.pid"'
  )


def test_setup_installs_the_pinned_jax_tpu_and_the_tested_t5x():
  *_, setup = _dry_run('setup', *WHERE)
  script = _remote(setup)
  assert f'uv venv --python 3.11 "$HOME/spt/venv"' in script
  assert f'"jax[tpu]=={tpu_pod.jax_version()}"' in script
  assert '-r "$HOME/spt/code/requirements.txt"' in script
  assert '--no-deps ' + ' '.join(tpu_pod.T5X_PACKAGES) in script


def test_bad_launches_are_one_line_errors():
  out = _run(['train', *WHERE])
  assert (
      out.returncode == 2
      and 'give the flags of t5x.train after --' in out.stderr
  )
  out = _run(['infer', *WHERE, '--runner=local', '--', 'x'])
  assert out.returncode == 2 and '--runner=local has no infer' in out.stderr
  out = _run(['train', *WHERE, '--remote_dir', '~/spt', '--', 'x'])
  assert out.returncode == 2 and '--remote_dir' in out.stderr
  out = _run(['train', '--zone', 'z', '--', 'x'])
  assert out.returncode == 2 and '--tpu' in out.stderr


def _jobs_running(root):
  for i in range(2):
    pid_file = root / f'worker_{i}' / 'spt' / 'logs' / 'train.pid'
    if pid_file.exists():
      try:
        os.kill(int(pid_file.read_text()), 0)
        return True
      except ProcessLookupError:
        pass
  return False


def _wait(predicate, timeout=300):
  deadline = time.time() + timeout
  while not predicate():
    assert time.time() < deadline, 'timed out'
    time.sleep(0.5)


def test_simulated_pod_setup_train_logs_stop_and_resume(tmp_path):
  root = tmp_path / 'pod'
  root.mkdir()
  out = _run(['setup', *WHERE], root)
  assert out.returncode == 0, out.stdout + out.stderr
  for i in range(2):
    calls = (root / f'worker_{i}' / 'uv_calls.txt').read_text().splitlines()
    home = root / f'worker_{i}'
    assert calls[0] == f'venv --python 3.11 {home}/spt/venv'
    assert calls[1].startswith(
        f'pip install --python {home}/spt/venv/bin/python '
        f'jax[tpu]=={tpu_pod.jax_version()} -r '
    )
    assert (home / 'spt' / 'code' / 'spt_jax' / 'local' / 'train.py').exists()

  model_dir = tmp_path / 'model'
  launch = [
      'train',
      *WHERE,
      '--runner=local',
      '--',
      '--gin_file=gin_configs/local/synthetic.gin',
      f'--gin.MODEL_DIR="{model_dir}"',
      '--gin.TRAIN_STEPS=2000',
      '--gin.CHECKPOINT_PERIOD=10',
      '--gin.BATCH_SIZE=8',
      f'--gin.MIXTURE_OR_TASK_NAME="{tasks_test_utils.SHORT_RUN_TASK}"',
      '--gin.EVAL_MIXTURE_OR_TASK_NAME=None',
  ]
  out = _run(launch, root)
  assert out.returncode == 0, out.stdout + out.stderr
  assert out.stdout.count('train started on') == 2
  checkpoints = model_dir / 'checkpoints'
  try:
    _wait(lambda: (checkpoints / '10').is_dir())
    again = _run(launch, root)
    assert again.returncode == 1 and 'still running' in again.stdout
    logs = _run(['logs', *WHERE, '--lines', '200'], root)
    assert 'train starts' in logs.stdout and 'Gloo' in logs.stdout
  finally:
    stop = _run(['stop', *WHERE, '--grace', '120'], root)
  assert stop.returncode == 0 and stop.stdout.count('train stopped') == 2
  assert not _jobs_running(root)
  # SIGTERM: the local runner saved its step before exiting.
  stopped_at = max(int(s) for s in os.listdir(checkpoints))
  assert stopped_at >= 10

  launch[launch.index('--gin.TRAIN_STEPS=2000')] = (
      f'--gin.TRAIN_STEPS={stopped_at + 10}'
  )
  out = _run(launch, root)
  assert out.returncode == 0, out.stdout + out.stderr
  _wait(lambda: not _jobs_running(root))
  for i in range(2):
    log = (root / f'worker_{i}' / 'spt' / 'logs' / 'train.log').read_text()
    assert log.count('train starts') == 2
    assert f'Resumed from step {stopped_at}' in log
  assert (checkpoints / str(stopped_at + 10)).is_dir()
  summary = (root / 'worker_0' / 'spt' / 'logs' / 'train.log').read_text()
  assert (
      json.loads(summary[summary.rindex('\n{\n') :])['step'] == stopped_at + 10
  )
