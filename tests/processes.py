"""Several JAX processes on this machine: a simulated multi-host cluster.

Each process gets its own fake CPU devices and joins the others through JAX's
distributed runtime, a coordinator on 127.0.0.1, with gloo collectives, as
hosts of a pod slice or GPU cluster join through theirs.
"""

import os
import socket
import subprocess
import sys
import time
from typing import Mapping, Optional, Sequence

import pytest

from tests import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCESSES = 2
DEVICES_PER_PROCESS = 4
TIMEOUT_S = 600


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def process_env(
    devices: int = DEVICES_PER_PROCESS,
    extra: Optional[Mapping[str, str]] = None,
) -> dict[str, str]:
  """The environment of one simulated host: its devices, gloo, the repository."""
  return {
      **os.environ,
      'PYTHONPATH': REPO,
      'JAX_PLATFORMS': 'cpu',
      'JAX_CPU_COLLECTIVES_IMPLEMENTATION': 'gloo',
      'XLA_FLAGS': xla_flags.xla_flags(devices),
      'TF_CPP_MIN_LOG_LEVEL': '3',
      **(extra or {}),
  }


def multiprocess_flags(
    index: int, port: int, count: int = PROCESSES
) -> list[str]:
  """T5X's and the local runner's flags for process `index` of `count`."""
  return [
      f'--coordinator_address=127.0.0.1:{port}',
      f'--process_count={count}',
      f'--process_index={index}',
  ]


class Cluster:
  """`count` processes of `python -m MODULE ARGS`, started together.

  Attributes:
    procs: the processes, by index.
    logs: each process's combined output file.
  """

  def __init__(
      self,
      module: str,
      args: Sequence[str],
      log_dir: str,
      multiprocess_flag: str = '--multiprocess',
      count: int = PROCESSES,
      env=None,
  ):
    port = free_port()
    os.makedirs(log_dir, exist_ok=True)
    self.logs = [
        os.path.join(log_dir, f'process_{i}.log') for i in range(count)
    ]
    self.procs = []
    for index, log in enumerate(self.logs):
      argv = [
          sys.executable,
          '-m',
          module,
          multiprocess_flag,
          *multiprocess_flags(index, port, count),
          *args,
      ]
      with open(log, 'w') as out:
        self.procs.append(
            subprocess.Popen(
                argv,
                cwd=REPO,
                env=process_env(extra=env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

  def output(self, index: int = 0) -> str:
    with open(self.logs[index]) as f:
      return f.read()

  def _tails(self) -> str:
    return '\n'.join(
        f'--- process {i} ---\n' + '\n'.join(self.output(i).splitlines()[-40:])
        for i in range(len(self.procs))
    )

  def kill(self) -> None:
    for proc in self.procs:
      if proc.poll() is None:
        os.killpg(proc.pid, 9)
    for proc in self.procs:
      proc.wait()

  def wait(self, timeout: float = TIMEOUT_S) -> list[str]:
    """Every process's output; fails the test unless all exit with 0."""
    deadline = time.time() + timeout
    try:
      for proc in self.procs:
        proc.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      self.kill()
      pytest.fail(
          f'processes still running after {timeout} s:\n{self._tails()}'
      )
    codes = [proc.returncode for proc in self.procs]
    if any(codes):
      self.kill()
      pytest.fail(f'exit codes {codes}:\n{self._tails()}')
    return [self.output(i) for i in range(len(self.procs))]

  def wait_for(self, predicate, timeout: float = TIMEOUT_S) -> None:
    """Polls `predicate()` until it holds; fails if a process exits first."""
    deadline = time.time() + timeout
    while not predicate():
      if any(proc.poll() is not None for proc in self.procs):
        self.kill()
        pytest.fail(
            f'a process exited before the awaited state:\n{self._tails()}'
        )
      if time.time() > deadline:
        self.kill()
        pytest.fail(f'not reached after {timeout} s:\n{self._tails()}')
      time.sleep(0.2)
