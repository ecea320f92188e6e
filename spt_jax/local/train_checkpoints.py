"""The local runner's checkpoints, and the loader of its starting parameters.

`TrainCheckpoints` saves and restores the runner's sharded train states with
orbax under `<model_dir>/checkpoints`; every step records the SHA-256 of its
files, and a restore verifies them. `run_settings.check_resumable` compares
a run's recorded settings (`<model_dir>/run_settings.json`) with those of the
command that resumes it. `load_params` reads whichever starting point the runner is
given (a pretrained Hugging Face or T5X checkpoint, a `convert_checkpoint`
output, or a run's MODEL_DIR), and `merge_params` puts it onto freshly
initialised parameters.
"""

import concurrent.futures
import errno
import hashlib
import json
import os
from typing import Any, Dict, Mapping, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from spt_jax.checkpoints import hf_checkpoints
from spt_jax.checkpoints import t5x_checkpoints

Params = Dict[str, Any]


def merge_params(
    initial: Params, pretrained: Params, where: str = ''
) -> Params:
  """`initial` with every leaf that `pretrained` has replaced by it.

  Parameters only `initial` has (the memory bank, the soft prompt) keep their
  initial values; a pretrained leaf with no place, or of another shape, is an
  error.
  """
  merged = dict(initial)
  for name, value in pretrained.items():
    path = f'{where}/{name}' if where else name
    if name not in initial:
      raise ValueError(
          f'Pretrained parameter {path!r} has no place in the network.'
      )
    if isinstance(value, Mapping):
      merged[name] = merge_params(initial[name], value, path)
    else:
      if tuple(np.shape(value)) != tuple(np.shape(initial[name])):
        raise ValueError(
            f'Pretrained parameter {path!r} has shape {np.shape(value)}, the '
            f'network expects {np.shape(initial[name])}.'
        )
      merged[name] = np.asarray(value, np.float32)
  return merged


# The folder of a step that holds the train state (the manager's one item).
_ITEM = 'default'


class CheckpointError(RuntimeError):
  """A checkpoint cannot be read or written; the message names the step folder."""


class CorruptCheckpoint(CheckpointError):
  """A step's files do not match the checksums recorded when it was saved."""


