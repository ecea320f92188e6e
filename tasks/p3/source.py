r"""P3 (`bigscience/P3`): T0's prompted datasets as SeqIO tasks and mixtures.

P3 is promptsource's templates applied to the datasets T0 was trained and
evaluated on, stored as TFRecords of T5 token ids: one folder per (dataset,
template) and, for templates with answer choices, a `_score_eval` folder with
one record per (example, answer choice):

    $SPT_P3_DIR/[data/]<dataset>_<subset>_<template>[_score_eval]/
        info.<split>.json     {"features": {name: {"dtype", "shape"}},
                               "num_shards": N}
        stats.<split>.json    {"examples": ..., ...}
        <split>.tfrecord-0000i-of-0000N

Folder names follow T0's task names: `<dataset>_<subset>_<template>` with
every run of characters other than letters, digits, `.` and `_` replaced by
`_`; ANLI's rounds are suffixes (`anli_<template>_r1`).

Setting `$SPT_P3_DIR` (before `import tasks`) registers, per folder,

* `spt_p3__<dataset>__<template>` (training folders) or
  `spt_p3__<dataset>__<template>__score` (`_score_eval` folders), where
  `<dataset>` is T0's `<dataset>_<subset>` (`super_glue_cb`, `anli_r1`) and
  `<template>` the folder's template part (runs of `_` collapsed);
* the mixtures `spt_p3_t0_train` (T0), `spt_p3_t0plus_train` (T0+: adds the
  GPT-3 evaluation datasets), `spt_p3_t0plusplus_train` (T0++: adds
  SuperGLUE), over the training folders P3 holds for their datasets, and
  `spt_p3_t0_heldout`: the `_score_eval` folders of T0's 11 held-out dataset
  splits (ANLI R1/R2/R3, CB, RTE, WSC, Winogrande, COPA, HellaSwag,
  StoryCloze, WiC), split `validation`.

Features, read as stored: `inputs` int32 [T] (no EOS, as T0 trained),
`targets` int32 [T'] (ending in EOS), `inputs_pretokenized`,
`targets_pretokenized`, `answer_choices` string [C], and in `_score_eval`
folders `idx` int32 [2] (example, choice), `is_correct` bool, `weight`
float32. Score tasks use `spt_jax.eval_protocol.rank_classification_accuracy`, so
`spt_jax.eval_protocol.aggregate_over_templates` gives the mean and median accuracy
over each dataset's templates, as T0 reports them.

The discrete prompt (SPT's retrieval query). P3 stores only the rendered
input. With `$SPT_PROMPTSOURCE_DIR` pointing at a promptsource checkout, each
template's instruction is read from promptsource's
`promptsource/templates/<dataset>[/<subset>]/templates.yaml` (parsed here with
PyYAML; promptsource itself does not install on Python 3.11) and derived as
for our own templates, read as promptsource writes them
(`tasks.prompt_templates`: promptsource's Jinja helpers `zip`, `choice`,
`most_frequent`, `highlight`; the whole template rendered with every field
blank, then split at `|||`); the tasks then output `prompt`, int32 token ids
ending in EOS, like `tasks.prompted`. Where that fails (the template raises,
or renders empty although its input has text outside Jinja blocks), the
instruction is that literal text, and a warning names the file and the
template. A folder whose template the checkout lacks uses its template name
as the instruction (a warning lists them). A template whose instruction is
empty (its input is nothing but fields: `{{question}} ||| ...`) would send an
empty query: its task's `prompt` is instead the example's own input
(`add_prompt_from_inputs`), cut to the prompt length, so SPT pools its query
over the start of the input; a warning lists those tasks, and
`Registered.instruction_sources` says, per task, which of these applies.
Without a checkout the tasks have no `prompt` feature, and the model pools
its query over the encoder input (`SptConfig.prompt_length = 0`,
`prompt_span = 'all_tokens'`). Registration logs which one is in use.

Which templates count, following T0's code (bigscience-workshop/t-zero,
`t0/seqio_tasks/tasks.py`): training mixtures take every template of their
datasets (minus `gigaword_summarize_`, which T0 excluded); the held-out
mixture takes the templates whose promptsource metadata says
`original_task: true`. Without a promptsource checkout that metadata is
unknown and the held-out mixture takes every `_score_eval` folder (logged).

Mixing rates, as T0's code computes them: each template task of a dataset of
N training examples and T templates has rate N if N <= 500,000, else
500,000 // T (`tasks.prompted.mixing_rate`). N is read from the data when a
mixture is first used: the largest `examples` count of the dataset's training
folders' `stats.train.json` (templates that cannot render an example drop it,
so the largest count is the dataset's size); T is the number of the dataset's
templates in promptsource when a checkout is given (as T0 counted them), else
the number of its training folders in P3.

A corrupt shard (a damaged or truncated record, or records that do not match
`info.<split>.json`) fails the pipeline with an error naming the folder and
the shard, instead of tf.data's bare "corrupted record at N".
"""
import dataclasses
import functools
import json
import os
import re
from typing import Any, Callable, Mapping, Optional, Sequence

from absl import logging
import seqio
import tensorflow as tf
import yaml

from spt_jax import eval_protocol
from spt_jax.model import vocabularies
from tasks import metrics
from tasks import prompt_templates
from tasks import prompted
from tasks import registry
from tasks import sources
from tasks import vocab

P3_DIR_ENV = 'SPT_P3_DIR'
PROMPTSOURCE_DIR_ENV = 'SPT_PROMPTSOURCE_DIR'

