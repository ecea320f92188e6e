r"""Runs SPT on every worker of a Cloud TPU VM pod slice (standard library only).

    ./run_t5x.sh tpu ACTION --tpu NAME --zone ZONE [--project P] [options] [-- ARGS]

Actions:
  setup    on every worker: a Python 3.11 virtualenv ($DIR/venv, through uv),
           `jax[tpu]` at the pinned jax version (libtpu with it), this
           project's requirements.txt, and T5X, airio and jestimator at the
           tested commits (--no-deps, their PyPI imports from
           requirements-t5x.txt)
  train    copy the project, then start `python -m t5x.train ARGS` (or
  eval       t5x.eval, t5x.infer; `--runner=local`: spt_jax.local.train or
  infer      spt_jax.local.eval --multiprocess) on every worker, detached, its
           output appended to $DIR/logs/JOB.log on each worker; running the
           same command again after a stop or a preemption resumes from the
           last checkpoint in MODEL_DIR
  logs     the last `--lines` lines of each worker's log
  stop     SIGTERM to each worker's job (SIGKILL after `--grace` seconds)

$DIR is `--remote_dir` (default `spt`, in each worker's home folder). The
variables the tasks read (SPT_VOCAB_PATH, SPT_DATA_DIR, SPT_P3_DIR,
SPT_PROMPTSOURCE_DIR, TFDS_DATA_DIR) are forwarded when set here, and
`--env NAME[=VALUE]` forwards others. `--dry-run` prints the gcloud commands
instead of running them.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
from typing import Mapping, Optional, Sequence

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
# What the workers need: the code, the gin files and the pins.
PROJECT_FILES = (
    'spt_jax',
    'tasks',
    'gin_configs',
    'requirements.txt',
    'requirements-t5x.txt',
)
FORWARDED_ENV = (
    'SPT_VOCAB_PATH',
    'SPT_DATA_DIR',
    'SPT_P3_DIR',
    'SPT_PROMPTSOURCE_DIR',
    'TFDS_DATA_DIR',
)
PYTHON_VERSION = '3.11'
# The commits the project is tested with (README, "Dependencies").
T5X_PACKAGES = (
    'git+https://github.com/google-research/t5x@cc342d419ec3e3e9c4bf1df33c82330cafdc1e16',
    'git+https://github.com/google/airio@69897df7d9a427b947a9f7bb4164c7782b43e601',
    'git+https://github.com/google-research/jestimator@326824a477feef6d92e6f44175000907a72899ca',
)
MODULES = {
    't5x': {'train': 't5x.train', 'eval': 't5x.eval', 'infer': 't5x.infer'},
    'local': {'train': 'spt_jax.local.train', 'eval': 'spt_jax.local.eval'},
}
_SAFE_PATH = re.compile(r'^[A-Za-z0-9_./-]+$')


class LaunchError(ValueError):
  """A launch that cannot be made as asked; printed as one line."""


def jax_version(
    requirements: str = os.path.join(REPO, 'requirements.txt')
) -> str:
  with open(requirements) as f:
    match = re.search(r'^jax==(\S+)$', f.read(), re.MULTILINE)
  if not match:
    raise LaunchError(f'{requirements} pins no jax version (jax==X).')
  return match.group(1)


def remote_dir_expr(remote_dir: str) -> str:
  """The folder as the worker's shell expands it ($HOME for a relative one)."""
  if not _SAFE_PATH.match(remote_dir):
    raise LaunchError(
        f'--remote_dir {remote_dir!r}: use letters, digits and _ . / - only.'
    )
  return remote_dir if remote_dir.startswith('/') else f'$HOME/{remote_dir}'


def forwarded_env(
    names: Sequence[str], environ: Mapping[str, str]
) -> list[str]:
  """NAME=VALUE words, shell-quoted, of the variables the workers get."""
  values = {n: environ[n] for n in FORWARDED_ENV if n in environ}
  for item in names:
    name, sep, value = item.partition('=')
    if not re.match(r'^[A-Za-z_][A-Za-z0-9_]*$', name):
      raise LaunchError(f'--env {item!r}: expected NAME or NAME=VALUE.')
    if not sep:
      if name not in environ:
        raise LaunchError(f'--env {name}: {name} is not set here.')
      value = environ[name]
    values[name] = value
  return [f'{n}={shlex.quote(v)}' for n, v in sorted(values.items())]


