"""What the tests that need T5X share: the import, its test vocabulary, its binaries.

T5X is not on PyPI. Where it is missing these tests skip, unless
`SPT_REQUIRE_T5X=1` (set by .ci/run, which installs it) makes that an error,
so that CI cannot pass with the T5X path untested.
"""

import os
import subprocess
import sys
from typing import Sequence

import pytest
import seqio

from tests import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRE_T5X_ENV = 'SPT_REQUIRE_T5X'
# The 26-piece SentencePiece model that seqio's wheel ships.
SEQIO_TEST_VOCAB = os.path.join(
    os.path.dirname(seqio.__file__),
    'test_data/sentencepiece/sentencepiece.model',
)
# T5X can hang in TensorFlow's iterator teardown after an error: never wait
# for a binary longer than this.
BINARY_TIMEOUT_S = 600


def import_t5x():
  """`import t5x`, or skip the calling module (fail under SPT_REQUIRE_T5X)."""
  if os.environ.get(REQUIRE_T5X_ENV) == '1':
    import t5x  # pylint: disable=g-import-not-at-top

    return t5x
  return pytest.importorskip('t5x')


def run_binary(
    module: str,
    gin_files: Sequence[str],
    bindings: Sequence[str],
    cwd: str = REPO,
    env=None,
    check: bool = True,
) -> subprocess.CompletedProcess:
  """Runs `python -m <module>` (a T5X binary) on gin files and bindings.

  With `check`, fails the test with the output's tail when the binary exits
  non-zero.
  """
  command = [sys.executable, '-m', module, f'--gin_search_paths={REPO}']
  command += [f'--gin_file={f}' for f in gin_files]
  command += [f'--gin.{b}' for b in bindings]
  # `env` overrides the defaults, XLA_FLAGS included (e.g. more devices).
  full_env = {
      **os.environ,
      'PYTHONPATH': REPO,
      'JAX_PLATFORMS': 'cpu',
      'XLA_FLAGS': xla_flags.xla_flags(1),
      'TF_CPP_MIN_LOG_LEVEL': '3',
      **(env or {}),
  }
  result = subprocess.run(
      command,
      cwd=cwd,
      env=full_env,
      capture_output=True,
      text=True,
      timeout=BINARY_TIMEOUT_S,
      check=False,
  )
  if check and result.returncode:
    pytest.fail(
        f'{" ".join(command)} exited {result.returncode}:\n'
        + '\n'.join((result.stdout + result.stderr).splitlines()[-60:])
    )
  return result
