r"""The training step in two processes x 4 CPU devices against one process x 8.

    python -m benchmarks.multihost_step [--steps=23]

Runs `tests/multihost_step.py` (tiny SPT, bank over all 8 devices, mesh
data 4 x model 2, global batch 8) both ways, one after the other, and prints
the median step time of each after the first 3 steps (compilation) and their
ratio. The two processes join through JAX's distributed runtime with gloo
collectives on 127.0.0.1, as the multi-host tests do.
"""

import os
import subprocess
import sys
import tempfile

from absl import app
from absl import flags
import numpy as np

from tests import processes

_STEPS = flags.DEFINE_integer('steps', 23, 'Steps per run, 3 of them warm-up.')


def _median_step(output: str) -> float:
  return float(np.median(np.load(output)['step_times'][3:]))


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    one = os.path.join(tmp, 'one.npz')
    subprocess.run(
        [
            sys.executable,
            '-m',
            'tests.multihost_step',
            f'--output={one}',
            f'--steps={_STEPS.value}',
        ],
        cwd=processes.REPO,
        env=processes.process_env(devices=8),
        check=True,
        capture_output=True,
    )
    two = os.path.join(tmp, 'two.npz')
    cluster = processes.Cluster(
        'tests.multihost_step',
        [f'--output={two}', f'--steps={_STEPS.value}'],
        os.path.join(tmp, 'logs'),
    )
    for proc in cluster.procs:
      if proc.wait():
        sys.exit(cluster.output(0)[-3000:])
    t1, t2 = _median_step(one), _median_step(two)
  print(f'one process x 8 devices:   {1e3 * t1:8.1f} ms/step')
  print(f'two processes x 4 devices: {1e3 * t2:8.1f} ms/step')
  print(f'ratio (two / one):         {t2 / t1:8.2f}')


if __name__ == '__main__':
  app.run(main)
