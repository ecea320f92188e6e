"""The local runner end to end on the offline mixture: train, resume, evaluate."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from spt_jax import gin_utils
from spt_jax.local import train as train_lib
from spt_jax.local import train_checkpoints
from tests import tasks_test_utils
from tests import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_RUN = [
    f'MIXTURE_OR_TASK_NAME = "{tasks_test_utils.SHORT_RUN_TASK}"',
    'BATCH_SIZE = 8',
    'LOG_PERIOD = 5',
    'EVAL_MIXTURE_OR_TASK_NAME = None',
]


def _train(model_dir, *bindings, files=('gin_configs/local/synthetic.gin',)):
  gin.clear_config()
  try:
    gin_utils.parse_gin(
        list(files), SMALL_RUN + [f'MODEL_DIR = "{model_dir}"'] + list(bindings)
    )
    return gin.get_configurable(train_lib.train)(progress_bar=False)
  finally:
    gin.clear_config()


def _cli(model_dir, *bindings, env_devices=None):
  """`python -m spt_jax.local.train` as a subprocess (argv, env)."""
  argv = [
      sys.executable,
      '-m',
      'spt_jax.local.train',
      '--gin_file=gin_configs/local/synthetic.gin',
      f'--gin.MODEL_DIR="{model_dir}"',
  ]
  argv += [f'--gin.{b.replace(" = ", "=")}' for b in SMALL_RUN + list(bindings)]
  env = dict(os.environ)
  if env_devices:
    env['XLA_FLAGS'] = xla_flags.xla_flags(env_devices)
  return argv, env


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A 40-step run (checkpoints 0, 20, 40) that the tests below only read."""
  model_dir = str(tmp_path_factory.mktemp('trained') / 'run')
  return model_dir, _train(
      model_dir, 'TRAIN_STEPS = 40', 'CHECKPOINT_PERIOD = 20'
  )


def test_train_checkpoint_resume_and_evaluate(trained, tmp_path):
  trained_dir, first = trained
  assert first.step == 40
  losses = [m['loss'] for _, m in first.history]
  assert losses[-1] < losses[0] - 0.5, losses
  assert sorted(os.listdir(os.path.join(trained_dir, 'checkpoints'))) == [
      '0',
      '20',
      '40',
  ]
  assert os.listdir(os.path.join(trained_dir, 'train'))  # TensorBoard events.

  model_dir = str(tmp_path / 'run')
  shutil.copytree(trained_dir, model_dir)
  resumed = _train(
      model_dir,
      'TRAIN_STEPS = 50',
      'CHECKPOINT_PERIOD = 20',
      'EVAL_MIXTURE_OR_TASK_NAME = "spt_synthetic_heldout_tasks"',
  )
  assert [step for step, _ in resumed.history] == [45, 50]
  assert resumed.history[0][1]['loss'] < losses[0]
  datasets = resumed.eval_results.datasets
  assert set(datasets) == {'category_last', 'cipher_first'}
  for stats in datasets.values():
    assert 0.0 <= stats['median'] <= 100.0 and stats['num_templates'] == 4
  with open(os.path.join(model_dir, 'eval', 'eval_results_50.json')) as f:
    assert json.load(f)['datasets'].keys() == datasets.keys()


def test_sparse_bank_run_resumes_exactly(tmp_path):
  """Lazy Adam's row slots (values and sampled keys) are checkpointed:
  resuming from step 2 gives the uninterrupted run's step 4, parameters and
  slots alike."""
  files = (
      'gin_configs/local/synthetic.gin',
      'gin_configs/local/sparse_bank.gin',
      'gin_configs/local/sampled_keys.gin',
  )
  through = str(tmp_path / 'through')
  _train(through, 'TRAIN_STEPS = 4', 'CHECKPOINT_PERIOD = 2', files=files)
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(through, resumed)
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '4'))
  _train(resumed, 'TRAIN_STEPS = 4', 'CHECKPOINT_PERIOD = 2', files=files)

  def read(model_dir):
    with ocp.StandardCheckpointer() as checkpointer:
      return jax.device_get(
          checkpointer.restore(
              os.path.join(model_dir, 'checkpoints', '4', 'default')
          )
      )

  expected, actual = read(through), read(resumed)
  assert jax.tree.structure(expected) == jax.tree.structure(actual)
  row_slots = {
      jax.tree_util.keystr(path): leaf
      for path, leaf in jax.tree_util.tree_leaves_with_path(expected)
      if 'mu' in jax.tree_util.keystr(path)
  }
  assert len(row_slots) == 2, row_slots.keys()  # Values and keys.
  assert all(np.any(leaf) for leaf in row_slots.values())
  jax.tree.map(np.testing.assert_array_equal, expected, actual)