def unpack_script(d: str) -> str:
  return (
      f'rm -rf "{d}/code" && mkdir -p "{d}/code" && '
      f'tar -xzf "{d}/code.tar.gz" -C "{d}/code"'
  )


def setup_script(d: str, version: str) -> str:
  """What `setup` runs on every worker."""
  python = f'"{d}/venv/bin/python"'
  packages = ' '.join(shlex.quote(p) for p in T5X_PACKAGES)
  return '; '.join(
      [
          'set -euo pipefail',
          unpack_script(d),
          'export PATH="$HOME/.local/bin:$PATH"',
          'command -v uv >/dev/null || python3 -m pip install --user --quiet uv',
          f'[ -x {python} ] || uv venv --python {PYTHON_VERSION} "{d}/venv"',
          f'uv pip install --python {python} "jax[tpu]=={version}" '
          f'-r "{d}/code/requirements.txt" -r "{d}/code/requirements-t5x.txt"',
          f'uv pip install --python {python} --no-deps {packages}',
          f'{python} -c "import jax, t5x.train; print(jax.__version__, jax.device_count())"',
      ]
  )


def launch_script(
    d: str,
    job: str,
    module: str,
    args: Sequence[str],
    env: Sequence[str],
    copied: Sequence[str] = (),
) -> str:
  """What `train` / `eval` / `infer` run on every worker: the job, detached."""
  log, pid = f'"{d}/logs/{job}.log"', f'"{d}/logs/{job}.pid"'
  if module.startswith('t5x.'):
    argv = ['-m', module, f'--gin_search_paths={d}/code']
  else:
    argv = ['-m', module, '--multiprocess']
  # The remote folder expands in the worker's shell; user words never do.
  words = ' '.join(f'"{w}"' if '$HOME' in w else w for w in argv) + ''.join(
      ' ' + shlex.quote(a) for a in args
  )
  path = ':'.join([f'{d}/code'] + [f'{d}/code/{name}' for name in copied])
  command = ' '.join(
      [
          *env,
          f'PYTHONPATH="{path}${{PYTHONPATH:+:$PYTHONPATH}}"',
          'setsid nohup',
          f'"{d}/venv/bin/python"',
          words,
      ]
  )
  return '; '.join(
      [
          'set -euo pipefail',
          f'mkdir -p "{d}/logs"',
          f'if [ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null; then '
          f'echo "{job} is still running on $(hostname): stop it first" >&2; exit 1; fi',
          unpack_script(d),
          f'cd "{d}/code"',
          f'echo "=== $(date -u +%FT%TZ) {job} starts" >> {log}',
          f'{command} >> {log} 2>&1 < /dev/null & echo $! > {pid}',
          f'echo "{job} started on $(hostname), log: {d}/logs/{job}.log"',
      ]
  )


def logs_script(d: str, job: str, lines: int) -> str:
  return f'tail -n {lines} "{d}/logs/{job}.log" | ' 'sed "s/^/[$(hostname)] /"'


def stop_script(d: str, job: str, grace: int) -> str:
  pid = f'"{d}/logs/{job}.pid"'
  return '; '.join(
      [
          f'if [ ! -f {pid} ]; then echo "no {job} on $(hostname)"; exit 0; fi',
          f'p="$(cat {pid})"',
          'kill -TERM -- "-$p" 2>/dev/null || true',
          f'for _ in $(seq {grace}); do kill -0 "$p" 2>/dev/null || break; sleep 1; done',
          'kill -KILL -- "-$p" 2>/dev/null || true',
          f'rm -f {pid}',
          f'echo "{job} stopped on $(hostname)"',
      ]
  )


def bundle(paths: Sequence[str], out: str) -> None:
  """A tarball of the project files (and `--copy` folders), without caches."""

  def keep(info):
    return (
        None
        if '__pycache__' in info.name or info.name.endswith('.pyc')
        else info
    )

  with tarfile.open(out, 'w:gz') as tar:
    for path in paths:
      tar.add(path, arcname=os.path.basename(path.rstrip('/')), filter=keep)


