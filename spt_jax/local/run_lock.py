"""One run per MODEL_DIR: an advisory lock held for the whole run.

Two processes training into one MODEL_DIR would interleave their checkpoints,
`config.gin` and TensorBoard logs without any error. `RunLock` takes an
exclusive `flock` on `MODEL_DIR/.lock`; a second run fails at once with a
`ModelDirInUse` naming the holder (its pid, host, start time and command, which
the holder writes into the file). The kernel drops the lock when the holding
process ends, however it ends, so a run killed with `kill -9` leaves nothing
stale: the same command resumes it.

The lock is re-entrant within a process (a notebook or test that trains into
the same folder twice). In multi-host runs only process 0 takes it: the other
hosts are the same run. `flock` works on local disks and on NFS (Linux turns it
into an NFS lock); on file systems without locks (some FUSE mounts) the lock
is not taken and a warning says so.

This module imports nothing heavy, so that tools and tests can hold a lock
without starting JAX.
"""

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading
from typing import Dict

from absl import logging

from spt_jax import gin_utils

LOCK_FILE = '.lock'

# Lock files held by this process: path -> [open file, times taken].
_HELD: Dict[str, list] = {}
_HELD_GUARD = threading.Lock()


class ModelDirInUse(gin_utils.ConfigError):
  """Another live process holds the MODEL_DIR; the message names it."""


def _holder_description(text: str) -> str:
  """'pid 12 on host h since 2024-01-01 10:00:00 (python ...)' from a lock."""
  try:
    holder = json.loads(text)
    description = (
        f'pid {holder["pid"]} on host {holder["host"]} since '
        f'{holder["started"]}'
    )
    if holder.get('command'):
      description += f' ({holder["command"]})'
    return description
  except (ValueError, KeyError, TypeError):
    # The holder has taken the lock but not yet written its name.
    return 'another process'


class RunLock:
  """An exclusive, re-entrant lock on a MODEL_DIR (a context manager).

  Attributes:
    path: the lock file, `<model_dir>/.lock`.
  """

  def __init__(self, model_dir: str):
    self.path = os.path.realpath(os.path.join(model_dir, LOCK_FILE))
    self.model_dir = model_dir

  def acquire(self) -> None:
    """Takes the lock, or fails at once if another process holds it.

    Raises:
      ModelDirInUse: another live process holds the lock; the message names
        it and the way out.
    """
    with _HELD_GUARD:
      held = _HELD.get(self.path)
      if held is not None:
        held[1] += 1
        return
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      # 'a+' neither truncates a holder's description nor fails if absent.
      f = open(self.path, 'a+')  # pylint: disable=consider-using-with
      try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
          f.close()
          logging.warning(
              'Cannot lock %s (%s): this file system has no locks, so nothing '
              'stops a second run from training into %s at the same time.',
              self.path,
              e.strerror or e,
              self.model_dir,
          )
          _HELD[self.path] = [None, 1]
          return
        f.seek(0)
        holder = _holder_description(f.read())
        f.close()
        raise ModelDirInUse(
            f'MODEL_DIR {self.model_dir} is in use by another run: '
            f'{holder}. Wait for it to finish or stop it, or train into '
            'another MODEL_DIR.'
        ) from None
      f.seek(0)
      f.truncate()
      f.write(
          json.dumps(
              {
                  'pid': os.getpid(),
                  'host': socket.gethostname(),
                  'started': datetime.datetime.now().isoformat(
                      sep=' ', timespec='seconds'
                  ),
                  'command': ' '.join(sys.argv)[:300],
              }
          )
      )
      f.flush()
      _HELD[self.path] = [f, 1]

  def release(self) -> None:
    """Gives the lock back once every `acquire` of this process is matched."""
    with _HELD_GUARD:
      held = _HELD.get(self.path)
      if held is None:
        return
      held[1] -= 1
      if held[1] == 0:
        del _HELD[self.path]
        if held[0] is not None:
          held[0].close()  # Closing the last descriptor drops the flock.

  def __enter__(self) -> 'RunLock':
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