def test_frozen_backbone_changes_only_spt_parameters(tmp_path):
  model_dir = str(tmp_path / 'frozen')
  _train(
      model_dir,
      'TRAIN_STEPS = 5',
      files=(
          'gin_configs/local/synthetic.gin',
          'gin_configs/local/frozen_backbone.gin',
      ),
  )
  store = train_checkpoints.TrainCheckpoints(model_dir)
  before, after = store.restore_params(0), store.restore_params(5)
  for group in before:
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(before[group]), jax.tree.leaves(after[group])
        )
    ]
    if group == 'memory_bank':
      assert all(changed)
    else:
      assert not any(changed), f'{group} changed with a frozen backbone'


def test_sharded_run_matches_a_single_device_run(tmp_path):
  """8 fake devices (data 4 x model 2) in-process vs 1 device in a subprocess."""
  if jax.device_count() < 8:
    pytest.skip('needs 8 devices')
  bindings = ['TRAIN_STEPS = 10', 'DROPOUT_RATE = 0.0']
  sharded = _train(str(tmp_path / 'sharded'), *bindings, 'NUM_PARTITIONS = 2')
  argv, env = _cli(str(tmp_path / 'single'), *bindings, env_devices=1)
  out = subprocess.run(
      argv, env=env, cwd=REPO, capture_output=True, text=True, check=True
  )
  single = json.loads(out.stdout[out.stdout.index('{') :])
  assert single['step'] == sharded.step == 10
  np.testing.assert_allclose(
      sharded.metrics['loss'], single['metrics']['loss'], rtol=1e-4
  )


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
  model_dir = str(tmp_path / 'killed')
  argv, env = _cli(model_dir, 'TRAIN_STEPS = 100000', 'CHECKPOINT_PERIOD = 5')
  process = subprocess.Popen(
      argv,
      env=env,
      cwd=REPO,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
  )
  checkpoint_dir = os.path.join(model_dir, 'checkpoints')
  deadline = time.time() + 240
  try:
    while time.time() < deadline:
      if os.path.isdir(os.path.join(checkpoint_dir, '10')):
        break
      time.sleep(0.5)
    else:
      pytest.fail('no checkpoint at step 10 within 4 minutes')
  finally:
    process.send_signal(signal.SIGKILL)
    process.wait()
  last = train_checkpoints.TrainCheckpoints(model_dir).latest_step()
  assert last >= 10
  resumed = _train(
      model_dir, f'TRAIN_STEPS = {last + 5}', 'CHECKPOINT_PERIOD = 5'
  )
  assert resumed.history[0][0] == last + 5
  assert resumed.step == last + 5


def test_missing_macro_is_named():
  gin.clear_config()
  try:
    with pytest.raises(gin_utils.ConfigError, match='MODEL_DIR'):
      gin_utils.parse_gin(
          ['gin_configs/local/train.gin'],
          [
              'MIXTURE_OR_TASK_NAME = "spt_synthetic_train"',
              'TRAIN_STEPS = 1',
              "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 8}",
          ],
      )
  finally:
    gin.clear_config()


def test_unknown_task_fails_at_start_with_its_name(tmp_path):
  argv, env = _cli(
      str(tmp_path / 'x'),
      'MIXTURE_OR_TASK_NAME = "no_such_mixture"',
      'TRAIN_STEPS = 1',
  )
  out = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True)
  assert out.returncode == 2
  assert "Unknown mixture or task 'no_such_mixture'" in out.stderr
  assert 'Traceback' not in out.stderr
  assert not os.path.exists(tmp_path / 'x' / 'checkpoints')


def test_retrieval_analysis_of_a_trained_run(trained, tmp_path):
  """The analysis command's work on an offline-mixture model: table and PNG."""
  from spt_jax.model import models  # pylint: disable=g-import-not-at-top
  from spt_jax.model import network  # pylint: disable=g-import-not-at-top
  from spt_jax.study import analysis  # pylint: disable=g-import-not-at-top

  model_dir, _ = trained
  gin.clear_config()
  try:
    gin_utils.parse_gin(
        ['gin_configs/local/synthetic.gin'], [f'MODEL_DIR = "{model_dir}"']
    )
    model = models.SptModel(gin.get_configurable(network.SptTransformer)())
    lengths = gin.query_parameter('%TASK_FEATURE_LENGTHS')
  finally:
    gin.clear_config()
  paths = analysis.analyze(
      model=model,
      model_dir=model_dir,
      mixture_or_task_names=['spt_synthetic_heldout_gen'],
      task_feature_lengths=lengths,
      output_dir=str(tmp_path / 'analysis'),
      group_by='dataset',
  )
  with open(paths['table_tsv']) as f:
    rows = [line.split('\t') for line in f.read().splitlines()]
  assert rows[0][:3] == ['name', 'examples', 'distinct_memories']
  families = {r[0] for r in rows[1:]}
  assert {'category_last', 'cipher_first', 'first'} <= families
  with open(paths['heatmap'], 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
