"""Checks that run before any model work, each ending in a one-line error.

The task module and mixture, feature lengths, the data's first example, an
output folder, a checkpoint against the model, the metrics of the evaluated
tasks and a vocabulary's size: what train and eval check first.
"""

import importlib
import os
from typing import Any, Dict, Mapping, Optional

from etils import epath
from flax import traverse_util
import jax
import orbax.checkpoint as ocp
import seqio
import tensorflow as tf

from spt_jax import gin_utils
from spt_jax.local import train_data
from spt_jax.model import models
from spt_jax.model import partitioning
from spt_jax.model import vocabularies


def import_task_module(module: Optional[str]) -> None:
  """Imports the module that registers the tasks (MIXTURE_OR_TASK_MODULE).

  Raises:
    ConfigError: the module itself cannot be found (an error inside it keeps
      its traceback).
  """
  if not module:
    return
  try:
    importlib.import_module(module)
  except ModuleNotFoundError as e:
    if e.name is None or not (
        module == e.name or module.startswith(e.name + '.')
    ):
      raise
    raise gin_utils.ConfigError(
        f'MIXTURE_OR_TASK_MODULE {module!r} cannot be imported ({e}). Put the '
        'folder that holds it on PYTHONPATH (e.g. PYTHONPATH=/path/to/project) '
        'or fix the name.'
    ) from None


def check_mixture_or_task(name: str, module: Optional[str] = None) -> None:
  """Imports the task module and fails early, naming an unknown task."""
  import_task_module(module)
  try:
    seqio.get_mixture_or_task(name)
  except ValueError:
    mixtures = sorted(seqio.MixtureRegistry.names())
    raise gin_utils.ConfigError(
        f'Unknown mixture or task {name!r}. Registered mixtures: '
        f'{", ".join(mixtures) or "none"} (`python -m tasks.show --list '
        f'[--module {module or "MODULE"}]` lists the tasks too).'
    ) from None


def input_errors() -> tuple[type[Exception], ...]:
  """The errors of bad inputs that the entry points print as one line.

  A template that cannot be used, a record of a local export that is not
  valid, missing data, a task without the discrete prompt the model reads:
  each names the file or task and the fix, as a ConfigError does.
  """
  return (gin_utils.InputError,)


def check_feature_lengths(lengths: Optional[Mapping[str, int]]) -> None:
  """Fails unless TASK_FEATURE_LENGTHS gives `inputs` and `targets` lengths."""
  if lengths is None:
    return
  example = "\"{'inputs': 512, 'targets': 64}\""
  if not isinstance(lengths, Mapping):
    raise gin_utils.ConfigError(
        f'TASK_FEATURE_LENGTHS={lengths!r} must be a dict of feature lengths, '
        f'e.g. --gin.TASK_FEATURE_LENGTHS={example}.'
    )
  missing = [k for k in ('inputs', 'targets') if k not in lengths]
  if missing:
    raise gin_utils.ConfigError(
        f'TASK_FEATURE_LENGTHS={dict(lengths)!r} lacks {" and ".join(missing)}: '
        f'give every feature, e.g. --gin.TASK_FEATURE_LENGTHS={example}.'
    )
  for key, value in lengths.items():
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise gin_utils.ConfigError(
          f'TASK_FEATURE_LENGTHS[{key!r}]={value!r} must be a positive '
          'integer (tokens).'
      )


def _check_first_example(task: seqio.Task, split: str) -> None:
  """Reads the first example of a task over a local export.

  The JSON lines of a local export (`tasks.sources.LocalSource`) are checked
  when its dataset is built; this finds, before any model work, a split the
  task's template turns into nothing, and TFRecord files without a record.
  It costs a pipeline build per task (some 150 ms). Other sources are large
  or remote, and are read when training or evaluation reaches them.

  Raises:
    ConfigError: naming the task, the split's files and the fix.
  """
  if not getattr(task.source, 'IS_LOCAL_EXPORT', False):
    return
  dataset = task.get_dataset(
      sequence_length=None, split=split, shuffle=False, num_epochs=1
  )
  for _ in dataset.take(1):
    return
  files = ', '.join(task.source.list_shards(split))
  for _ in task.source.get_dataset(split, shuffle=False).take(1):
    raise gin_utils.ConfigError(
        f'Task {task.name!r} yields no example from split {split!r} ({files}): '
        'its template drops every record (a label outside its '
        'answer_choices, such as -1 for unlabelled records, or an empty '
        f'target). `python -m tasks.show {task.name}` shows what it yields; '
        'fix the template or the data.'
    )
  raise gin_utils.ConfigError(
      f'Task {task.name!r}: split {split!r} has no records ({files}). Export '
      'the split again.'
  )