COLLECTION = 'spt_p3'
T0_TRAIN_MIXTURE = 'spt_p3_t0_train'
T0_PLUS_TRAIN_MIXTURE = 'spt_p3_t0plus_train'
T0_PLUS_PLUS_TRAIN_MIXTURE = 'spt_p3_t0plusplus_train'
HELDOUT_MIXTURE = 'spt_p3_t0_heldout'
HELDOUT_SPLIT = 'validation'
TRAIN_SPLIT = 'train'

SCORE_EVAL_SUFFIX = '_score_eval'
# The template used when a folder's name has no template part.
DEFAULT_TEMPLATE = 'default'

# T0's recipe: inputs 1024, targets 256; the instruction is short.
FEATURE_LENGTHS = {'inputs': 1024, 'targets': 256, 'prompt': 64}

# Training stages of T0's mixtures: a dataset of stage S trains T0 models of
# stage S and later.
T0 = 'T0'
T0_PLUS = 'T0+'
T0_PLUS_PLUS = 'T0++'
_STAGES = (T0, T0_PLUS, T0_PLUS_PLUS)
TRAIN_MIXTURES = {
    T0: T0_TRAIN_MIXTURE,
    T0_PLUS: T0_PLUS_TRAIN_MIXTURE,
    T0_PLUS_PLUS: T0_PLUS_PLUS_TRAIN_MIXTURE,
}

# Training tasks T0's code leaves out of its mixtures (broken cached files).
EXCLUDED_TRAINING_FOLDERS = ('gigaword_summarize_',)

_ANLI = 'anli'

# A file that git-lfs has not fetched holds a short pointer starting so.
_LFS_POINTER_START = b'version https://git-lfs'
_LFS_POINTER_MAX_BYTES = 1024

# Features stored as int64 in tf.train.Example (seqio's cache convention).
_INT64_STORED = ('int32', 'int64', 'bool')


@dataclasses.dataclass(frozen=True)
class T0Dataset:
  """A dataset of T0's experiments (t-zero's `datasets.csv`).

  Attributes:
    dataset: the Hugging Face dataset name.
    subset: its configuration, or None.
    train_stage: the first T0 mixture that trains on it (T0, T0+, T0++), or
      None.
    heldout: whether T0 evaluates on it zero-shot (validation split).
  """
  dataset: str
  subset: Optional[str] = None
  train_stage: Optional[str] = None
  heldout: bool = False

  @property
  def prefix(self) -> str:
    """The P3 folder prefix: `<dataset>_<subset>` in T0's task-name form."""
    return p3_name(self.dataset, self.subset)


T0_DATASETS = (
    # Held-out evaluation (COPA, WSC, WiC and HellaSwag also train T0+/T0++).
    T0Dataset('super_glue', 'wsc.fixed', T0_PLUS_PLUS, heldout=True),
    T0Dataset('winogrande', 'winogrande_xl', heldout=True),
    T0Dataset('super_glue', 'cb', heldout=True),
    T0Dataset('super_glue', 'rte', heldout=True),
    T0Dataset('anli', None, heldout=True),
    T0Dataset('super_glue', 'copa', T0_PLUS_PLUS, heldout=True),
    T0Dataset('hellaswag', None, T0_PLUS, heldout=True),
    T0Dataset('story_cloze', '2016', heldout=True),
    T0Dataset('super_glue', 'wic', T0_PLUS_PLUS, heldout=True),
    # Paraphrase identification.
    T0Dataset('glue', 'mrpc', T0),
    T0Dataset('glue', 'qqp', T0),
    T0Dataset('paws', 'labeled_final', T0),
    # Closed-book QA.
    T0Dataset('ai2_arc', 'ARC-Challenge', T0_PLUS),
    T0Dataset('ai2_arc', 'ARC-Easy', T0_PLUS),
    T0Dataset('kilt_tasks', 'hotpotqa', T0),
    T0Dataset('trivia_qa', 'unfiltered', T0_PLUS),
    T0Dataset('web_questions', None, T0_PLUS),
    T0Dataset('wiki_qa', None, T0),
    # Extractive QA.
    T0Dataset('adversarial_qa', 'dbidaf', T0),
    T0Dataset('adversarial_qa', 'dbert', T0),
    T0Dataset('adversarial_qa', 'droberta', T0),
    T0Dataset('duorc', 'SelfRC', T0),
    T0Dataset('duorc', 'ParaphraseRC', T0),
    T0Dataset('ropes', None, T0),
    T0Dataset('squad_v2', None, T0_PLUS),
    T0Dataset('super_glue', 'record', T0_PLUS_PLUS),
    T0Dataset('quoref', None, T0),
    # Multiple-choice QA.
    T0Dataset('cos_e', 'v1.11', T0),
    T0Dataset('cosmos_qa', None, T0),
    T0Dataset('dream', None, T0),
    T0Dataset('openbookqa', 'main', T0_PLUS),
    T0Dataset('qasc', None, T0),
    T0Dataset('quail', None, T0),
    T0Dataset('quarel', None, T0),
    T0Dataset('quartz', None, T0),
    T0Dataset('race', 'high', T0_PLUS),
    T0Dataset('race', 'middle', T0_PLUS),
    T0Dataset('sciq', None, T0),
    T0Dataset('social_i_qa', None, T0),
    T0Dataset('super_glue', 'boolq', T0_PLUS_PLUS),
    T0Dataset('super_glue', 'multirc', T0_PLUS_PLUS),
    T0Dataset('wiki_hop', 'original', T0),
    T0Dataset('wiqa', None, T0),
    T0Dataset('piqa', None, T0_PLUS),
    # Sentiment.
    T0Dataset('amazon_polarity', None, T0),
    T0Dataset('app_reviews', None, T0),
    T0Dataset('imdb', None, T0),
    T0Dataset('rotten_tomatoes', None, T0),
    T0Dataset('yelp_review_full', None, T0),
    # Structure to text.
    T0Dataset('common_gen', None, T0),
    T0Dataset('wiki_bio', None, T0),
    # Summarization.
    T0Dataset('cnn_dailymail', '3.0.0', T0),
    T0Dataset('gigaword', None, T0),
    T0Dataset('multi_news', None, T0),
    T0Dataset('samsum', None, T0),
    T0Dataset('xsum', None, T0),
    # Topic classification.
    T0Dataset('ag_news', None, T0),
    T0Dataset('dbpedia_14', None, T0),
    T0Dataset('trec', None, T0),
    # Bias and fairness evaluation (in P3, in no mixture here).
    T0Dataset('crows_pairs'),
    T0Dataset('jigsaw_toxicity_pred'),
    T0Dataset('super_glue', 'axg'),
    T0Dataset('wino_bias', 'type1_anti'),
    T0Dataset('wino_bias', 'type2_anti'),
    T0Dataset('wino_bias', 'type1_pro'),
    T0Dataset('wino_bias', 'type2_pro'),
)