# The file in each step folder that lists the SHA-256 and size of every other
# file of the step, and what the runner keeps with the step (its metrics).
MANIFEST = 'spt_manifest.json'
_HASH_CHUNK = 16 << 20


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    while chunk := f.read(_HASH_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def _hash_files(root: str, names: list[str]) -> Dict[str, str]:
  """The SHA-256 of each file under `root`, hashed in parallel.

  hashlib releases the GIL on large buffers, so threads use several cores on
  the shards of a large checkpoint.
  """
  workers = min(8, os.cpu_count() or 1, max(1, len(names)))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    digests = pool.map(lambda n: _sha256(os.path.join(root, n)), names)
    return dict(zip(names, digests))


def _step_files(step_dir: str) -> list[str]:
  """Every file of a step folder but the manifest, relative and sorted."""
  names = []
  for folder, _, files in os.walk(step_dir):
    for name in files:
      relative = os.path.relpath(os.path.join(folder, name), step_dir)
      if relative not in (MANIFEST, MANIFEST + '.tmp'):
        names.append(relative)
  return sorted(names)


def _no_space_left(error: BaseException) -> bool:
  """Whether an error (or one it was raised from) is a full disk."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if 'No space left on device' in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def first_line(error: BaseException) -> str:
  text = str(error).strip()
  line = text.splitlines()[0] if text else ''
  return f'{type(error).__name__}: {line[:300]}'


class TrainCheckpoints:
  """The local runner's checkpoints: orbax steps under `<model_dir>/checkpoints`.

  Orbax writes each step to a temporary folder and renames it when complete,
  so a run killed mid-save resumes from the last whole checkpoint and older
  checkpoints are never overwritten. Once a step is written, process 0 records
  the SHA-256 of its files in `<step>/spt_manifest.json`; every restore checks
  them first, so that a flipped byte is found before it changes a score or
  turns the loss into NaN. A step whose files do not match (or are missing) is
  reported by step and file; `restore_latest` moves it to
  `<model_dir>/damaged_checkpoints/` and falls back to the step before it. A
  step that verifies but cannot be read (a checkpoint of another model) is
  reported and left in place. Steps saved before checksums were recorded are
  restored unverified, with a warning.
  Checkpoints restore onto any number of devices: the caller's target layout,
  or this host's first device, replaces the layout they were saved with.
  """

  def __init__(self, model_dir: str, max_to_keep: Optional[int] = 3):
    self.model_dir = os.path.abspath(model_dir)
    self.directory = os.path.join(self.model_dir, 'checkpoints')
    self._max_to_keep = max_to_keep
    self._manager = self._new_manager()

  def _new_manager(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=self._max_to_keep, create=True
        ),
        item_handlers=ocp.StandardCheckpointHandler(),
    )

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(
      self, step: int, state: Any, metadata: Optional[Mapping[str, Any]] = None
  ) -> None:
    """Saves a train state (any pytree of arrays); waits for the write.

    Args:
      step: the step number.
      state: the train state.
      metadata: JSON-serialisable notes kept with the step (process 0's are
        written), returned by `metadata(step)`.

    Raises:
      CheckpointError: the write failed; a full disk is named as such.
    """
    try:
      self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
      self._manager.wait_until_finished()
      if jax.process_index() == 0:
        # After `wait_until_finished` every host's files are committed.
        self._write_manifest(step, metadata or {})
    except Exception as e:  # pylint: disable=broad-except
      previous = [s for s in self.all_steps() if s < step]
      kept = (
          f'the last complete checkpoint is step {previous[-1]}'
          if previous
          else 'no earlier checkpoint exists'
      )
      if _no_space_left(e):
        raise CheckpointError(
            f'No space left on device while writing checkpoint step {step} '
            f'to {self.step_dir(step)}; {kept}. Free disk space (or point '
            'MODEL_DIR at a larger disk) and run again to resume.'
        ) from None
      raise CheckpointError(
          f'Cannot write checkpoint step {step} to {self.step_dir(step)} '
          f'({first_line(e)}); {kept}.'
      ) from e

  def _manifest_path(self, step: int) -> str:
    return os.path.join(self.step_dir(step), MANIFEST)

  def _write_manifest(self, step: int, metadata: Mapping[str, Any]) -> None:
    step_dir = self.step_dir(step)
    names = _step_files(step_dir)
    digests = _hash_files(step_dir, names)
    manifest = {
        'files': {
            n: {
                'size': os.path.getsize(os.path.join(step_dir, n)),
                'sha256': digests[n],
            }
            for n in names
        },
        'metadata': dict(metadata),
    }
    path = self._manifest_path(step)
    with open(path + '.tmp', 'w') as f:
      json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(path + '.tmp', path)

  def _manifest(self, step: int) -> Optional[Dict[str, Any]]:
    """The step's manifest, or None for a step saved without one."""
    try:
      with open(self._manifest_path(step)) as f:
        return json.load(f)
    except FileNotFoundError:
      return None
    except (OSError, ValueError) as e:
      raise CorruptCheckpoint(
          f'Checkpoint step {step} in {self.step_dir(step)} is corrupt: its '
          f'manifest {MANIFEST} cannot be read ({first_line(e)}).'
      ) from None

  def metadata(self, step: int) -> Dict[str, Any]:
    """The notes saved with a step ({} for a step saved without any)."""
    try:
      return dict((self._manifest(step) or {}).get('metadata', {}))
    except CheckpointError:
      return {}

  def verify(self, step: int) -> bool:
    """Checks a step's files against the checksums saved with it.

    Returns:
      True when verified; False for a step saved without checksums (a run of
      an earlier version, or one stopped between its save and the manifest),
      which is logged.

    Raises:
      CorruptCheckpoint: a file is missing or its size or SHA-256 differs;
        the message names the step and the file.
    """
    manifest = self._manifest(step)
    step_dir = self.step_dir(step)
    if manifest is None:
      logging.warning(
          'Checkpoint step %d in %s has no checksums (%s); restoring it '
          'unverified.',
          step,
          step_dir,
          MANIFEST,
      )
      return False
    files = manifest.get('files', {})
    for name, expected in sorted(files.items()):
      path = os.path.join(step_dir, name)
      problem = None
      if not os.path.isfile(path):
        problem = 'is missing'
      elif os.path.getsize(path) != expected['size']:
        problem = (
            f'has {os.path.getsize(path)} bytes instead of '
            f'{expected["size"]}'
        )
      if problem:
        raise CorruptCheckpoint(
            f'Checkpoint step {step} in {step_dir} is corrupt: its file '
            f'{name} {problem}.'
        )
    digests = _hash_files(step_dir, sorted(files))
    for name in sorted(files):
      if digests[name] != files[name]['sha256']:
        raise CorruptCheckpoint(
            f'Checkpoint step {step} in {step_dir} is corrupt: its file '
            f'{name} does not match the checksum saved with it.'
        )
    return True

  def _read(self, step: int, target: Any, partial: bool = False) -> Any:
    """Restores `target`'s structure; with `partial`, a subtree of the state."""
    try:
      if partial:
        with ocp.PyTreeCheckpointer() as checkpointer:
          return checkpointer.restore(
              os.path.join(self.step_dir(step), _ITEM),
              args=ocp.args.PyTreeRestore(
                  item=target,
                  restore_args=ocp.checkpoint_utils.construct_restore_args(
                      target
                  ),
                  partial_restore=True,
              ),
          )
      return self._manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f'Checkpoint step {step} in {self.step_dir(step)} cannot be read '
          f'({first_line(e)}). It was written by a different model, or is '
          'damaged; nothing was moved: delete or move that folder to use the '
          'step before it.'
      ) from None

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> Any:
    """Restores into the structure, shapes and shardings of `abstract_state`.

    Raises:
      CorruptCheckpoint: the step's files fail verification.
      CheckpointError: the step cannot be read.
    """
    step = self._require_step(step)
    self.verify(step)
    return self._read(step, abstract_state)

  def restore_latest(self, abstract_state: Any) -> Optional[tuple[int, Any]]:
    """(step, state) of the newest sound checkpoint, or None if none exist.

    A step whose files fail verification is moved to
    `<model_dir>/damaged_checkpoints/` (with a warning naming it and the
    file) and the step before it is tried, so that the run resumes from there
    and later saves do not collide with it. A step that verifies but cannot
    be read into `abstract_state` is not damage (a different model wrote it):
    it stays in place and the error says so.

    Raises:
      CheckpointError: a verified step cannot be read, or every step is
        corrupt (the message names each).
    """
    failures = []
    for step in reversed(self.all_steps()):
      try:
        self.verify(step)
      except CorruptCheckpoint as e:
        failures.append(str(e))
        logging.warning(
            '%s Moving it to %s and trying the step before it.',
            e,
            self._damaged_dir,
        )
        self._set_aside(step)
        continue
      return step, self._read(step, abstract_state)
    if failures:
      raise CheckpointError(
          'No checkpoint in {} can be read (moved to {}):\n  {}'.format(
              self.directory, self._damaged_dir, '\n  '.join(failures)
          )
      )
    return None

  @property
  def _damaged_dir(self) -> str:
    return os.path.join(self.model_dir, 'damaged_checkpoints')

  def _set_aside(self, step: int) -> None:
    """Moves a corrupt step folder out of the way of later saves.

    Every host finds the same files corrupt; process 0 moves the folder, and
    the others wait for it before they list the steps again.
    """
    if jax.process_index() == 0:
      os.makedirs(self._damaged_dir, exist_ok=True)
      destination = os.path.join(self._damaged_dir, str(step))
      suffix = 0
      while os.path.exists(destination):
        suffix += 1
        destination = os.path.join(self._damaged_dir, f'{step}.{suffix}')
      os.rename(self.step_dir(step), destination)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'spt_set_aside_{step}')
    self._manager.close()
    self._manager = self._new_manager()

  def restore_params(
      self, step: Optional[int] = None, shardings: Any = None
  ) -> Params:
    """The `params` of a saved train state; the optimizer state is not read.

    Args:
      step: the step to read (default: the latest).
      shardings: a NamedSharding per parameter: the parameters are read
        straight into that layout, whatever the number of devices they were
        saved from. Default: host arrays, through this host's first device.

    Returns:
      The parameter tree.

    Raises:
      CorruptCheckpoint: the step's files fail verification.
      CheckpointError: the step cannot be read.
    """
    step = self._require_step(step)
    self.verify(step)
    try:
      metadata = self._manager.item_metadata(step)
      # Orbax gives None for a missing default/_METADATA.
      tree = dict(getattr(metadata, 'tree', metadata))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f'Checkpoint step {step} in {self.step_dir(step)} has no readable '
          f'metadata ({first_line(e)}); it is damaged.'
      ) from None
    sharded = shardings is not None
    if not sharded:
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      shardings = jax.tree.map(lambda _: device, tree['params'])
    target = {
        'params': jax.tree.map(
            lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s),
            tree['params'],
            shardings,
        )
    }
    params = self._read(step, target, partial=True)['params']
    return params if sharded else jax.tree.map(np.asarray, params)

  def _require_step(self, step: Optional[int]) -> int:
    step = self.latest_step() if step is None else step
    if step is None or step not in self._manager.all_steps():
      raise CheckpointError(
          f'No checkpoint{"" if step is None else f" at step {step}"} in '
          f'{self.directory}.'
      )
    return step

  def close(self) -> None:
    self._manager.close()


def load_params(path: str) -> Params:
  """Parameters from any source the runner may start from, as float32 numpy.

  Args:
    path: a `convert_checkpoint` output, a local run's MODEL_DIR (its latest
      checkpoint), a T5X checkpoint (legacy or orbax), or a Hugging Face T5
      folder (`config.json` with `model.safetensors` or `pytorch_model.bin`).

  Returns:
    The nested parameter dict.
  """
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    store = TrainCheckpoints(path)
    try:
      return jax.tree.map(t5x_checkpoints.host_float32, store.restore_params())
    finally:
      store.close()
  if os.path.isfile(os.path.join(path, 'config.json')):
    return hf_checkpoints.load_hf_t5(path)[1]
  return t5x_checkpoints.load_t5x_params(path)
