"""The benchmarks run on the GPU machine's image: no seqio, no TensorFlow.

benchmarks/gpu_lease.sh runs them there with gin-config carried; here the
same imports and a training step's construction run with seqio and
TensorFlow hidden (tests/device_image/sitecustomize.py).
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROGRAM = """
import sys
from benchmarks import bank_scaling, gpu_mfu, step_time
from spt_jax.local import trainer
from spt_jax.model import config, models, network
from spt_jax.optim import sparse_updates
model = models.SptModel(network.SptTransformer(
    config.t5_1_1_config('tiny'),
    config.SptConfig(num_memories=8, memory_length=2, top_k=2,
                     key_gradient='sampled', key_samples=4)))
optimizer = sparse_updates.sparse_bank_optimizer(
    trainer.adafactor(), 'adam', 1e-3, keys=True)
trainer.make_train_step(model, optimizer)
assert 'seqio' not in sys.modules and 'tensorflow' not in sys.modules
print('IMPORTED')
"""


def test_benchmarks_need_neither_seqio_nor_tensorflow():
  env = {
      **os.environ,
      'JAX_PLATFORMS': 'cpu',
      'PYTHONPATH': os.pathsep.join(
          [os.path.join(REPO, 'tests', 'device_image'), REPO]
      ),
  }
  done = subprocess.run(
      [sys.executable, '-c', _PROGRAM],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
      check=False,
  )
  assert done.returncode == 0 and 'IMPORTED' in done.stdout, done.stderr[-3000:]
  # The hook is in place: seqio itself is refused.
  refused = subprocess.run(
      [sys.executable, '-c', 'import seqio'],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=60,
      check=False,
  )
  assert 'hidden' in refused.stderr