def check_data(name: str, split: str) -> None:
  """Fails before any training when a task of `name` lacks `split` or its data.

  Tasks over local exports are also read: their records must be valid (a
  `tasks.sources.InvalidRecordError` names the file and line) and their
  template must keep one.

  Raises:
    ConfigError: naming the task and, for missing data, how to provide it.
  """
  for task in seqio.get_subtasks(seqio.get_mixture_or_task(name)):
    if split not in task.splits:
      raise gin_utils.ConfigError(
          f'Task {task.name!r} (of {name}) has no {split!r} split; it has '
          f'{", ".join(task.splits)}.'
      )
    try:
      task.source.list_shards(split)
    except FileNotFoundError as e:  # tasks.sources.DataNotFoundError.
      raise gin_utils.ConfigError(f'{name}: {e}') from None
    _check_first_example(task, split)


def check_output_dir(path: str, setting: str) -> None:
  """Fails with a ConfigError when `path` cannot be created or written.

  Args:
    path: the folder results go to.
    setting: how the user sets it, for the message (e.g. 'EVAL_OUTPUT_DIR').
  """
  probe = os.path.join(path, f'.write_test_{os.getpid()}')
  try:
    os.makedirs(path, exist_ok=True)
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise gin_utils.ConfigError(
        f'{setting} {path!r} cannot be written ({e.strerror or e}); set '
        f'--gin.{setting}=\\"DIR\\" to a folder you can write to.'
    ) from None


def _checkpoint_param_shapes(step_dir: str) -> Optional[Dict[str, tuple]]:
  """{'encoder/...': shape} of a saved train state's params; None if unknown.

  Read from the step's metadata alone (no array is read); None where it
  cannot be read, which the restore then reports.
  """
  try:
    metadata = ocp.StandardCheckpointHandler().metadata(
        epath.Path(step_dir) / 'default'
    )
    params = dict(getattr(metadata, 'tree', metadata))['params']
  except Exception:  # pylint: disable=broad-except
    return None
  return {
      k: tuple(v.shape)
      for k, v in traverse_util.flatten_dict(params, sep='/').items()
  }


def check_checkpoint_fits(
    model: models.SptModel, step_dir: str, config_file: Optional[str] = None
) -> None:
  """Fails when a checkpoint's parameters are not the model's.

  Evaluating with other model settings than the run's (another bank size, a
  soft prompt it did not have) would otherwise fail inside Flax, naming
  neither the checkpoint nor the setting.

  Args:
    model: the model to evaluate.
    step_dir: the checkpoint's step folder.
    config_file: the run's own configuration, for the message.

  Raises:
    ConfigError: naming the checkpoint, the first parameter that differs and
      both shapes.
  """
  saved = _checkpoint_param_shapes(step_dir)
  if saved is None:
    return
  shapes = {
      'encoder_input_tokens': (1, model.module.spt.prompt_length + 1),
      'decoder_input_tokens': (1, 1),
      'decoder_target_tokens': (1, 1),
  }
  abstract = jax.eval_shape(
      lambda rng: model.get_initial_variables(rng, shapes)['params'],
      jax.random.PRNGKey(0),
  )
  expected = {
      k: tuple(v.shape)
      for k, v in traverse_util.flatten_dict(abstract, sep='/').items()
  }
  problems = [
      f'{name} has shape {saved.get(name, "(absent)")} there, the model '
      f'expects {expected.get(name, "(absent)")}'
      for name in sorted(set(saved) | set(expected))
      if saved.get(name) != expected.get(name)
  ]
  if problems:
    more = f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''
    config = f' ({config_file})' if config_file else ''
    raise gin_utils.ConfigError(
        f'Checkpoint {step_dir} does not fit the model: parameter '
        f"{problems[0]}{more}. Evaluate with the run's own configuration"
        f'{config} and change only evaluation settings.'
    )


def check_metrics(name: str) -> None:
  """Fails when a task of `name` has no metric (it would report nothing)."""
  missing = [
      task.name
      for task in seqio.get_subtasks(seqio.get_mixture_or_task(name))
      if not task.metric_fns
  ]
  if missing:
    shown = ', '.join(missing[:3]) + (' ...' if len(missing) > 3 else '')
    raise gin_utils.ConfigError(
        f'{len(missing)} task(s) of {name} have no metric, so evaluation would '
        f'report nothing for them: {shown}. Evaluate rank-classification '
        'tasks (`prompted.register(..., score=True)`, names ending in '
        '`__score`) or register the tasks with metric_fns.'
    )


