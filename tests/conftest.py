"""Test-session setup shared by every test module.

Eight fake CPU devices let the sharding tests build real meshes; the flag must be set
before JAX is first imported, so it lives here rather than in the tests.
"""
import os
import sys
import tempfile

import pytest

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Many tests (and the runs they start as subprocesses) compile the same small
# models and train steps; XLA's persistent cache compiles each program once
# per machine instead of once per test and process.
os.environ.setdefault(
    'JAX_COMPILATION_CACHE_DIR',
    os.path.join(tempfile.gettempdir(), 'spt_jax_test_compilation_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

# The repository root holds the `spt_jax` and `tasks` packages.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
  """Keeps each module on one xdist worker (`--dist loadgroup`).

  Module-scoped fixtures (trained runs, compiled models) are built by every
  worker that runs a test of the module; split over two workers, they were
  built twice. A module may still spread its tests over workers by marking
  them with groups of its own (t5x_binaries_test's chains of runs).
  """
  for item in items:
    if item.get_closest_marker('xdist_group') is None:
      item.add_marker(pytest.mark.xdist_group(item.module.__name__))
