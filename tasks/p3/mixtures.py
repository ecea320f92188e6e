"""P3's tasks and T0's mixtures registered over them, with T0's mixing rates.

Part of `tasks.p3` (see its docstring).
"""

import dataclasses
import functools
import os
from typing import Callable, Mapping, Optional, Sequence

from absl import logging
import seqio

from spt_jax import eval_protocol
from tasks import metrics
from tasks.p3 import datasets as p3_datasets
from tasks.p3 import folders as p3_folders
from tasks.p3 import preprocessing as p3_preprocessing
from tasks.p3 import promptsource as p3_promptsource
from tasks.p3 import source as p3_source
from tasks import prompt_templates
from tasks import prompted
from tasks import registry
from tasks import sources
from tasks import vocab


class _DatasetSize:
  """N of T0's rate: the largest training-folder size of a dataset (lazy)."""

  def __init__(self, prefix: str, train_sources: Sequence[p3_source.P3Source]):
    self._prefix = prefix
    self._sources = train_sources
    self._size = None

  def __call__(self) -> int:
    if self._size is None:
      sizes = [
          s.num_input_examples(p3_datasets.TRAIN_SPLIT)
          for s in self._sources
          if p3_datasets.TRAIN_SPLIT in s.splits
      ]
      if not sizes:
        raise sources.DataNotFoundError(
            f"No P3 training folder of dataset '{self._prefix}' has a "
            f"'{p3_datasets.TRAIN_SPLIT}' split, so its mixing rate is unknown."
        )
      self._size = max(sizes)
    return self._size


