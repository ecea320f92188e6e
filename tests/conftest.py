"""Test-session setup shared by every test module.

Eight fake CPU devices let the sharding tests build real meshes, and XLA compiles
without LLVM's expensive passes (xla_flags.py); the flags must be set before JAX is
first imported, so they live here rather than in the tests.
"""

import os
import tempfile

from tests import xla_flags

os.environ.setdefault('XLA_FLAGS', xla_flags.xla_flags(8))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Many tests (and the runs they start as subprocesses) compile the same small
# models and train steps; XLA's persistent cache compiles each program once
# per machine instead of once per test and process.
os.environ.setdefault(
    'JAX_COMPILATION_CACHE_DIR',
    os.path.join(tempfile.gettempdir(), 'spt_jax_test_compilation_cache'),
)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')


# `--dist loadfile` hands modules to the workers in collection order: the
# modules that run whole trainings in subprocesses go first, so that the short
# ones fill in at the end instead of one long module running alone.
_LONG_MODULES = (
    't5x_binaries_test',
    'train_test',
    'newcomer_test',
    'multihost_test',
    't5x_multihost_test',
)


def pytest_collection_modifyitems(items):
  items.sort(
      key=lambda item: item.module.__name__.rsplit('.', 1)[-1]
      not in _LONG_MODULES
  )