class P3ConfigError(sources.DataNotFoundError):
  """P3 or promptsource is not where the settings say; the message says why."""


def p3_name(*parts: Optional[str]) -> str:
  """T0's task-name form of `_`-joined parts (None parts are skipped).

  Args:
    *parts: e.g. ('super_glue', 'wsc.fixed', 'GPT-3 Style').

  Returns:
    The parts joined by `_`, every run of characters other than letters,
    digits, `.` and `_` replaced by `_`: 'super_glue_wsc.fixed_GPT_3_Style'.
  """
  return re.sub(r'[^\w.]+', '_', '_'.join(p for p in parts if p is not None))


def _name_part(text: str) -> str:
  """A folder's name part as a task-name part: no `__`, no edge `_`."""
  return re.sub(r'_+', '_', text).strip('_')


# ------------------------------ promptsource --------------------------------


# Where a task's instruction comes from (`Registered.instruction_sources`).
DERIVED = 'derived'  # Its template rendered with blank fields.
LITERAL = 'literal'  # Fallback: its template's input text outside Jinja.
TEMPLATE_NAME = 'template_name'  # The checkout lacks its template.
INPUTS = 'inputs'  # No instruction: `prompt` is the example's own input.


@dataclasses.dataclass(frozen=True)
class PromptsourceTemplate:
  """The fields of a promptsource template that SPT uses.

  Attributes:
    name: the template's name (its P3 folder part is `p3_name(name)`).
    jinja: the Jinja source; `|||` separates the input from the target.
    answer_choices: the Jinja source of the `|||`-separated choices, or None.
    original_task: promptsource's `metadata.original_task`.
    file: the `templates.yaml` it was read from, named in log messages.
  """
  name: str
  jinja: str
  answer_choices: Optional[str]
  original_task: bool
  file: Optional[str] = None

  @functools.cached_property
  def derivation(self) -> tuple[str, str]:
    """(instruction, how): how is `DERIVED` or `LITERAL` (see module).

    A template that cannot be rendered with blank fields (any error, a
    "no answer" included), or whose blank rendering is empty although its
    input has text outside Jinja blocks (text guarded by a condition on a
    list the template builds from its fields), falls back to that literal
    text; the fallback is logged, naming the file and the template.
    """
    template = prompt_templates.Template(
        name=self.name, jinja=self.jinja, answer_choices=self.answer_choices)
    source = prompt_templates.split_source(self.jinja)[0]
    literal = prompt_templates.clean_instruction(
        re.sub(r'{{.*?}}|{%.*?%}|{#.*?#}', ' ', source, flags=re.DOTALL))
    try:
      instruction = template.instruction
    except Exception as e:  # pylint: disable=broad-except
      reason = str(e) or type(e).__name__
    else:
      if instruction or not literal:
        return instruction, DERIVED
      reason = 'rendered with blank fields, its input is empty'
    logging.warning(
        'promptsource %s, template %r: %s. Its instruction is the text of its '
        'input outside Jinja blocks: %r', self.file or '(no file)', self.name,
        reason, literal)
    return literal, LITERAL

  @property
  def instruction(self) -> str:
    """The input text with every data field removed (see module docstring).

    May be empty: the template's input is nothing but fields.
    """
    return self.derivation[0]


class _PromptsourceLoader(getattr(yaml, 'CSafeLoader', yaml.SafeLoader)):
  """PyYAML loader of promptsource files: `!Template` etc. become dicts."""


def _tagged_mapping(loader, tag_suffix, node):
  del tag_suffix  # Every promptsource tag (!Template, !TemplateMetadata).
  return loader.construct_mapping(node, deep=True)


_PromptsourceLoader.add_multi_constructor('!', _tagged_mapping)