def t0_rate(
    size: Callable[[], int], num_templates: int
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

  folders: tuple[p3_folders.P3Folder, ...]
  tasks: Mapping[str, str]
  mixtures: Mapping[str, tuple[str, ...]]
  with_prompt: bool
  instruction_sources: Mapping[str, str] = dataclasses.field(
      default_factory=dict
  )

  @property
  def prompt_from_inputs(self) -> tuple[str, ...]:
    """The tasks without an instruction, whose `prompt` is their input."""
    return tuple(
        name
        for name, how in self.instruction_sources.items()
        if how == p3_promptsource.INPUTS
    )


def unregister() -> None:
  """Removes the P3 tasks and mixtures an earlier `register` added."""
  for name in list(seqio.TaskRegistry.names()):
    if name.startswith(p3_datasets.COLLECTION + eval_protocol.SEPARATOR):
      seqio.TaskRegistry.remove(name)
  for name in (
      *p3_datasets.TRAIN_MIXTURES.values(),
      p3_datasets.HELDOUT_MIXTURE,
  ):
    seqio.MixtureRegistry.remove(name)


def _prompt_preprocessors(
    folder: p3_folders.P3Folder,
    promptsource: p3_promptsource.Promptsource,
    unknown_templates: list,
) -> tuple[list, str]:
  """(preprocessors adding the `prompt` feature and EOS, how its instruction
  was found); a folder promptsource lacks joins `unknown_templates`."""
  template = promptsource.templates(folder.prefix).get(folder.template)
  if template is None:
    unknown_templates.append(folder.name)
    instruction = (
        prompt_templates.clean_instruction(folder.template.replace('_', ' '))
        or folder.prefix
    )
    how = p3_promptsource.TEMPLATE_NAME
  else:
    instruction, how = template.derivation
  if instruction:
    add = functools.partial(
        p3_preprocessing.add_prompt, instruction=instruction
    )
  else:
    add, how = p3_preprocessing.add_prompt_from_inputs, p3_promptsource.INPUTS
  return [add, seqio.preprocessors.append_eos_after_trim], how


def _log_instructions(
    num_tasks: int,
    p3_dir: str,
    promptsource: Optional[p3_promptsource.Promptsource],
    unknown_templates: Sequence[str],
    instruction_sources: Mapping[str, str],
) -> None:
  """Says where each task's retrieval query comes from, and what is missing."""
  if promptsource:
    logging.info(
        "P3: %d tasks from %s; SPT retrieval query: each template's "
        'instruction from promptsource (%s), as the `prompt` feature.',
        num_tasks,
        p3_dir,
        promptsource.templates_dir,
    )
    if unknown_templates:
      logging.warning(
          'P3: promptsource (%s) has no template for %d folders; their '
          'instruction is their template name: %s',
          promptsource.templates_dir,
          len(unknown_templates),
          unknown_templates,
      )
    counts = {
        how: sum(h == how for h in instruction_sources.values())
        for how in (
            p3_promptsource.DERIVED,
            p3_promptsource.LITERAL,
            p3_promptsource.TEMPLATE_NAME,
            p3_promptsource.INPUTS,
        )
    }
    logging.info(
        "P3: instructions of %d tasks: %d derived, %d from their template's "
        'literal text (logged above), %d from their template name, %d none.',
        len(instruction_sources),
        *counts.values(),
    )
    literal = [
        n
        for n, h in instruction_sources.items()
        if h == p3_promptsource.LITERAL
    ]
    if literal:
      logging.warning(
          "P3: %d tasks use their template's literal input text as their "
          'instruction (it could not be derived): %s',
          len(literal),
          literal,
      )
    no_instruction = [
        n for n, h in instruction_sources.items() if h == p3_promptsource.INPUTS
    ]
    if no_instruction:
      logging.warning(
          'P3: the templates of %d tasks have no instruction (their input is '
          'nothing but fields); so that no empty query reaches the model, '
          'their `prompt` is their input, over whose start SPT pools its '
          'retrieval query: %s',
          len(no_instruction),
          no_instruction,
      )
  else:
    logging.warning(
        'P3: %d tasks from %s; no promptsource checkout ($%s unset): the '
        'tasks have no `prompt` feature, and SPT pools its retrieval query '
        'over the encoder input (SptConfig.prompt_length = 0, prompt_span = '
        "'all_tokens'). Held-out evaluation counts every template, not only "
        "T0's original-task ones.",
        num_tasks,
        p3_dir,
        p3_datasets.PROMPTSOURCE_DIR_ENV,
    )


def register(
    p3_dir: Optional[str] = None,
    promptsource_dir: Optional[str] = None,
    vocabulary: Optional[seqio.Vocabulary] = None,
) -> Registered:
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
    p3_datasets.P3ConfigError: no P3 directory is given, or it (or the promptsource
      checkout) is not where it is said to be.
    ValueError: two folders map to the same task name.
  """
  p3_dir = p3_dir or os.environ.get(p3_datasets.P3_DIR_ENV)
  unregister()
  _check_p3_dir_given(p3_dir)
  promptsource = _open_promptsource(promptsource_dir)
  t0_prefixes = {d.prefix: d for d in p3_datasets.T0_DATASETS}
  prefixes = set(t0_prefixes) | set(
      promptsource.prefixes if promptsource else ()
  )
  folders = p3_folders.find_folders(p3_dir, sorted(prefixes))
  vocabulary = vocabulary or vocab.t5_vocabulary()
  features = p3_preprocessing.output_features(
      vocabulary, with_prompt=bool(promptsource)
  )

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
          f'task {name}; rename one of them.'
      )
    folder_of_task[name] = folder.path
    source, instruction_source = _register_folder_task(
        folder, features, promptsource, unknown_templates
    )
    if promptsource:
      instruction_sources[name] = instruction_source
    tasks[folder.name] = name
    sources_by_folder[folder.name] = source

  _log_instructions(
      len(tasks), p3_dir, promptsource, unknown_templates, instruction_sources
  )
  mixtures = _register_mixtures(
      folders, tasks, sources_by_folder, t0_prefixes, promptsource
  )
  return Registered(
      tuple(folders), tasks, mixtures, bool(promptsource), instruction_sources
  )


def _check_p3_dir_given(p3_dir: Optional[str]) -> None:
  """Raises P3ConfigError when neither p3_dir nor `$SPT_P3_DIR` names P3."""
  if not p3_dir:
    raise p3_datasets.P3ConfigError(
        f'${p3_datasets.P3_DIR_ENV} is not set: set it to the folder holding P3 '
        '(huggingface.co/datasets/bigscience/P3: the repository or its data/ '
        'folder) before importing `tasks`, or pass p3_dir.'
    )


def _open_promptsource(
    promptsource_dir: Optional[str],
) -> Optional[p3_promptsource.Promptsource]:
  """The promptsource checkout of the argument or of its env; None: none."""
  promptsource_dir = promptsource_dir or os.environ.get(
      p3_datasets.PROMPTSOURCE_DIR_ENV
  )
  return (
      p3_promptsource.Promptsource(promptsource_dir)
      if promptsource_dir
      else None
  )


def _register_folder_task(
    folder: p3_folders.P3Folder,
    features: Mapping[str, seqio.Feature],
    promptsource: Optional[p3_promptsource.Promptsource],
    unknown_templates: list,
) -> tuple[p3_source.P3Source, Optional[str]]:
  """Registers the task of one P3 folder.

  Args:
    folder: the P3 folder; its `task_name` names the task.
    features: the tasks' output features.
    promptsource: adds the instruction preprocessors when given.
    unknown_templates: collects the templates promptsource lacks.

  Returns:
    (the folder's P3Source, where its instructions come from: None without
    promptsource).
  """
  source = p3_source.P3Source(folder.path, folder.splits)
  preprocessors, instruction_source = [], None
  if promptsource:
    preprocessors, instruction_source = _prompt_preprocessors(
        folder, promptsource, unknown_templates
    )
  registry.add_task(
      folder.task_name,
      source=source,
      preprocessors=preprocessors,
      output_features=features,
      postprocess_fn=(
          metrics.rank_classification_postprocessor if folder.score else None
      ),
      metric_fns=(
          [eval_protocol.rank_classification_accuracy] if folder.score else []
      ),
  )
  return source, instruction_source


def _register_mixtures(
    folders: Sequence[p3_folders.P3Folder],
    tasks: Mapping[str, str],
    sources_by_folder: Mapping[str, p3_source.P3Source],
    t0_prefixes: Mapping[str, p3_datasets.T0Dataset],
    promptsource: Optional[p3_promptsource.Promptsource],
) -> dict[str, tuple[str, ...]]:
  """T0's training mixtures and held-out evaluation mixture (see module)."""
  train_folders = {}
  for folder in folders:
    dataset = t0_prefixes.get(folder.prefix)
    if (
        dataset
        and dataset.train_stage
        and not folder.score
        and folder.name not in p3_datasets.EXCLUDED_TRAINING_FOLDERS
    ):
      train_folders.setdefault(folder.prefix, []).append(folder)
  rates = {}
  for prefix, dataset_folders in train_folders.items():
    num_templates = (
        len(promptsource.templates(prefix)) if promptsource else 0
    ) or len(dataset_folders)
    size = _DatasetSize(
        prefix, [sources_by_folder[f.name] for f in dataset_folders]
    )
    rate = t0_rate(size, num_templates)
    for folder in dataset_folders:
      rates[tasks[folder.name]] = rate

  mixtures = {}
  for i, stage in enumerate(p3_datasets.STAGES):
    stages = p3_datasets.STAGES[: i + 1]
    names = tuple(
        tasks[f.name]
        for prefix, dataset_folders in train_folders.items()
        if t0_prefixes[prefix].train_stage in stages
        for f in dataset_folders
    )
    if names:
      registry.add_mixture(
          p3_datasets.TRAIN_MIXTURES[stage],
          [(name, rates[name]) for name in names],
      )
      mixtures[p3_datasets.TRAIN_MIXTURES[stage]] = names

  heldout = []
  for folder in folders:
    dataset = t0_prefixes.get(folder.prefix)
    if not (
        dataset
        and dataset.heldout
        and folder.score
        and p3_datasets.HELDOUT_SPLIT in folder.splits
    ):
      continue
    if promptsource:
      template = promptsource.templates(folder.prefix).get(folder.template)
      if not (template and template.original_task):
        continue
    heldout.append(tasks[folder.name])
  if heldout:
    registry.add_mixture(p3_datasets.HELDOUT_MIXTURE, heldout, default_rate=1.0)
    mixtures[p3_datasets.HELDOUT_MIXTURE] = tuple(heldout)
  return mixtures


def register_from_environment() -> Optional[Registered]:
  """Registers P3 if `$SPT_P3_DIR` is set (at `import tasks`), else nothing."""
  if not os.environ.get(p3_datasets.P3_DIR_ENV):
    return None
  return register()


register_from_environment()
