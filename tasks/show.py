r"""Lists the registered tasks and mixtures, or prints a few examples.

    python -m tasks.show --list [--module my_tasks]
    python -m tasks.show spt_synthetic_train --num_examples 3 [--split train]
    python -m tasks.show my_collection__my_dataset__my_template --module my_tasks

`--module` (repeatable) imports a module that registers more tasks, e.g. a
user's own (it must be importable: its folder on PYTHONPATH or the current
directory). Examples are printed after the full preprocessing (templates, rank
classification, tokenization): each feature's token ids and their decoding.
A task whose data, vocabulary or template is not usable prints what is wrong
and exits with 1; any other failure exits with 1 at once.
"""

import argparse
import importlib
import os
import sys
import traceback
from typing import Optional, Sequence, TextIO

import numpy as np
import seqio

import tasks  # pylint: disable=unused-import  # Registers the tasks.
from spt_jax.model import vocabularies
from tasks import prompt_templates
from tasks import sources

# Errors whose message says what to fix: printed without a traceback.
_SHORT_ERRORS = (
    sources.DataNotFoundError,
    sources.InvalidRecordError,
    vocabularies.VocabularyNotFoundError,
    prompt_templates.TemplateError,
)


def _names(registry) -> list[str]:
  return sorted(registry.names())


def list_all(out: TextIO) -> None:
  """Prints the mixtures (with their sizes) and then the tasks."""
  mixtures = _names(seqio.MixtureRegistry)
  print(f'Mixtures ({len(mixtures)}):', file=out)
  for name in mixtures:
    mixture = seqio.get_mixture_or_task(name)
    print(f'  {name}  ({len(mixture.tasks)} tasks)', file=out)
  task_names = _names(seqio.TaskRegistry)
  print(f'Tasks ({len(task_names)}):', file=out)
  for name in task_names:
    task = seqio.get_mixture_or_task(name)
    print(f'  {name}  splits={",".join(task.splits)}', file=out)


def _format(value: np.ndarray, vocabulary: Optional[seqio.Vocabulary]) -> str:
  """Token ids with their decoding; other values as Python values."""
  value = np.asarray(value)
  if vocabulary is None or value.dtype.kind not in 'iu' or value.ndim != 1:
    return repr(value.tolist())
  return f'{value.tolist()}\n      = {vocabulary.decode(value.tolist())!r}'


def show(
    name: str, num_examples: int, split: Optional[str], out: TextIO
) -> None:
  """Prints `num_examples` preprocessed examples of a task or mixture."""
  provider = seqio.get_mixture_or_task(name)
  if split is None:
    split = 'train' if 'train' in provider.splits else provider.splits[0]
  if isinstance(provider, seqio.Mixture):
    print(f'Mixture {name}: {len(provider.tasks)} tasks', file=out)
  for task in seqio.get_subtasks(provider):  # Missing data first, by name.
    task.source.list_shards(split)
  features = provider.output_features
  for feature in features.values():
    vocabularies.vocabulary_size(feature.vocabulary)
  dataset = provider.get_dataset(
      sequence_length=None, split=split, shuffle=False
  )
  for i, example in enumerate(dataset.take(num_examples).as_numpy_iterator()):
    print(f'--- {name} [{split}] example {i}', file=out)
    for key in sorted(example):
      if key.endswith('_pretokenized'):
        continue
      vocabulary = features[key].vocabulary if key in features else None
      print(f'  {key}: {_format(example[key], vocabulary)}', file=out)


def import_modules(modules: Sequence[str]) -> None:
  """Imports task modules; the current directory is searched first.

  Raises:
    ModuleNotFoundError: with a message naming the module and PYTHONPATH.
  """
  if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())
  for module in modules:
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as e:
      if e.name is None or not (
          module == e.name or module.startswith(e.name + '.')
      ):
        raise
      raise ModuleNotFoundError(
          f'Cannot import --module {module!r} ({e}); run from the folder '
          'that holds it or put that folder on PYTHONPATH.',
          name=e.name,
      ) from None


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m tasks.show', description=__doc__.splitlines()[0]
  )
  parser.add_argument('name', nargs='?', help='A task or mixture name.')
  parser.add_argument(
      '--module',
      action='append',
      default=[],
      help='A module to import that registers tasks '
      '(repeatable), e.g. my_tasks.',
  )
  parser.add_argument(
      '--list',
      action='store_true',
      help='List the registered mixtures and tasks.',
  )
  parser.add_argument('--num_examples', type=int, default=3)
  parser.add_argument(
      '--split', default=None, help='Default: train if the task has it.'
  )
  args = parser.parse_args(argv)
  try:
    import_modules(args.module)
  except ModuleNotFoundError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if args.list:
    list_all(sys.stdout)
    return 0
  if not args.name:
    parser.error('give a task or mixture name, or --list')
  if (
      args.name not in seqio.TaskRegistry.names()
      and args.name not in seqio.MixtureRegistry.names()
  ):
    print(
        f'error: no task or mixture named {args.name!r} (see python -m '
        'tasks.show --list; a task registered by your own module needs '
        '--module MODULE)',
        file=sys.stderr,
    )
    return 2
  try:
    show(args.name, args.num_examples, args.split, sys.stdout)
  except _SHORT_ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


def _exit_now(code: int) -> None:
  """Ends the process at once (see `spt_jax.gin_utils.run`: a normal exit
  after a failure inside the input pipeline can hang in tf.data teardown)."""
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


if __name__ == '__main__':
  try:
    code = main(sys.argv[1:])
  except Exception:  # pylint: disable=broad-except
    traceback.print_exc()
    code = 1
  _exit_now(code)