def read_promptsource_yaml(path: str) -> tuple[PromptsourceTemplate, ...]:
  """The templates of one promptsource `templates.yaml`, in file order.

  Args:
    path: the file.

  Returns:
    Its templates.

  Raises:
    ValueError: the file is not a promptsource template file; the message
      names it.
  """
  with tf.io.gfile.GFile(path) as f:
    try:
      data = yaml.load(f, Loader=_PromptsourceLoader)
    except yaml.YAMLError as e:
      raise ValueError(f'{path} is not valid YAML: {e}') from e
  if not isinstance(data, Mapping) or not isinstance(
      data.get('templates'), Mapping):
    raise ValueError(
        f"{path} is not a promptsource template file: it has no 'templates' "
        'mapping.')
  templates = []
  for key, entry in data['templates'].items():
    if not isinstance(entry, Mapping) or 'name' not in entry or (
        'jinja' not in entry):
      raise ValueError(
          f"{path}: template {key!r} lacks 'name' or 'jinja'.")
    metadata = entry.get('metadata') or {}
    answer_choices = entry.get('answer_choices')
    templates.append(PromptsourceTemplate(
        name=str(entry['name']),
        jinja=str(entry['jinja']),
        answer_choices=None if answer_choices is None else str(answer_choices),
        original_task=bool(metadata.get('original_task')),
        file=path))
  return tuple(templates)


class Promptsource:
  """The template files of a promptsource checkout, read on demand.

  Attributes:
    templates_dir: the checkout's `promptsource/templates` folder.
  """

  def __init__(self, path: str):
    """Finds the templates folder of a checkout.

    Args:
      path: the checkout, its `promptsource` package or its `templates`
        folder.

    Raises:
      P3ConfigError: no promptsource template file under `path`.
    """
    path = os.path.expanduser(path)
    for candidate in (os.path.join(path, 'promptsource', 'templates'),
                      os.path.join(path, 'templates'), path):
      if self._files_under(candidate):
        self.templates_dir = candidate
        break
    else:
      raise P3ConfigError(
          f'No promptsource template files (<dataset>[/<subset>]/'
          f'templates.yaml) under {path} (${PROMPTSOURCE_DIR_ENV}). Point it '
          'at a checkout of github.com/bigscience-workshop/promptsource, or '
          'unset it to use P3 without instructions.')
    # P3 folder prefix -> templates.yaml, and its templates once read.
    self._files = {}
    self._templates = {}
    for file in self._files_under(self.templates_dir):
      parts = os.path.relpath(os.path.dirname(file), self.templates_dir).split(
          os.sep)
      self._files[p3_name(*parts)] = file

  @staticmethod
  def _files_under(folder: str) -> list[str]:
    return sorted(
        tf.io.gfile.glob(os.path.join(folder, '*', 'templates.yaml')) +
        tf.io.gfile.glob(os.path.join(folder, '*', '*', 'templates.yaml')))

  @property
  def prefixes(self) -> Sequence[str]:
    """The P3 folder prefixes (`<dataset>_<subset>`) it has templates for."""
    return list(self._files)

  def templates(self, prefix: str) -> Mapping[str, PromptsourceTemplate]:
    """P3 template part (`p3_name(name)`) -> template, for one dataset."""
    if prefix not in self._files:
      return {}
    if prefix not in self._templates:
      self._templates[prefix] = {
          p3_name(t.name): t
          for t in read_promptsource_yaml(self._files[prefix])}
    return self._templates[prefix]


# ------------------------------- P3 folders ---------------------------------


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
        COLLECTION, self.dataset,
        _name_part(self.template) or DEFAULT_TEMPLATE, self.score)


