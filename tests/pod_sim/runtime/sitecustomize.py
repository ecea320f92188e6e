"""The simulated pod's stand-in for the TPU runtime (tests/pod_sim/gcloud).

On a TPU VM the runtime joins the slice's hosts; here a worker's Python that
runs a training binary joins the others through JAX's distributed runtime.
"""

import os
import sys

_BINARIES = ('t5x.', 'spt_jax.')

if os.environ.get('SPT_SIM_COORDINATOR'):
  _argv = getattr(sys, 'orig_argv', [])
  if '-m' in _argv and _argv[_argv.index('-m') + 1].startswith(_BINARIES):
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')
    os.environ.setdefault('JAX_CPU_COLLECTIVES_IMPLEMENTATION', 'gloo')
    import jax  # pylint: disable=g-import-not-at-top

    jax.distributed.initialize(
        os.environ['SPT_SIM_COORDINATOR'],
        int(os.environ['SPT_SIM_WORKERS']),
        int(os.environ['SPT_SIM_WORKER']),
    )
