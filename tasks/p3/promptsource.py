"""promptsource's templates.yaml read with PyYAML: each template's instruction.

Part of `tasks.p3` (see its docstring).
"""

import dataclasses
import functools
import os
import re
from typing import Mapping, Optional, Sequence

from absl import logging
import tensorflow as tf
import yaml

from tasks.p3 import datasets as p3_datasets
from tasks import prompt_templates

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
        name=self.name, jinja=self.jinja, answer_choices=self.answer_choices
    )
    source = prompt_templates.split_source(self.jinja)[0]
    literal = prompt_templates.clean_instruction(
        re.sub(r'{{.*?}}|{%.*?%}|{#.*?#}', ' ', source, flags=re.DOTALL)
    )
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
        'input outside Jinja blocks: %r',
        self.file or '(no file)',
        self.name,
        reason,
        literal,
    )
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
      data.get('templates'), Mapping
  ):
    raise ValueError(
        f"{path} is not a promptsource template file: it has no 'templates' "
        'mapping.'
    )
  templates = []
  for key, entry in data['templates'].items():
    if (
        not isinstance(entry, Mapping)
        or 'name' not in entry
        or ('jinja' not in entry)
    ):
      raise ValueError(f"{path}: template {key!r} lacks 'name' or 'jinja'.")
    metadata = entry.get('metadata') or {}
    answer_choices = entry.get('answer_choices')
    templates.append(
        PromptsourceTemplate(
            name=str(entry['name']),
            jinja=str(entry['jinja']),
            answer_choices=None
            if answer_choices is None
            else str(answer_choices),
            original_task=bool(metadata.get('original_task')),
            file=path,
        )
    )
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
      p3_datasets.P3ConfigError: no promptsource template file under `path`.
    """
    path = os.path.expanduser(path)
    for candidate in (
        os.path.join(path, 'promptsource', 'templates'),
        os.path.join(path, 'templates'),
        path,
    ):
      if self._files_under(candidate):
        self.templates_dir = candidate
        break
    else:
      raise p3_datasets.P3ConfigError(
          f'No promptsource template files (<dataset>[/<subset>]/'
          f'templates.yaml) under {path} (${p3_datasets.PROMPTSOURCE_DIR_ENV}). Point it '
          'at a checkout of github.com/bigscience-workshop/promptsource, or '
          'unset it to use P3 without instructions.'
      )
    # P3 folder prefix -> templates.yaml, and its templates once read.
    self._files = {}
    self._templates = {}
    for file in self._files_under(self.templates_dir):
      parts = os.path.relpath(os.path.dirname(file), self.templates_dir).split(
          os.sep
      )
      self._files[p3_datasets.p3_name(*parts)] = file

  @staticmethod
  def _files_under(folder: str) -> list[str]:
    return sorted(
        tf.io.gfile.glob(os.path.join(folder, '*', 'templates.yaml'))
        + tf.io.gfile.glob(os.path.join(folder, '*', '*', 'templates.yaml'))
    )

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
          p3_datasets.p3_name(t.name): t
          for t in read_promptsource_yaml(self._files[prefix])
      }
    return self._templates[prefix]