def vocabulary_size(vocabulary: seqio.Vocabulary, name: str) -> int:
  """The size of a task's vocabulary, loaded now; a ConfigError if unreadable."""
  try:
    return vocabularies.vocabulary_size(vocabulary)
  except vocabularies.VocabularyNotFoundError as e:
    raise gin_utils.ConfigError(f'{name}: {e}') from None


def check_settings(
    *,
    train_steps: int,
    batch_size: int,
    checkpoint_period: int,
    log_period: int,
    eval_batch_size: int,
    data_parallelism: int,
) -> None:
  """Fails with a ConfigError naming the first unusable setting."""
  for name, value in (
      ('TRAIN_STEPS', train_steps),
      ('BATCH_SIZE', batch_size),
      ('CHECKPOINT_PERIOD', checkpoint_period),
      ('LOG_PERIOD', log_period),
      ('EVAL_BATCH_SIZE', eval_batch_size),
  ):
    if not isinstance(value, int) or value <= 0:
      raise gin_utils.ConfigError(
          f'{name}={value!r} must be a positive integer.'
      )
  for name, value in (
      ('BATCH_SIZE', batch_size),
      ('EVAL_BATCH_SIZE', eval_batch_size),
  ):
    if value % data_parallelism:
      raise gin_utils.ConfigError(
          f'{name}={value} must be a multiple of the {data_parallelism} '
          'data-parallel devices (devices / NUM_PARTITIONS).'
      )


def check_vocabulary_size(
    model: models.SptModel, mixture_or_task_name: str
) -> None:
  """Fails when the model's embedding is smaller than the task vocabulary.

  Token ids past the embedding table would be looked up out of range and
  train to a NaN loss.
  """
  vocab_size = getattr(
      getattr(model.module, 'config', None), 'vocab_size', None
  )
  if vocab_size is None:
    return
  provider = seqio.get_mixture_or_task(mixture_or_task_name)
  for name, feature in provider.output_features.items():
    needed = vocabulary_size(feature.vocabulary, mixture_or_task_name)
    if needed > vocab_size:
      raise gin_utils.ConfigError(
          f'VOCAB_SIZE={vocab_size} is smaller than the vocabulary of feature '
          f'{name!r} of {mixture_or_task_name} ({needed} ids); set '
          f'--gin.VOCAB_SIZE={needed} or more (T5 uses 32128).'
      )


def check_model_dir(model_dir: str) -> None:
  """Fails with a ConfigError when MODEL_DIR cannot be created or written."""
  check_output_dir(model_dir, 'MODEL_DIR')


def check_initial_checkpoint(path: Optional[str]) -> None:
  """Fails with a ConfigError when INITIAL_CHECKPOINT_PATH does not exist."""
  if path and not tf.io.gfile.exists(path):
    raise gin_utils.ConfigError(
        f'INITIAL_CHECKPOINT_PATH {path!r} does not exist. Give a '
        "`spt_jax.checkpoints.convert_checkpoint` output, a run's MODEL_DIR, a T5X "
        'checkpoint or a Hugging Face T5 folder, or None to start from '
        'scratch.'
    )


def check_run(
    *,
    model: models.SptModel,
    model_dir: str,
    data: train_data.TrainDataConfig,
    eval_mixture_or_task_name: Optional[str],
    initial_checkpoint_path: Optional[str],
    num_partitions: int,
    train_steps: int,
    checkpoint_period: int,
    log_period: int,
    eval_batch_size: int,
    **unchecked: Any,
) -> None:
  """Every check of `train.train`'s arguments, before any model work.

  Takes the arguments of `train.train` by name (the others, `unchecked`,
  need no check of their own); each is described there. MODEL_DIR is checked
  on process 0 only.
  """
  del unchecked
  if jax.process_index() == 0:
    check_model_dir(model_dir)
  check_settings(
      train_steps=train_steps,
      batch_size=data.batch_size,
      checkpoint_period=checkpoint_period,
      log_period=log_period,
      eval_batch_size=eval_batch_size,
      data_parallelism=partitioning.create_mesh(num_partitions).shape['data'],
  )
  check_feature_lengths(data.task_feature_lengths)
  check_initial_checkpoint(initial_checkpoint_path)
  check_mixture_or_task(data.mixture_or_task_name, data.mixture_or_task_module)
  check_data(data.mixture_or_task_name, 'train')
  check_vocabulary_size(model, data.mixture_or_task_name)
  if eval_mixture_or_task_name:
    check_mixture_or_task(eval_mixture_or_task_name)
    check_data(eval_mixture_or_task_name, 'validation')
    check_metrics(eval_mixture_or_task_name)
