"""A run's settings (`run_settings.json`), and the check before a resume.

Written when a run starts; a resuming command whose model differs is refused
before anything is restored.
"""

import dataclasses
import json
import os
from typing import Any, Dict, Mapping

from absl import logging
import jax
import numpy as np

from spt_jax import gin_utils
from spt_jax.local import train_checkpoints

# A run's settings that define its model and method, as `check_resumable`
# compares them; `<model_dir>/run_settings.json` holds those of the run.
RUN_SETTINGS = 'run_settings.json'
# Fields of the model's configs that a resumed run may change: how the same
# model is computed (activation dtype, rematerialisation, the approximate
# top-k) or regularised, not what it is.
RESUMABLE_FIELDS = frozenset(
    {
        'T5Config.dtype',
        'T5Config.dropout_rate',
        'T5Config.remat_policy',
        'T5Config.float32_attention_logits',
        'SptConfig.approx_top_k',
        'SptConfig.approx_recall_target',
        'SptConfig.top_k_chunks',
    }
)


def _json_value(value: Any) -> Any:
  """`value` as its JSON round trip gives it back (tuples as lists...)."""

  def default(v):
    try:
      return np.dtype(v).name
    except TypeError:
      return str(v)

  return json.loads(json.dumps(value, default=default))


def run_settings(model: Any, trainable: str) -> Dict[str, Any]:
  """The settings that define a run's model and method, by name.

  Args:
    model: a `models.SptModel` (its module's `config` (T5Config) and `spt`
      (SptConfig) dataclasses are read).
    trainable: the runner's TRAINABLE.

  Returns:
    {'T5Config.emb_dim': 64, 'SptConfig.num_memories': 8, ...,
    'TRAINABLE': 'all'} with JSON values.
  """
  settings = {'TRAINABLE': trainable}
  module = getattr(model, 'module', None)
  for attribute in ('config', 'spt'):
    config = getattr(module, attribute, None)
    if config is not None and dataclasses.is_dataclass(config):
      for field in dataclasses.fields(config):
        settings[f'{type(config).__name__}.{field.name}'] = getattr(
            config, field.name
        )
  return _json_value(settings)


def state_signature(abstract_state: Any) -> Dict[str, str]:
  """'dtype[shape]' of every leaf of a train state, by its path."""
  return {
      jax.tree_util.keystr(
          path
      ): f'{np.dtype(leaf.dtype).name}{list(leaf.shape)}'
      for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_state)
  }


def write_run_settings(
    model_dir: str, settings: Mapping[str, Any], abstract_state: Any
) -> None:
  """Records a run's settings and state shapes for `check_resumable`."""
  path = os.path.join(model_dir, RUN_SETTINGS)
  record = {
      'settings': _json_value(dict(settings)),
      'state': state_signature(abstract_state),
  }
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f, indent=1, sort_keys=True)
  os.replace(path + '.tmp', path)


def check_resumable(
    model_dir: str, settings: Mapping[str, Any], abstract_state: Any
) -> None:
  """Fails when a run's checkpoints cannot resume under new settings.

  A checkpoint of another model is not damage: rather than reading it into
  the new state (and finding every step unreadable), the settings recorded
  when the run started are compared with the new ones first. Settings that do
  not change the model (TRAIN_STEPS, LEARNING_RATE, evaluation, the
  `RESUMABLE_FIELDS`) may change. A run recorded before settings were (no
  `run_settings.json`) is not checked.

  Args:
    model_dir: the run's folder, which holds checkpoints.
    settings: `run_settings` of the resuming command.
    abstract_state: the train state it would restore into.

  Raises:
    gin_utils.ConfigError: the model, method or state shapes differ; the
      one-line message lists each change as `name: old -> new`.
  """
  path = os.path.join(model_dir, RUN_SETTINGS)
  try:
    with open(path) as f:
      record = json.load(f)
  except FileNotFoundError:
    return
  except (OSError, ValueError) as e:
    logging.warning(
        'Cannot read %s (%s); the settings are not compared.',
        path,
        train_checkpoints.first_line(e),
    )
    return
  old, new = record.get('settings', {}), _json_value(dict(settings))
  # A setting only one side knows is a field added or removed by a code
  # update, not a change of this run's; the state shapes below still count.
  changes = [
      f'{name}: {old[name]!r} -> {new[name]!r}'
      for name in sorted(set(old) & set(new))
      if name not in RESUMABLE_FIELDS and old[name] != new[name]
  ]
  missing = '(none)'
  old_state = record.get('state', {})
  new_state = state_signature(abstract_state)
  if not changes and old_state and old_state != new_state:
    # The same settings, other state shapes: another optimizer, for instance.
    changes = [
        f'{name}: {old_state.get(name, missing)} -> '
        f'{new_state.get(name, missing)}'
        for name in sorted(set(old_state) | set(new_state))
        if old_state.get(name) != new_state.get(name)
    ]
    if len(changes) > 4:
      changes = changes[:4] + [f'and {len(changes) - 4} more state entries']
  if changes:
    raise gin_utils.ConfigError(
        f'MODEL_DIR {model_dir} holds a run of another model or method, so its '
        f'checkpoints cannot resume with these settings: {"; ".join(changes)}. '
        'Train into a new MODEL_DIR to start a new run, or resume with the '
        f'settings of {os.path.join(model_dir, gin_utils.CONFIG_FILE)}; '
        'nothing was changed.'
    )
