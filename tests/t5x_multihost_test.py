"""`t5x.train` in two processes x 4 CPU devices, then `t5x.eval` on its checkpoint.

The GPU-cluster form of T5X's multi-host start-up (`--multiprocess_gpu
--coordinator_address --process_count --process_index`), with gloo in place
of NCCL (tests/processes.py).
"""

import glob
import os

import numpy as np

from spt_jax.checkpoints import t5x_checkpoints
from tasks import synthetic
from tests import processes
from tests import t5x_test_utils

t5x_test_utils.import_t5x()

STEPS = 20
FILES = [
    'gin_configs/models/spt_t5_1_1_tiny.gin',
    'gin_configs/runs/spt_pretrain.gin',
    'gin_configs/mixtures/synthetic.gin',
]


def test_two_process_training_then_evaluation(tmp_path):
  model_dir = str(tmp_path / 'run')
  args = [f'--gin_search_paths={processes.REPO}']
  args += [f'--gin_file={f}' for f in FILES]
  args += [
      f'--gin.MODEL_DIR="{model_dir}"',
      f'--gin.TRAIN_STEPS={STEPS}',
      '--gin.utils.SaveCheckpointConfig.period=10',
      '--gin.BATCH_SIZE=8',
      '--gin.RANDOM_SEED=0',
      '--gin.__main__.train.train_eval_dataset_cfg=None',
  ]
  processes.Cluster(
      't5x.train',
      args,
      str(tmp_path / 'logs'),
      multiprocess_flag='--multiprocess_gpu',
  ).wait()
  for step in (0, 10, STEPS):
    assert os.path.isdir(os.path.join(model_dir, f'checkpoint_{step}'))
  first, last = (
      t5x_checkpoints.load_t5x_params(
          os.path.join(model_dir, f'checkpoint_{s}')
      )
      for s in (0, STEPS)
  )
  assert not np.array_equal(
      first['memory_bank']['keys'], last['memory_bank']['keys']
  )

  output_dir = str(tmp_path / 'eval')
  t5x_test_utils.run_binary(
      't5x.eval',
      [FILES[0], 'gin_configs/runs/spt_eval.gin', FILES[2]],
      [
          f'CHECKPOINT_PATH = "{model_dir}/checkpoint_{STEPS}"',
          f'EVAL_OUTPUT_DIR = "{output_dir}"',
          f'MIXTURE_OR_TASK_NAME = "{synthetic.HELDOUT_TASKS_MIXTURE}"',
      ],
  )
  metrics = glob.glob(
      os.path.join(output_dir, 'inference_eval', '*__score-metrics.jsonl')
  )
  assert len(metrics) == 8
