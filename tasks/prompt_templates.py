"""Discrete prompt templates in the promptsource/P3 style.

A template file `tasks/templates/<collection>.json` holds the templates of one
dataset (the format is documented in `tasks/templates/README.md`); templates
kept elsewhere, e.g. in a user's own package, are loaded by path
(`load('/path/to/my_dataset.json')`):

    {"dataset": "super_glue/cb",
     "templates": [{"name": "can_we_infer",
                    "jinja": "Suppose {{ premise }} Can we infer that ... ||| "
                             "{{ answer_choices[label] }}",
                    "answer_choices": "Yes ||| No ||| Maybe"}]}

`jinja` renders the prompted input and, after `|||`, the target.
`answer_choices` (optional) renders the `|||`-separated choices used for rank
classification; it may refer to the example's fields (COPA's two choices) or
be constant (Yes/No/Maybe). Inside `jinja`, `answer_choices` is the rendered
list. Field names that are not Python identifiers (TREC's `label-coarse`) are
exposed with `_` in place of the other characters (`label_coarse`).

Templates are Jinja with promptsource's helpers, so that promptsource's own
files (`tasks.p3`) render here as they do there (`tasks.template_jinja`).

The *instruction* of a template is its input text with every data field
removed: the template rendered with each field blank, fixed answer choices
kept, whitespace collapsed and emptied quotes/brackets dropped. A template may
give it explicitly with an `instruction` entry. It is the discrete prompt from
which SPT forms its retrieval query, so it is constant per template. As
promptsource applies a template, the *whole* `jinja` is rendered and the text
split at its first `|||` (so a `|||` inside an `{% if %}` block splits where
the rendered text does); if that fails, the input half of the source alone.
How a blank field renders is `tasks.template_jinja`'s. A template that still cannot be
rendered (any error, a label-indexed "no answer" included) makes
`Template.instruction` raise ValueError naming it.

`load` rejects, naming the file and the template, JSON and Jinja syntax errors;
`Template.check_fields` rejects variables that are not fields of the dataset
(`tasks.preprocessors.apply_template` calls it when the dataset is built, so
the error comes before any example is read).
"""

import dataclasses
import functools
import json
import os
import re
from typing import Any, Mapping, Optional, Sequence

import jinja2
from jinja2 import meta

from spt_jax import gin_utils
from tasks import template_jinja

TEMPLATES_DIR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), 'templates'
)
SEPARATOR = '|||'


class TemplateError(gin_utils.InputError, ValueError):
  """A template file or template that cannot be used; the message names it."""


def _split_choices(text: str) -> list[str]:
  return [c.strip() for c in text.split(SEPARATOR)]


def _identifier(key: str) -> str:
  return re.sub(r'\W', '_', key)


