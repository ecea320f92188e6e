"""Hides seqio and TensorFlow, as the GPU machine's image lacks them.

On PYTHONPATH (benchmarks/gpu_lease.sh with SMOKE=1), so that a CPU run
checks the benchmarks import and run without them.
"""

import importlib.abc
import sys

_HIDDEN = ('seqio', 'tensorflow', 'tensorflow_datasets')


class _Hide(importlib.abc.MetaPathFinder):

  def find_spec(self, fullname, path=None, target=None):
    if fullname.split('.')[0] in _HIDDEN:
      raise ModuleNotFoundError(
          f'No module named {fullname!r} (hidden: the device image has none)'
      )
    return None


sys.meta_path.insert(0, _Hide())
