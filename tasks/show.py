r"""Lists the registered SPT tasks and mixtures, or prints a few examples.

    python -m tasks.show --list
    python -m tasks.show spt_synthetic_train --num_examples 3 [--split train]

Examples are printed after the full preprocessing (templates, rank
classification, tokenization): each feature's token ids and their decoding.
A task whose data is missing prints how to provide it and exits with 1.
"""
import argparse
import sys
from typing import Optional, Sequence, TextIO

import numpy as np
import seqio

import tasks  # pylint: disable=unused-import  # Registers the tasks.
from tasks import sources

_PREFIX = 'spt_'


def _names(registry) -> list[str]:
  return sorted(n for n in registry.names() if n.startswith(_PREFIX))


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


def show(name: str, num_examples: int, split: Optional[str],
         out: TextIO) -> None:
  """Prints `num_examples` preprocessed examples of a task or mixture."""
  provider = seqio.get_mixture_or_task(name)
  if split is None:
    split = 'train' if 'train' in provider.splits else provider.splits[0]
  if isinstance(provider, seqio.Mixture):
    print(f'Mixture {name}: {len(provider.tasks)} tasks', file=out)
  dataset = provider.get_dataset(
      sequence_length=None, split=split, shuffle=False)
  features = provider.output_features
  for i, example in enumerate(dataset.take(num_examples).as_numpy_iterator()):
    print(f'--- {name} [{split}] example {i}', file=out)
    for key in sorted(example):
      if key.endswith('_pretokenized'):
        continue
      vocabulary = features[key].vocabulary if key in features else None
      print(f'  {key}: {_format(example[key], vocabulary)}', file=out)


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m tasks.show', description=__doc__.splitlines()[0])
  parser.add_argument('name', nargs='?', help='A task or mixture name.')
  parser.add_argument('--list', action='store_true',
                      help='List the registered mixtures and tasks.')
  parser.add_argument('--num_examples', type=int, default=3)
  parser.add_argument('--split', default=None,
                      help='Default: train if the task has it.')
  args = parser.parse_args(argv)
  if args.list:
    list_all(sys.stdout)
    return 0
  if not args.name:
    parser.error('give a task or mixture name, or --list')
  if (args.name not in seqio.TaskRegistry.names() and
      args.name not in seqio.MixtureRegistry.names()):
    print(f'error: no task or mixture named {args.name!r} '
          '(see python -m tasks.show --list)', file=sys.stderr)
    return 2
  try:
    show(args.name, args.num_examples, args.split, sys.stdout)
  except sources.DataNotFoundError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
