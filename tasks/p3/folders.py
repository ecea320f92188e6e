"""P3's folders found on disk and their names parsed.

Part of `tasks.p3` (see its docstring).
"""

import dataclasses
import os
import re
from typing import Sequence

import tensorflow as tf

from spt_jax import eval_protocol
from tasks.p3 import datasets as p3_datasets


@dataclasses.dataclass(frozen=True)
class P3Folder:
  """One P3 folder and the task it becomes.

  Attributes:
    path: the folder.
    prefix: its dataset's folder prefix (`super_glue_cb`, `anli`), one of
      T0's or promptsource's datasets; for another dataset, the folder's
      name without `_score_eval`.
    dataset: the dataset part of the task name (`super_glue_cb`, `anli_r1`).
    template: the folder's template part, as P3 writes it ('' when none).
    score: whether it is a `_score_eval` folder.
    splits: the splits it has files for.
  """

  path: str
  prefix: str
  dataset: str
  template: str
  score: bool
  splits: tuple[str, ...]

  @property
  def name(self) -> str:
    return os.path.basename(self.path)

  @property
  def task_name(self) -> str:
    return eval_protocol.task_name(
        p3_datasets.COLLECTION,
        self.dataset,
        p3_datasets.name_part(self.template) or p3_datasets.DEFAULT_TEMPLATE,
        self.score,
    )


def parse_folder_name(
    name: str, prefixes: Sequence[str]
) -> tuple[str, str, str, bool]:
  """Splits a P3 folder name into (prefix, dataset, template, score).

  Args:
    name: e.g. 'anli_GPT_3_style_r1_score_eval'.
    prefixes: known dataset prefixes (`T0Dataset.prefix`); the longest one
      followed by `_` wins.

  Returns:
    e.g. ('anli', 'anli_r1', 'GPT_3_style', True). A name without a known
    prefix is its own dataset, with template ''.
  """
  score = name.endswith(p3_datasets.SCORE_EVAL_SUFFIX)
  base = name[: -len(p3_datasets.SCORE_EVAL_SUFFIX)] if score else name
  matches = [p for p in prefixes if base.startswith(p + '_')]
  if not matches:
    return base, p3_datasets.name_part(base), '', score
  prefix = max(matches, key=len)
  template = base[len(prefix) + 1 :]
  dataset = prefix
  if prefix == p3_datasets.ANLI:
    match = re.fullmatch(r'(.*)_(r[123])', template)
    if match:
      template, anli_round = match.groups()
      dataset = f'{prefix}_{anli_round}'
  return prefix, p3_datasets.name_part(dataset), template, score


# `info.<split>.json` or `<split>.tfrecord-0000i-of-0000N`.
_SPLIT_FILE = re.compile(
    r'^(?:info\.(?P<info>[^.]+)\.json'
    r'|(?P<records>[^.]+)\.tfrecord-\d+-of-\d+)$'
)


def find_folders(p3_dir: str, prefixes: Sequence[str]) -> list[P3Folder]:
  """The P3 folders under `p3_dir` (or `p3_dir/data`), by name.

  Args:
    p3_dir: P3's root (the Hugging Face repository) or its `data` folder.
    prefixes: known dataset prefixes, see `parse_folder_name`.

  Returns:
    Every folder holding an info file or TFRecord shards.

  Raises:
    p3_datasets.P3ConfigError: `p3_dir` does not exist or holds no P3 folder.
  """
  root = os.path.expanduser(p3_dir)
  if tf.io.gfile.isdir(os.path.join(root, 'data')):
    root = os.path.join(root, 'data')
  if not tf.io.gfile.isdir(root):
    raise p3_datasets.P3ConfigError(
        f'P3 directory {p3_dir} (${p3_datasets.P3_DIR_ENV}) does not exist. Download P3 '
        '(huggingface.co/datasets/bigscience/P3, e.g. `git clone` with '
        'git-lfs) and point it at the repository or its data/ folder.'
    )
  splits = {}
  for path in tf.io.gfile.glob(os.path.join(root, '*', '*')):
    match = _SPLIT_FILE.match(os.path.basename(path))
    if match:
      folder = os.path.dirname(path)
      splits.setdefault(folder, set()).add(
          match.group('info') or match.group('records')
      )
  if not splits:
    raise p3_datasets.P3ConfigError(
        f'No P3 folder under {root} (${p3_datasets.P3_DIR_ENV}): expected '
        '<dataset>_<subset>_<template>/ folders holding info.<split>.json and '
        '<split>.tfrecord-*-of-* files.'
    )
  folders = []
  for path in sorted(splits):
    prefix, dataset, template, score = parse_folder_name(
        os.path.basename(path), prefixes
    )
    folders.append(
        P3Folder(
            path, prefix, dataset, template, score, tuple(sorted(splits[path]))
        )
    )
  return folders