def gcloud_commands(
    options: argparse.Namespace,
    args: Sequence[str],
    bundle_path: str,
    environ: Optional[Mapping[str, str]] = None,
) -> list[list[str]]:
  """The gcloud commands of an action, in order."""
  environ = os.environ if environ is None else environ
  d = remote_dir_expr(options.remote_dir)
  where = [f'--zone={options.zone}', '--worker=all']
  if options.project:
    where.append(f'--project={options.project}')
  tpu = ['gcloud', 'compute', 'tpus', 'tpu-vm']

  def ssh(script):
    return tpu + ['ssh', options.tpu, *where, f'--command={script}']

  # scp's remote path is relative to the worker's home, as remote_dir is.
  copy = [
      ssh(f'mkdir -p "{d}"'),
      tpu
      + [
          'scp',
          bundle_path,
          f'{options.tpu}:{options.remote_dir}/code.tar.gz',
          *where,
      ],
  ]
  action = options.action
  if action == 'setup':
    return copy + [ssh(setup_script(d, jax_version()))]
  if action in ('train', 'eval', 'infer'):
    modules = MODULES[options.runner]
    if action not in modules:
      raise LaunchError(f'--runner={options.runner} has no {action}.')
    if not args:
      raise LaunchError(
          f'{action}: give the flags of {modules[action]} after --, e.g. -- '
          '--gin_file=gin_configs/models/spt_t5_1_1_base.gin ...'
      )
    env = forwarded_env(options.env, environ)
    copied = [os.path.basename(c.rstrip('/')) for c in options.copy]
    return copy + [
        ssh(
            launch_script(
                d, options.job or action, modules[action], args, env, copied
            )
        )
    ]
  job = options.job or 'train'
  if action == 'logs':
    return [ssh(logs_script(d, job, options.lines))]
  return [ssh(stop_script(d, job, options.grace))]


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  argv = list(argv)
  args = argv[argv.index('--') + 1 :] if '--' in argv else []
  argv = argv[: argv.index('--')] if '--' in argv else argv
  parser = argparse.ArgumentParser(
      prog='run_t5x.sh tpu',
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
      'action', choices=('setup', 'train', 'eval', 'infer', 'logs', 'stop')
  )
  parser.add_argument('--tpu', required=True, help='the TPU VM name')
  parser.add_argument('--zone', required=True)
  parser.add_argument('--project', default=None)
  parser.add_argument(
      '--remote_dir',
      default='spt',
      help='folder on each worker (relative: in its home)',
  )
  parser.add_argument('--runner', choices=sorted(MODULES), default='t5x')
  parser.add_argument(
      '--job',
      default=None,
      help='log and pid name (default: the action; logs and '
      'stop default to train)',
  )
  parser.add_argument(
      '--env',
      action='append',
      default=[],
      help='NAME or NAME=VALUE to set on the workers',
  )
  parser.add_argument(
      '--copy',
      action='append',
      default=[],
      help='another folder to copy, e.g. your task module',
  )
  parser.add_argument('--lines', type=int, default=50)
  parser.add_argument(
      '--grace',
      type=int,
      default=60,
      help='seconds between SIGTERM and SIGKILL',
  )
  parser.add_argument('--dry-run', action='store_true')
  return parser.parse_args(argv), args


def main(argv: Sequence[str]) -> int:
  options, args = parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    bundle_path = os.path.join(tmp, 'spt-code.tar.gz')
    try:
      commands = gcloud_commands(options, args, bundle_path)
    except LaunchError as e:
      print(f'run_t5x.sh tpu: {e}', file=sys.stderr)
      return 2
    if options.dry_run:
      for command in commands:
        print(shlex.join(command))
      return 0
    missing = [c for c in options.copy if not os.path.isdir(c)]
    if missing:
      print(
          f'run_t5x.sh tpu: --copy {missing[0]}: no such folder',
          file=sys.stderr,
      )
      return 2
    bundle(
        [os.path.join(REPO, p) for p in PROJECT_FILES] + options.copy,
        bundle_path,
    )
    for command in commands:
      code = subprocess.run(command, check=False).returncode
      if code:
        print(
            f'run_t5x.sh tpu: {shlex.join(command[:5])} ... exited {code}',
            file=sys.stderr,
        )
        return code
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