@dataclasses.dataclass(frozen=True)
class Rendered:
  """One prompted example: input text, target text and answer choices."""

  inputs: str
  targets: str
  answer_choices: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Template:
  """A P3-style template: instruction + fields, `|||`, target, answer choices.

  Attributes:
    name: the template's name, unique within its dataset.
    jinja: the Jinja source; `|||` separates the input from the target.
    answer_choices: optional Jinja source of the `|||`-separated choices.
    explicit_instruction: the instruction when given in the file, else None.
  """

  name: str
  jinja: str
  answer_choices: Optional[str] = None
  explicit_instruction: Optional[str] = None

  @functools.cached_property
  def fixed_answer_choices(self) -> Optional[tuple[str, ...]]:
    """The answer choices when they do not depend on the example, else None."""
    if self.answer_choices is None:
      return None
    if meta.find_undeclared_variables(
        template_jinja.ENV.parse(self.answer_choices)
    ):
      return None
    return tuple(
        _split_choices(
            template_jinja.compile_source(self.answer_choices).render()
        )
    )

  @functools.cached_property
  def instruction(self) -> str:
    """The template's input text with every data field removed.

    The whole template is rendered with every field blank and the text
    split at its first `|||`, as promptsource splits an applied template;
    if that fails, the input half of the source alone (`split_source`).

    Raises:
      ValueError: neither renders (the message names the template and says
        why); give the template an explicit "instruction".
    """
    if self.explicit_instruction is not None:
      return self.explicit_instruction
    errors = []
    for source, split in (
        (self.jinja, True),
        (split_source(self.jinja)[0], False),
    ):
      try:
        text = template_jinja.compile_source(source, blank=True).render(
            **self._blank_context()
        )
      except Exception as e:  # pylint: disable=broad-except
        # Any error of the template's own code (a label-indexed "no answer",
        # a filter given a blank, a syntax error) fails the derivation.
        errors.append(f'{type(e).__name__}: {e}')
        continue
      if split:
        text = text.split(SEPARATOR, 1)[0]
      return clean_instruction(text)
    raise ValueError(
        f'Cannot derive the instruction of template {self.name!r} by '
        f'blanking its fields ({errors[0]}); give it an explicit '
        '"instruction".'
    )

  def _blank_context(self) -> dict[str, Any]:
    """The variables of instruction derivation: the fixed answer choices."""
    if self.fixed_answer_choices is None:
      return {}
    return {
        'answer_choices': template_jinja.BlankChoices(
            _split_choices(
                template_jinja.compile_source(
                    self.answer_choices, blank=True
                ).render()
            )
        )
    }

  @property
  def sources(self) -> dict[str, str]:
    """The Jinja sources of the template: input, target, answer choices."""
    input_source, target_source = split_source(self.jinja)
    parts = {'input': input_source, 'target': target_source}
    if self.answer_choices is not None:
      parts['answer_choices'] = self.answer_choices
    return parts

  def check_syntax(self) -> None:
    """Raises TemplateError at the first Jinja syntax error."""
    for part, source in self.sources.items():
      try:
        template_jinja.ENV.parse(source)
      except jinja2.TemplateSyntaxError as e:
        raise TemplateError(
            f'Template {self.name!r}: Jinja syntax error in its {part} (line '
            f'{e.lineno} of that part): {e.message}.'
        ) from None

  def check_fields(self, example: Mapping[str, Any]) -> None:
    """Renders against a stand-in example; fails on an undefined variable.

    Args:
      example: a stand-in example with every field of the dataset, e.g. empty
        strings, zeros and one-element lists of the declared types.

    Raises:
      TemplateError: naming the variable, or the field reached through an
        undefined attribute, and the dataset's fields.
    """
    fields = {_identifier(k) for k in example}
    known = fields | {'answer_choices'} | set(template_jinja.ENV.globals)
    for part, source in self.sources.items():
      unknown = sorted(
          meta.find_undeclared_variables(template_jinja.ENV.parse(source))
          - known
      )
      if unknown:
        raise TemplateError(
            f'Template {self.name!r} uses {", ".join(unknown)} in its {part}, '
            f'which the dataset does not have; its fields are '
            f'{", ".join(sorted(fields))}.'
        )
    try:
      self.render(example)
    except jinja2.UndefinedError as e:
      if re.search(r'has no element -?\d+$', e.message or ''):
        return  # A list index the stand-in's one-element lists lack.
      raise TemplateError(
          f"Template {self.name!r} cannot render the dataset's fields "
          f'({e.message}); its fields are {", ".join(sorted(fields))}.'
      ) from None
    except Exception:  # pylint: disable=broad-except
      pass  # Stand-in values may fail where real data does not.

  def render(self, example: Mapping[str, Any]) -> Optional[Rendered]:
    """Renders one example; None when it has no target (e.g. label -1).

    Args:
      example: the raw example, nested dicts of Python values (str, int,
        float, lists).

    Returns:
      The rendered input, target and answer choices, or None when the example
      cannot be answered (an unlabelled example, an empty target).
    """
    context = {_identifier(k): v for k, v in example.items()}
    choices = template_jinja.Choices()
    if self.answer_choices is not None:
      choices = template_jinja.Choices(
          _split_choices(
              template_jinja.compile_source(self.answer_choices).render(
                  **context
              )
          )
      )
    # The halves render separately, so data containing `|||` is harmless.
    input_source, target_source = split_source(self.jinja)
    try:
      inputs, targets = (
          template_jinja.compile_source(source)
          .render(**context, answer_choices=choices)
          .strip()
          for source in (input_source, target_source)
      )
    except template_jinja.NoAnswer:
      return None
    if not targets:
      return None
    return Rendered(inputs, targets, tuple(choices))


def split_source(jinja: str) -> tuple[str, str]:
  """Splits Jinja source at the first `|||` outside `{{ }}`/`{% %}` blocks."""
  blocks = [
      m.span()
      for m in re.finditer(r'{{.*?}}|{%.*?%}|{#.*?#}', jinja, re.DOTALL)
  ]
  for match in re.finditer(re.escape(SEPARATOR), jinja):
    if not any(start <= match.start() < end for start, end in blocks):
      return jinja[: match.start()], jinja[match.end() :]
  return jinja, ''


