"""A user's own task, as README.md's "Training SPT on your own task" writes it.

The user's package lives outside the repository, with its templates beside
it; the README's Python snippet and template file are used as written. One
tiny run trains on 8 devices (module fixture); the tests then list and show
the tasks, evaluate from the run's `config.gin` alone on 1 device (after a
`kill -9` of a first evaluation), fall back from a damaged latest checkpoint,
and stop a run started from the checkpoint on 2 devices with SIGINT.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tasks import vocab
from tests import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_FLAGS = [
    '--gin_file=gin_configs/local/train.gin',
    '--gin_file=gin_configs/sizes/tiny.gin',
    '--gin.MIXTURE_OR_TASK_MODULE="my_tasks"',
    '--gin.MIXTURE_OR_TASK_NAME="my_train"',
    '--gin.EVAL_MIXTURE_OR_TASK_NAME="my_eval"',
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 4}",
    '--gin.VOCAB_SIZE=640',  # The offline vocabulary: 512 pieces + 100 ids.
    '--gin.SptConfig.num_memories=8',
    '--gin.SptConfig.memory_length=2',
    '--gin.SptConfig.top_k=2',
    '--gin.BATCH_SIZE=8',
    '--gin.EVAL_BATCH_SIZE=8',
    '--gin.LOG_PERIOD=2',
]


def _readme_blocks(language):
  with open(os.path.join(REPO, 'README.md')) as f:
    readme = f.read()
  section = readme[readme.index('## Training SPT on your own task') :]
  section = section[: section.index('\n## ', 1)]
  return re.findall(rf'```{language}\n(.*?)```', section, re.DOTALL)


def _env(project, devices):
  env = dict(os.environ)
  env.update(
      {
          'PYTHONPATH': os.pathsep.join([str(project), REPO]),
          'SPT_VOCAB_PATH': vocab.SYNTHETIC_VOCAB_PATH,
          'SPT_DATA_DIR': str(project / 'data'),
          'XLA_FLAGS': xla_flags.xla_flags(devices),
      }
  )
  return env


def _run(project, args, devices=8, timeout=240, **kwargs):
  return subprocess.run(
      [sys.executable, *args],
      cwd=REPO,
      env=_env(project, devices),
      capture_output=True,
      text=True,
      timeout=timeout,
      **kwargs,
  )


@pytest.fixture(scope='module')
def project(tmp_path_factory):
  """The user's project: the README's module and templates, and JSONL data."""
  root = tmp_path_factory.mktemp('my_project')
  (root / 'my_tasks.py').write_text(_readme_blocks('python')[0])
  (root / 'my_dataset.json').write_text(_readme_blocks('json')[0])
  words = ['red', 'sky', 'tree', 'stone', 'blue', 'cat', 'sun', 'bird']
  for split, n in (('train', 64), ('validation', 8)):
    (root / 'data' / 'my_dataset').mkdir(parents=True, exist_ok=True)
    with open(root / 'data' / 'my_dataset' / f'{split}.jsonl', 'w') as f:
      for i in range(n):
        question = f'Is {words[i % 8]} a {words[(i * 3) % 8]}?'
        f.write(json.dumps({'question': question, 'label': i % 2}) + '\n')
  return root


@pytest.fixture(scope='module')
def trained(project):
  """MODEL_DIR of a 4-step run on 8 devices, checkpoints at 0, 2 and 4."""
  model_dir = project / 'run'
  out = _run(
      project,
      [
          '-m',
          'spt_jax.local.train',
          *TRAIN_FLAGS,
          f'--gin.MODEL_DIR="{model_dir}"',
          '--gin.TRAIN_STEPS=4',
          '--gin.CHECKPOINT_PERIOD=2',
      ],
      timeout=400,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads(out.stdout[out.stdout.index('{') :])
  assert summary['step'] == 4
  assert set(summary['eval']) == {'my_dataset'}  # Evaluated, not `{}`.
  return model_dir


def test_show_lists_and_prints_the_users_tasks(project):
  out = _run(project, ['-m', 'tasks.show', '--list', '--module', 'my_tasks'])
  assert out.returncode == 0, out.stderr
  assert '  my_train  (1 tasks)' in out.stdout
  assert 'my_collection__my_dataset__yes_or_no__score  splits=' in out.stdout

  out = _run(
      project,
      [
          '-m',
          'tasks.show',
          'my_collection__my_dataset__yes_or_no',
          '--module',
          'my_tasks',
          '--num_examples',
          '1',
      ],
  )
  assert out.returncode == 0, out.stderr
  assert "or no?'" in out.stdout  # The offline vocabulary has no capitals.

  out = _run(project, ['-m', 'tasks.show', 'my_train'])
  assert out.returncode == 2 and '--module MODULE' in out.stderr


def test_gs_vocabulary_offline_is_one_line(project):
  env = _env(project, 1)
  del env['SPT_VOCAB_PATH']  # The default gs:// path, without network.
  out = subprocess.run(
      [sys.executable, '-m', 'tasks.show', 'my_train', '--module', 'my_tasks'],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert out.returncode == 1
  assert 'SPT_VOCAB_PATH' in out.stderr and 'Traceback' not in out.stderr


def test_run_writes_its_config_and_evaluation_reads_it_alone(project, trained):
  config = trained / 'config.gin'
  assert "MIXTURE_OR_TASK_MODULE = 'my_tasks'" in config.read_text()
  args = ['-m', 'spt_jax.local.eval', f'--gin_file={config}']
  # A first evaluation, on 1 device, killed hard once it runs.
  first = subprocess.Popen(
      [sys.executable, *args],
      cwd=REPO,
      env=_env(project, 1),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
  )
  time.sleep(12)
  first.send_signal(signal.SIGKILL)
  first.wait(timeout=30)

  out = _run(project, args, devices=1)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads(out.stdout[out.stdout.index('{') :])
  assert 0 <= results['datasets']['my_dataset']['mean'] <= 100
  assert json.loads((trained / 'eval' / 'eval_results_4.json').read_text())


def test_damaged_latest_checkpoint_falls_back_to_the_previous(project, trained):
  model_dir = project / 'damaged'
  shutil.copytree(trained, model_dir)
  (model_dir / 'checkpoints' / '4' / 'default' / '_METADATA').unlink()
  out = _run(
      project,
      [
          '-m',
          'spt_jax.local.train',
          *TRAIN_FLAGS,
          f'--gin.MODEL_DIR="{model_dir}"',
          '--gin.TRAIN_STEPS=3',
          '--gin.EVAL_MIXTURE_OR_TASK_NAME=None',
      ],
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert f'{model_dir}/checkpoints/4' in out.stderr
  assert sorted(os.listdir(model_dir / 'damaged_checkpoints')) == ['4']
  assert sorted(os.listdir(model_dir / 'checkpoints')) == ['0', '2', '3']


def test_sigint_saves_the_last_step_of_a_run_on_other_devices(project, trained):
  model_dir = project / 'interrupted'
  run = subprocess.Popen(
      [
          sys.executable,
          '-m',
          'spt_jax.local.train',
          *TRAIN_FLAGS,
          f'--gin.MODEL_DIR="{model_dir}"',
          '--gin.TRAIN_STEPS=100000',
          '--gin.CHECKPOINT_PERIOD=100000',
          '--gin.EVAL_MIXTURE_OR_TASK_NAME=None',
          f'--gin.INITIAL_CHECKPOINT_PATH="{trained}"',
      ],
      cwd=REPO,
      env=_env(project, 2),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )
  deadline = time.time() + 200
  while not os.path.isdir(model_dir / 'train') and time.time() < deadline:
    time.sleep(0.5)
  time.sleep(3)
  run.send_signal(signal.SIGINT)
  _, err = run.communicate(timeout=120)

  assert run.returncode == 130, err[-3000:]
  step = int(re.search(r'saved checkpoint step (\d+)', err).group(1))
  assert step >= 1
  assert str(step) in os.listdir(model_dir / 'checkpoints')
