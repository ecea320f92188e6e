"""Two hosts on one machine: the local runner in two processes of 4 CPU devices.

Each process is a host of a simulated cluster (tests/processes.py: JAX's
distributed runtime on 127.0.0.1, gloo collectives). The runs here:

* training in two processes, both killed (kill -9) after a checkpoint, then
  resumed by the same command to its last step;
* evaluation of that run in two processes and in this one (one process, 8
  devices), and of a run trained here, in two processes: the same scores;
* the training step itself on fixed global batches, in two processes and in
  this one: the same losses and parameters (tests/multihost_step.py).

Design: every host reads its own shard of the data (data_sharding_test.py),
so the data order of a run depends on the number of hosts; the step does
not, and that is what the last test shows with identical global batches.
"""

import json
import os
import re

import gin
import numpy as np
import pytest

from spt_jax import gin_utils
from spt_jax.local import eval as eval_lib
from spt_jax.local import train as train_lib
from tasks import synthetic
from tests import processes
from tests import tasks_test_utils

TRAIN_STEPS = 40
RUN = [
    '--gin_file=gin_configs/local/synthetic.gin',
    f'--gin.MIXTURE_OR_TASK_NAME="{tasks_test_utils.SHORT_RUN_TASK}"',
    '--gin.BATCH_SIZE=8',
    '--gin.LOG_PERIOD=5',
    '--gin.CHECKPOINT_PERIOD=10',
    '--gin.EVAL_MIXTURE_OR_TASK_NAME=None',
    '--gin.EVAL_BATCH_SIZE=32',
]
EVAL_MIXTURE = synthetic.HELDOUT_TASKS_MIXTURE


def _two_process_eval(model_dir, output_dir, log_dir):
  """Accuracy per task from `spt_jax.local.eval` in two processes."""
  cluster = processes.Cluster(
      'spt_jax.local.eval',
      [
          f'--gin_file={model_dir}/config.gin',
          f'--gin.EVAL_MIXTURE_OR_TASK_NAME="{EVAL_MIXTURE}"',
          f'--gin.EVAL_OUTPUT_DIR="{output_dir}"',
      ],
      log_dir,
  )
  assert '"tasks"' in cluster.wait()[0]
  [name] = [n for n in os.listdir(output_dir) if n.startswith('eval_results_')]
  with open(os.path.join(output_dir, name)) as f:
    return name, json.load(f)['tasks']


def _eval_here(model_dir, output_dir):
  """Accuracy per task from `eval.run_eval` in this process (8 devices)."""
  gin.clear_config()
  try:
    gin_utils.parse_gin(
        [f'{model_dir}/config.gin'],
        [
            f'EVAL_MIXTURE_OR_TASK_NAME = "{EVAL_MIXTURE}"',
            f'EVAL_OUTPUT_DIR = "{output_dir}"',
        ],
        entry=eval_lib.run_eval,
    )
    return gin.get_configurable(eval_lib.run_eval)().tasks
  finally:
    gin.clear_config()


@pytest.fixture(scope='module')
def two_process_run(tmp_path_factory):
  """A run of 2 processes, killed after checkpoint 10 and resumed to the end."""
  root = tmp_path_factory.mktemp('two_processes')
  model_dir = str(root / 'run')
  args = RUN + [
      f'--gin.MODEL_DIR="{model_dir}"',
      f'--gin.TRAIN_STEPS={TRAIN_STEPS}',
  ]
  first = processes.Cluster('spt_jax.local.train', args, str(root / 'first'))
  first.wait_for(
      lambda: os.path.isdir(os.path.join(model_dir, 'checkpoints', '10'))
  )
  first.kill()
  second = processes.Cluster('spt_jax.local.train', args, str(root / 'second'))
  return model_dir, second.wait()


def test_both_processes_killed_then_resumed_to_the_end(two_process_run):
  model_dir, outputs = two_process_run
  for output in outputs:
    resumed = int(re.search(r'Resumed from step (\d+)', output).group(1))
    assert 10 <= resumed < TRAIN_STEPS
  summary = json.loads(outputs[0][outputs[0].rindex('\n{\n') :])
  assert summary['step'] == TRAIN_STEPS
  assert np.isfinite(summary['metrics']['loss'])
  assert '"step"' not in outputs[1]  # One summary, from process 0.
  steps = sorted(
      int(s) for s in os.listdir(os.path.join(model_dir, 'checkpoints'))
  )
  assert steps[-1] == TRAIN_STEPS


def test_two_process_checkpoint_scores_the_same_in_one_process(
    two_process_run, tmp_path
):
  model_dir, _ = two_process_run
  name, two = _two_process_eval(
      model_dir, str(tmp_path / 'two'), str(tmp_path / 'logs')
  )
  assert name == f'eval_results_{TRAIN_STEPS}.json'
  one = _eval_here(model_dir, str(tmp_path / 'one'))
  assert len(two) == 8 and two.keys() == one.keys()
  for task in one:
    assert two[task] == pytest.approx(one[task], abs=1e-6), task


def test_one_process_checkpoint_scores_the_same_in_two_processes(tmp_path):
  model_dir = str(tmp_path / 'run')
  gin.clear_config()
  try:
    gin_utils.parse_gin(
        ['gin_configs/local/synthetic.gin'],
        [
            f'MODEL_DIR = "{model_dir}"',
            'TRAIN_STEPS = 10',
            f'MIXTURE_OR_TASK_NAME = "{tasks_test_utils.SHORT_RUN_TASK}"',
            'BATCH_SIZE = 8',
            'EVAL_MIXTURE_OR_TASK_NAME = None',
            'EVAL_BATCH_SIZE = 32',
        ],
        entry=train_lib.train,
    )
    gin.get_configurable(train_lib.train)(progress_bar=False)
  finally:
    gin.clear_config()
  one = _eval_here(model_dir, str(tmp_path / 'one'))
  _, two = _two_process_eval(
      model_dir, str(tmp_path / 'two'), str(tmp_path / 'logs')
  )
  assert two.keys() == one.keys()
  for task in one:
    assert two[task] == pytest.approx(one[task], abs=1e-6), task


def test_two_processes_compute_the_one_process_step(tmp_path):
  """Same global batches: the same losses and parameters, 2 x 4 devices vs 8."""
  from tests import multihost_step  # pylint: disable=g-import-not-at-top

  output = str(tmp_path / 'two.npz')
  processes.Cluster(
      'tests.multihost_step', [f'--output={output}'], str(tmp_path / 'logs')
  ).wait()
  losses, params = multihost_step.run_steps()
  two = np.load(output)
  np.testing.assert_allclose(two['losses'], losses, rtol=1e-5)
  assert sorted(set(two.files) - {'losses', 'step_times'}) == sorted(params)
  for name, value in params.items():
    np.testing.assert_allclose(
        two[name], value, rtol=1e-4, atol=1e-6, err_msg=name
    )