def parse_folder_name(name: str, prefixes: Sequence[str]
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
  score = name.endswith(SCORE_EVAL_SUFFIX)
  base = name[:-len(SCORE_EVAL_SUFFIX)] if score else name
  matches = [p for p in prefixes if base.startswith(p + '_')]
  if not matches:
    return base, _name_part(base), '', score
  prefix = max(matches, key=len)
  template = base[len(prefix) + 1:]
  dataset = prefix
  if prefix == _ANLI:
    match = re.fullmatch(r'(.*)_(r[123])', template)
    if match:
      template, anli_round = match.groups()
      dataset = f'{prefix}_{anli_round}'
  return prefix, _name_part(dataset), template, score


# `info.<split>.json` or `<split>.tfrecord-0000i-of-0000N`.
_SPLIT_FILE = re.compile(
    r'^(?:info\.(?P<info>[^.]+)\.json'
    r'|(?P<records>[^.]+)\.tfrecord-\d+-of-\d+)$')


def find_folders(p3_dir: str, prefixes: Sequence[str]) -> list[P3Folder]:
  """The P3 folders under `p3_dir` (or `p3_dir/data`), by name.

  Args:
    p3_dir: P3's root (the Hugging Face repository) or its `data` folder.
    prefixes: known dataset prefixes, see `parse_folder_name`.

  Returns:
    Every folder holding an info file or TFRecord shards.

  Raises:
    P3ConfigError: `p3_dir` does not exist or holds no P3 folder.
  """
  root = os.path.expanduser(p3_dir)
  if tf.io.gfile.isdir(os.path.join(root, 'data')):
    root = os.path.join(root, 'data')
  if not tf.io.gfile.isdir(root):
    raise P3ConfigError(
        f'P3 directory {p3_dir} (${P3_DIR_ENV}) does not exist. Download P3 '
        '(huggingface.co/datasets/bigscience/P3, e.g. `git clone` with '
        'git-lfs) and point it at the repository or its data/ folder.')
  splits = {}
  for path in tf.io.gfile.glob(os.path.join(root, '*', '*')):
    match = _SPLIT_FILE.match(os.path.basename(path))
    if match:
      folder = os.path.dirname(path)
      splits.setdefault(folder, set()).add(
          match.group('info') or match.group('records'))
  if not splits:
    raise P3ConfigError(
        f'No P3 folder under {root} (${P3_DIR_ENV}): expected '
        '<dataset>_<subset>_<template>/ folders holding info.<split>.json and '
        '<split>.tfrecord-*-of-* files.')
  folders = []
  for path in sorted(splits):
    prefix, dataset, template, score = parse_folder_name(
        os.path.basename(path), prefixes)
    folders.append(P3Folder(path, prefix, dataset, template, score,
                            tuple(sorted(splits[path]))))
  return folders


# --------------------------------- Source -----------------------------------


class P3Source(seqio.DataSource):
  """The TFRecords of one P3 folder, parsed as its info files describe.

  Nothing is read until a split is requested. Shards are interleaved (and
  shuffled as files when `shuffle`); each is checked to be read in full, so a
  corrupt record raises an error naming the folder and shard.
  """

  def __init__(self, folder: str, splits: Sequence[str]):
    """Constructor.

    Args:
      folder: the P3 folder.
      splits: the splits it holds.
    """
    super().__init__(splits=splits)
    self._folder = folder
    self._info = {}

  @property
  def folder(self) -> str:
    return self._folder

  @property
  def supports_arbitrary_sharding(self) -> bool:
    # Sharded here (`get_dataset`), by files or by examples: seqio's own
    # example sharding would split a stream whose order is not the same on
    # every host (shards are interleaved non-deterministically).
    return True

  def __repr__(self) -> str:
    return f'{type(self).__name__}({self._folder!r}, splits={self.splits})'

  def _read_json(self, kind: str, split: str) -> dict[str, Any]:
    path = os.path.join(self._folder, f'{kind}.{split}.json')
    if not tf.io.gfile.exists(path):
      present = sorted(os.path.basename(f) for f in tf.io.gfile.glob(
          os.path.join(self._folder, '*')))
      raise sources.DataNotFoundError(
          f"P3 folder {self._folder} has no {kind}.{split}.json (it holds "
          f'{present}). The download is incomplete: fetch the folder again '
          'from huggingface.co/datasets/bigscience/P3.')
    with tf.io.gfile.GFile(path) as f:
      try:
        return json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(
            f'{path} (P3 folder {self._folder}) is not valid JSON: {e}. Fetch '
            'the folder again.') from e

  def info(self, split: str) -> dict[str, Any]:
    """`info.<split>.json`: the features and the number of shards."""
    if split not in self._info:
      info = self._read_json('info', split)
      if not isinstance(info.get('features'), Mapping) or not isinstance(
          info.get('num_shards'), int):
        raise ValueError(
            f"P3 folder {self._folder}: info.{split}.json lacks 'features' or "
            f"'num_shards' ({sorted(info)}).")
      self._info[split] = info
    return self._info[split]

  def num_input_examples(self, split: str) -> int:
    """The split's size, from `stats.<split>.json`."""
    return int(self._read_json('stats', split)['examples'])

  def list_shards(self, split: str) -> Sequence[str]:
    """The split's shards; all `num_shards` of them must be present."""
    num_shards = self.info(split)['num_shards']
    expected = [
        os.path.join(self._folder,
                     f'{split}.tfrecord-{i:05d}-of-{num_shards:05d}')
        for i in range(num_shards)]
    missing = [f for f in expected if not tf.io.gfile.exists(f)]
    if missing:
      raise sources.DataNotFoundError(
          f'P3 folder {self._folder} lacks {len(missing)} of the {num_shards} '
          f"shards of split '{split}' that info.{split}.json lists: "
          f'{[os.path.basename(f) for f in missing]}. Fetch the folder again.')
    return expected

  def _check_not_lfs_pointer(self, file: str, size: int) -> None:
    """Raises if a shard is a git-lfs pointer (a clone without its data)."""
    if size > _LFS_POINTER_MAX_BYTES:
      return
    with tf.io.gfile.GFile(file, 'rb') as f:
      if f.read(len(_LFS_POINTER_START)) == _LFS_POINTER_START:
        raise sources.DataNotFoundError(
            f'P3 folder {self._folder}: {os.path.basename(file)} is a git-lfs '
            'pointer, not the data. In the P3 clone, run git lfs pull '
            f'--include "data/{os.path.basename(self._folder)}/*" (or delete '
            'the folder to leave it out).')

  def _parser(self, split: str) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """Serialized tf.train.Example -> features, as the info file describes."""
    features = self.info(split)['features']
    spec = {}
    for name, feature in features.items():
      dtype, shape = feature['dtype'], list(feature['shape'])
      if any(d is None for d in shape[1:]):
        raise ValueError(
            f"P3 folder {self._folder}: feature '{name}' has shape {shape}; "
            'only scalars, fixed shapes and variable-length vectors are read.')
      stored = 'int64' if dtype in _INT64_STORED else dtype
      if shape and shape[0] is None:
        spec[name] = tf.io.FixedLenSequenceFeature(
            shape[1:], stored, allow_missing=True)
      else:
        spec[name] = tf.io.FixedLenFeature(shape, stored)

    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
      parsed = tf.io.parse_single_example(serialized, spec)
      return {name: tf.cast(value, features[name]['dtype'])
              for name, value in parsed.items()}

    return parse

  def _read_shard(self, parse, path: tf.Tensor, size: tf.Tensor
                  ) -> tf.data.Dataset:
    """The examples of one shard; fails if the shard is not read in full.

    tf.data reports a damaged record without the file's name, and a record
    that does not parse with its (unprintable) bytes. Here both are skipped
    where they occur (`ignore_errors`), the bytes of the records read are
    counted (each record takes its length + 16 bytes of framing), and an end
    marker asserts that they add up to the shard's size.

    Args:
      parse: the split's parser.
      path: the shard's path, string [].
      size: its size in bytes, int64 [].

    Returns:
      Its examples.
    """
    examples = tf.data.TFRecordDataset(path).map(
        lambda record: (parse(record),
                        tf.cast(tf.strings.length(record), tf.int64) + 16,
                        False)).ignore_errors()
    marker = tf.nest.map_structure(
        lambda s: tf.zeros([d or 0 for d in s.shape], s.dtype),
        examples.element_spec[0])
    end = tf.data.Dataset.from_tensors((marker, tf.constant(0, tf.int64), True))
    message = (
        f'P3 folder {self._folder}: shard has a corrupt record, or records '
        'that do not match its info.<split>.json; fetch the folder again. '
        'Shard, bytes read, bytes in the file:')

    def check(bytes_read, element):
      example, length, is_end = element
      bytes_read += length
      ok = tf.logical_or(tf.logical_not(is_end), tf.equal(bytes_read, size))
      assertion = tf.debugging.Assert(
          ok, [message, path, bytes_read, size], summarize=1)
      with tf.control_dependencies([assertion]):
        is_end = tf.identity(is_end)
      return bytes_read, (example, is_end)

    return (examples.concatenate(end)
            .scan(tf.constant(0, tf.int64), check)
            .filter(lambda example, is_end: tf.logical_not(is_end))
            .map(lambda example, is_end: example))

  def get_dataset(
      self,
      split: str = TRAIN_SPLIT,
      shuffle: bool = True,
      seed: Optional[int] = None,
      shard_info: Optional[seqio.ShardInfo] = None,
      *,
      sequence_length: Optional[Mapping[str, int]] = None,
      use_cached: bool = False,
      num_epochs: Optional[int] = 1,
  ) -> tf.data.Dataset:
    """Reads a split, or one host's part of it (`shard_info`).

    With at least as many files as hosts, each host reads every
    `num_shards`-th file; with fewer, every host reads all files in one
    fixed order and keeps every `num_shards`-th example.
    """
    del sequence_length, use_cached, num_epochs  # Unused.
    if split not in self.splits:
      raise ValueError(
          f"P3 folder {self._folder} has no split '{split}' (it has "
          f'{list(self.splits)}).')
    files = list(self.list_shards(split))
    if shard_info and len(files) < shard_info.num_shards:
      ds = self._read_files(split, files, shuffle=False, seed=None)
      return ds.shard(shard_info.num_shards, shard_info.index)
    if shard_info:
      files = files[shard_info.index::shard_info.num_shards]
    return self._read_files(split, files, shuffle, seed)

  def _read_files(self, split: str, files: Sequence[str], shuffle: bool,
                  seed: Optional[int]) -> tf.data.Dataset:
    """The examples of `files`, in a fixed order unless `shuffle`."""
    sizes = [tf.io.gfile.stat(f).length for f in files]
    for file, size in zip(files, sizes):
      self._check_not_lfs_pointer(file, size)
    parse = self._parser(split)
    ds = tf.data.Dataset.from_tensor_slices(
        (files, tf.constant(sizes, tf.int64)))
    if shuffle:
      ds = ds.shuffle(len(files), seed=seed)
    return ds.interleave(
        functools.partial(self._read_shard, parse),
        cycle_length=max(1, min(16, len(files))), block_length=16,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)


# ------------------------------- Preprocessing ------------------------------


def add_prompt(dataset: tf.data.Dataset,
               output_features: Mapping[str, seqio.Feature],
               instruction: str) -> tf.data.Dataset:
  """Adds the template's instruction to every example, tokenized once.

  Args:
    dataset: P3 examples.
    output_features: the task's features (seqio passes them); `prompt`'s
      vocabulary tokenizes the instruction.
    instruction: the template's instruction.

  Returns:
    The examples with `prompt` int32 [P] (no EOS yet) and
    `prompt_pretokenized` string [] (the instruction).
  """
  vocabulary = output_features[vocab.PROMPT].vocabulary
  vocabularies.vocabulary_size(vocabulary)  # A clear error if it cannot be read.
  tokens = tf.constant(vocabulary.encode(instruction), tf.int32)
  text = tf.constant(instruction)
  return dataset.map(
      lambda ex: {**ex, vocab.PROMPT: tokens,
                  f'{vocab.PROMPT}_pretokenized': text},
      num_parallel_calls=tf.data.AUTOTUNE)


def add_prompt_from_inputs(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Gives every example its own input as `prompt` (no instruction).

  The task of a template whose instruction is empty (its input is nothing
  but fields) would send an empty retrieval query; its `prompt` is instead
  the start of the example's input (cut to the prompt length by
  `append_eos_after_trim` and the feature converter), so that SPT pools its
  query over the input, as it does without a discrete prompt.

  Args:
    dataset: P3 examples.

  Returns:
    The examples with `prompt` = `inputs` and `prompt_pretokenized` =
    `inputs_pretokenized` ('' when absent).
  """

  def add(ex):
    text = ex.get(f'{vocab.INPUTS}_pretokenized', tf.constant(''))
    return {**ex, vocab.PROMPT: ex[vocab.INPUTS],
            f'{vocab.PROMPT}_pretokenized': text}

  return dataset.map(add, num_parallel_calls=tf.data.AUTOTUNE)


def output_features(vocabulary: seqio.Vocabulary, with_prompt: bool
                    ) -> Mapping[str, seqio.Feature]:
  """The features of P3 tasks.

  Args:
    vocabulary: T5's vocabulary (P3's token ids are T5's).
    with_prompt: whether the tasks output the instruction as `prompt`.

  Returns:
    `inputs` and `targets`, used as P3 stores them (`add_eos=False`: inputs
    have no EOS, as T0 trained; targets end in EOS), and `prompt` (tokenized
    here, EOS appended) when `with_prompt`.
  """
  features = {
      vocab.INPUTS: seqio.Feature(vocabulary, add_eos=False),
      vocab.TARGETS: seqio.Feature(vocabulary, add_eos=False),
  }
  if with_prompt:
    features[vocab.PROMPT] = seqio.Feature(vocabulary, add_eos=True)
  return features


# --------------------------------- Mixtures ---------------------------------


class _DatasetSize:
  """N of T0's rate: the largest training-folder size of a dataset (lazy)."""

  def __init__(self, prefix: str, train_sources: Sequence[P3Source]):
    self._prefix = prefix
    self._sources = train_sources
    self._size = None

  def __call__(self) -> int:
    if self._size is None:
      sizes = [s.num_input_examples(TRAIN_SPLIT) for s in self._sources
               if TRAIN_SPLIT in s.splits]
      if not sizes:
        raise sources.DataNotFoundError(
            f"No P3 training folder of dataset '{self._prefix}' has a "
            f"'{TRAIN_SPLIT}' split, so its mixing rate is unknown.")
      self._size = max(sizes)
    return self._size


def t0_rate(size: Callable[[], int], num_templates: int
            ) -> Callable[[seqio.Task], int]:
  """A seqio rate function: T0's rate of one of a dataset's template tasks.

  Args:
    size: returns N, the dataset's training-split size (read when called).
    num_templates: T, the dataset's number of templates.

  Returns:
    task -> `prompted.mixing_rate(N, T)`, N read on the first call.
  """
  return lambda task: prompted.mixing_rate(size(), num_templates)


@dataclasses.dataclass(frozen=True)
class Registered:
  """What `register` registered.

  Attributes:
    folders: the P3 folders, in name order.
    tasks: P3 folder name -> task name.
    mixtures: mixture name -> its task names.
    with_prompt: whether the tasks output `prompt`.
    instruction_sources: task name -> where its `prompt` comes from
      (`DERIVED`, `LITERAL`, `TEMPLATE_NAME` or `INPUTS`, see the module
      docstring); empty without a promptsource checkout.
  """
  folders: tuple[P3Folder, ...]
  tasks: Mapping[str, str]
  mixtures: Mapping[str, tuple[str, ...]]
  with_prompt: bool
  instruction_sources: Mapping[str, str] = dataclasses.field(
      default_factory=dict)

  @property
  def prompt_from_inputs(self) -> tuple[str, ...]:
    """The tasks without an instruction, whose `prompt` is their input."""
    return tuple(name for name, how in self.instruction_sources.items()
                 if how == INPUTS)


def unregister() -> None:
  """Removes the P3 tasks and mixtures an earlier `register` added."""
  for name in list(seqio.TaskRegistry.names()):
    if name.startswith(COLLECTION + eval_protocol.SEPARATOR):
      seqio.TaskRegistry.remove(name)
  for name in (*TRAIN_MIXTURES.values(), HELDOUT_MIXTURE):
    seqio.MixtureRegistry.remove(name)


def register(p3_dir: Optional[str] = None,
             promptsource_dir: Optional[str] = None,
             vocabulary: Optional[seqio.Vocabulary] = None) -> Registered:
  """Registers a task per P3 folder and T0's mixtures over them.

  Replaces the P3 tasks and mixtures of an earlier call.

  Args:
    p3_dir: P3's root or data folder; None reads `$SPT_P3_DIR`.
    promptsource_dir: a promptsource checkout; None reads
      `$SPT_PROMPTSOURCE_DIR` (unset: no instructions, see module docstring).
    vocabulary: the vocabulary of the features; None is T5's
      (`tasks.vocab.t5_vocabulary`).

  Returns:
    The folders, tasks and mixtures registered.

  Raises:
    P3ConfigError: no P3 directory is given, or it (or the promptsource
      checkout) is not where it is said to be.
    ValueError: two folders map to the same task name.
  """
  p3_dir = p3_dir or os.environ.get(P3_DIR_ENV)
  unregister()
  if not p3_dir:
    raise P3ConfigError(
        f'${P3_DIR_ENV} is not set: set it to the folder holding P3 '
        '(huggingface.co/datasets/bigscience/P3: the repository or its data/ '
        'folder) before importing `tasks`, or pass p3_dir.')
  promptsource_dir = promptsource_dir or os.environ.get(PROMPTSOURCE_DIR_ENV)
  promptsource = Promptsource(promptsource_dir) if promptsource_dir else None
  t0_prefixes = {d.prefix: d for d in T0_DATASETS}
  prefixes = set(t0_prefixes) | set(
      promptsource.prefixes if promptsource else ())
  folders = find_folders(p3_dir, sorted(prefixes))
  vocabulary = vocabulary or vocab.t5_vocabulary()
  features = output_features(vocabulary, with_prompt=bool(promptsource))

  tasks = {}
  folder_of_task = {}
  sources_by_folder = {}
  unknown_templates = []
  instruction_sources = {}
  for folder in folders:
    name = folder.task_name
    if name in folder_of_task:
      raise ValueError(
          f'P3 folders {folder.path} and {folder_of_task[name]} both map to '
          f'task {name}; rename one of them.')
    folder_of_task[name] = folder.path
    source = P3Source(folder.path, folder.splits)
    preprocessors = []
    if promptsource:
      template = promptsource.templates(folder.prefix).get(folder.template)
      if template is None:
        unknown_templates.append(folder.name)
        instruction = prompt_templates.clean_instruction(
            folder.template.replace('_', ' ')) or folder.prefix
        how = TEMPLATE_NAME
      else:
        instruction, how = template.derivation
      if instruction:
        add = functools.partial(add_prompt, instruction=instruction)
      else:
        add, how = add_prompt_from_inputs, INPUTS
      instruction_sources[name] = how
      preprocessors = [add, seqio.preprocessors.append_eos_after_trim]
    registry.add_task(
        name,
        source=source,
        preprocessors=preprocessors,
        output_features=features,
        postprocess_fn=(metrics.rank_classification_postprocessor
                        if folder.score else None),
        metric_fns=([eval_protocol.rank_classification_accuracy]
                    if folder.score else []))
    tasks[folder.name] = name
    sources_by_folder[folder.name] = source

  if promptsource:
    logging.info(
        'P3: %d tasks from %s; SPT retrieval query: each template\'s '
        'instruction from promptsource (%s), as the `prompt` feature.',
        len(tasks), p3_dir, promptsource.templates_dir)
    if unknown_templates:
      logging.warning(
          'P3: promptsource (%s) has no template for %d folders; their '
          'instruction is their template name: %s', promptsource.templates_dir,
          len(unknown_templates), unknown_templates)
    counts = {how: sum(h == how for h in instruction_sources.values())
              for how in (DERIVED, LITERAL, TEMPLATE_NAME, INPUTS)}
    logging.info(
        'P3: instructions of %d tasks: %d derived, %d from their template\'s '
        'literal text (logged above), %d from their template name, %d none.',
        len(instruction_sources), *counts.values())
    literal = [n for n, h in instruction_sources.items() if h == LITERAL]
    if literal:
      logging.warning(
          'P3: %d tasks use their template\'s literal input text as their '
          'instruction (it could not be derived): %s', len(literal), literal)
    no_instruction = [n for n, h in instruction_sources.items() if h == INPUTS]
    if no_instruction:
      logging.warning(
          'P3: the templates of %d tasks have no instruction (their input is '
          'nothing but fields); so that no empty query reaches the model, '
          'their `prompt` is their input, over whose start SPT pools its '
          'retrieval query: %s', len(no_instruction), no_instruction)
  else:
    logging.warning(
        'P3: %d tasks from %s; no promptsource checkout ($%s unset): the '
        'tasks have no `prompt` feature, and SPT pools its retrieval query '
        'over the encoder input (SptConfig.prompt_length = 0, prompt_span = '
        "'all_tokens'). Held-out evaluation counts every template, not only "
        "T0's original-task ones.", len(tasks), p3_dir, PROMPTSOURCE_DIR_ENV)

  mixtures = _register_mixtures(folders, tasks, sources_by_folder,
                                t0_prefixes, promptsource)
  return Registered(tuple(folders), tasks, mixtures, bool(promptsource),
                    instruction_sources)


def _register_mixtures(
    folders: Sequence[P3Folder],
    tasks: Mapping[str, str],
    sources_by_folder: Mapping[str, P3Source],
    t0_prefixes: Mapping[str, T0Dataset],
    promptsource: Optional[Promptsource],
) -> dict[str, tuple[str, ...]]:
  """T0's training mixtures and held-out evaluation mixture (see module)."""
  train_folders = {}
  for folder in folders:
    dataset = t0_prefixes.get(folder.prefix)
    if (dataset and dataset.train_stage and not folder.score and
        folder.name not in EXCLUDED_TRAINING_FOLDERS):
      train_folders.setdefault(folder.prefix, []).append(folder)
  rates = {}
  for prefix, dataset_folders in train_folders.items():
    num_templates = (len(promptsource.templates(prefix)) if promptsource
                     else 0) or len(dataset_folders)
    size = _DatasetSize(
        prefix, [sources_by_folder[f.name] for f in dataset_folders])
    rate = t0_rate(size, num_templates)
    for folder in dataset_folders:
      rates[tasks[folder.name]] = rate

  mixtures = {}
  for i, stage in enumerate(_STAGES):
    stages = _STAGES[:i + 1]
    names = tuple(
        tasks[f.name] for prefix, dataset_folders in train_folders.items()
        if t0_prefixes[prefix].train_stage in stages for f in dataset_folders)
    if names:
      registry.add_mixture(TRAIN_MIXTURES[stage],
                           [(name, rates[name]) for name in names])
      mixtures[TRAIN_MIXTURES[stage]] = names

  heldout = []
  for folder in folders:
    dataset = t0_prefixes.get(folder.prefix)
    if not (dataset and dataset.heldout and folder.score and
            HELDOUT_SPLIT in folder.splits):
      continue
    if promptsource:
      template = promptsource.templates(folder.prefix).get(folder.template)
      if not (template and template.original_task):
        continue
    heldout.append(tasks[folder.name])
  if heldout:
    registry.add_mixture(HELDOUT_MIXTURE, heldout, default_rate=1.0)
    mixtures[HELDOUT_MIXTURE] = tuple(heldout)
  return mixtures


def register_from_environment() -> Optional[Registered]:
  """Registers P3 if `$SPT_P3_DIR` is set (at `import tasks`), else nothing."""
  if not os.environ.get(P3_DIR_ENV):
    return None
  return register()


register_from_environment()