def clean_instruction(text: str) -> str:
  """Collapses whitespace and drops the punctuation emptied of fields."""
  text = re.sub(r'\s+', ' ', text)
  previous = None
  while previous != text:
    previous = text
    text = re.sub(r'"\s*"|\'\s*\'|“\s*”|\(\s*\)|\[\s*\]', ' ', text)
    text = re.sub(r'\s+', ' ', text)
  text = re.sub(r'\s+([?.,:;!])', r'\1', text)
  text = re.sub(r'([.?!])[.?!:;,]+|[:;,]([.?!])', r'\1\2', text)
  text = re.sub(r'^[\s:;,.?!\-]+|[\s\-]+$', '', text)
  return text


@dataclasses.dataclass(frozen=True)
class TemplateCollection:
  """The templates of one dataset, as read from its JSON file.

  Attributes:
    name: the file's stem.
    dataset: the source dataset, for reference (e.g. 'super_glue/cb').
    templates: the templates, in file order.
    heldout: names of templates kept for zero-shot evaluation only (the
      optional `heldout_templates` entry).
  """

  name: str
  dataset: str
  templates: tuple[Template, ...]
  heldout: tuple[str, ...] = ()

  def __getitem__(self, name: str) -> Template:
    for template in self.templates:
      if template.name == name:
        return template
    raise KeyError(f'No template {name!r} in {self.name!r}.')

  @property
  def names(self) -> Sequence[str]:
    return [t.name for t in self.templates]

  @property
  def seen(self) -> Sequence[str]:
    """The templates that are not held out."""
    return [n for n in self.names if n not in self.heldout]


def _is_path(collection: str) -> bool:
  return collection.endswith('.json') or os.sep in collection


def template_path(collection: str) -> str:
  """The file of a collection: a name in `tasks/templates/`, or a path."""
  if _is_path(collection):
    return os.path.abspath(os.path.expanduser(collection))
  return os.path.join(TEMPLATES_DIR, f'{collection}.json')


@functools.lru_cache(maxsize=None)
def load(collection: str) -> TemplateCollection:
  """Reads a template file and checks its JSON and Jinja syntax.

  Args:
    collection: a name in `tasks/templates/` (`'super_glue_cb'`), or the path
      of a JSON file anywhere (ending in `.json`, or holding a `/`); the
      collection is named after the file's stem.

  Returns:
    The file's templates.

  Raises:
    FileNotFoundError: there is no such file.
    TemplateError: the file is not valid, naming the file and the template.
  """
  path = template_path(collection)
  name = os.path.splitext(os.path.basename(path))[0]
  try:
    # utf-8-sig: a byte-order mark (Windows editors write one) is not JSON.
    with open(path, encoding='utf-8-sig') as f:
      data = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(
        f'No template file {path} (a name is looked up in {TEMPLATES_DIR}; '
        'give a path ending in .json for a file elsewhere).'
    ) from None
  except json.JSONDecodeError as e:
    raise TemplateError(f'{path}: not valid JSON: {e}.') from None
  except UnicodeDecodeError as e:
    raise TemplateError(
        f'{path}: not UTF-8 ({e.reason} at byte {e.start}); '
        'save it as UTF-8.'
    ) from None
  try:
    templates = tuple(
        Template(
            name=t['name'],
            jinja=t['jinja'],
            answer_choices=t.get('answer_choices'),
            explicit_instruction=t.get('instruction'),
        )
        for t in data['templates']
    )
  except (KeyError, TypeError) as e:
    raise TemplateError(
        f'{path}: expected {{"dataset": ..., "templates": [{{"name": ..., '
        f'"jinja": ...}}, ...]}} (missing {e}); see {TEMPLATES_DIR}/README.md.'
    ) from None
  for template in templates:
    try:
      template.check_syntax()
    except TemplateError as e:
      raise TemplateError(f'{path}: {e}') from None
  names = [t.name for t in templates]
  if len(set(names)) != len(names):
    raise TemplateError(f'{path}: duplicate template names: {names}')
  heldout = tuple(data.get('heldout_templates', ()))
  if not set(heldout) <= set(names):
    raise TemplateError(f'{path}: unknown held-out templates: {heldout}')
  return TemplateCollection(name, data.get('dataset', name), templates, heldout)


def available() -> list[str]:
  """The names of every template collection in `tasks/templates/`."""
  return sorted(
      f[: -len('.json')]
      for f in os.listdir(TEMPLATES_DIR)
      if f.endswith('.json')
  )
