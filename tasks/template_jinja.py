"""The Jinja environments templates render in (`tasks.prompt_templates`).

Templates are Jinja with promptsource's helpers, so that promptsource's own
files (`tasks.p3`) render here as they do there: the global `zip` and the
filters `choice` (a random element, as promptsource picks it),
`most_frequent` (the items that occur most often, in order of first
occurrence; None for an empty input) and `highlight` (the text in an HTML
span).

An example renders in `ENV` (an unknown variable is an error; a label outside
the answer choices raises `NoAnswer`). A template's instruction renders in
`BLANK_ENV`, where every field is `Blank`: it renders as nothing whatever is
done to it (attributes, items, calls, filters, arithmetic are blank; it
iterates as empty), and a condition on it holds (it is true and every
comparison with it is True, `is defined` too), so the text a guard such as
`{% if label == 1 %}` keeps is kept, and an `if`/`elif` chain on a field
takes its first branch. `choice` takes the first element, so that the
instruction is stable; `answer_choices` is a plain list
(`answer_choices[-1]` is the last choice).
"""

import collections
import functools
import random

import jinja2


class NoAnswer(Exception):
  """Raised when a label indexes outside the answer choices."""


class Choices(list):
  """Answer choices; an index outside them (label -1) means "no answer"."""

  def __getitem__(self, index):
    if isinstance(index, int) and not 0 <= index < len(self):
      raise NoAnswer(index)
    return super().__getitem__(index)


def _blank_result(self, *args, **kwargs):
  del args, kwargs  # Whatever the operands, the result is blank.
  return self


def _holds(self, *args):
  del self, args  # A condition on a field holds.
  return True


class Blank(jinja2.ChainableUndefined):
  """A field value that renders as nothing, whatever is done to it.

  Its attributes, items, calls, filters (`BLANK_ENV` passes blanks
  through every filter) and arithmetic are blank; it iterates as
  empty and contains nothing. A condition on it holds: it is true, and
  every comparison with it (`==`, `!=`, `<`, ...) is True, so that a
  template guarded by `{% if label == 1 %}` or `{% if answers | length > 0
  %}` renders its text as for the examples it keeps.
  """

  __slots__ = ()

  __call__ = _blank_result
  __bool__ = _holds
  __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _holds
  __hash__ = jinja2.ChainableUndefined.__hash__
  __add__ = __radd__ = __sub__ = __rsub__ = _blank_result
  __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _blank_result
  __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = _blank_result
  __pow__ = __rpow__ = __neg__ = __pos__ = __abs__ = _blank_result

  def __iter__(self):
    return iter(())

  def __contains__(self, item):
    return False


class BlankChoices(list):
  """Fixed answer choices while deriving an instruction.

  A plain list (`answer_choices[-1]` is the last choice, as in promptsource)
  whose item at a blank index (`answer_choices[label]`) is blank.
  """

  def __getitem__(self, index):
    if isinstance(index, jinja2.Undefined):
      return Blank()
    return super().__getitem__(index)


# promptsource's Jinja helpers (see the module docstring).


def _choice(items):
  """A random element, as promptsource's `choice` filter picks it."""
  return random.choice(items)


def _most_frequent(items):
  """The items that occur most often, in order of first occurrence."""
  if not items:
    return None
  counts = collections.Counter(items)
  top = max(counts.values())
  return [item for item, count in counts.items() if count == top]


def _highlight(text):
  """Wraps the text in an HTML span, as promptsource's viewer shows fields."""
  return f"<span style='color: #F08080'>{text}</span>"


def _first(items):
  """`choice` while deriving an instruction: the first element (stable)."""
  return next(iter(items), Blank())


def _passes_blanks(function):
  """A filter that returns a blank value as it is (and otherwise filters)."""
  # Filters marked to receive the context or environment take it first.
  position = 1 if getattr(function, 'jinja_pass_arg', None) else 0

  @functools.wraps(function)
  def wrapped(*args, **kwargs):
    if len(args) > position and isinstance(args[position], jinja2.Undefined):
      return args[position]
    return function(*args, **kwargs)

  return wrapped


def _blank_range(*args):
  """`range`, empty when a bound is blank."""
  if any(isinstance(a, jinja2.Undefined) for a in args):
    return range(0)
  return range(*args)


# The filters and globals of every template environment.
FILTERS = {
    'choice': _choice,
    'most_frequent': _most_frequent,
    'highlight': _highlight,
}
GLOBALS = {'zip': zip}


def _environment(undefined, filters) -> jinja2.Environment:
  env = jinja2.Environment(
      undefined=undefined, autoescape=False, keep_trailing_newline=False
  )
  env.filters.update(filters)
  env.globals.update(GLOBALS)
  return env


ENV = _environment(jinja2.StrictUndefined, FILTERS)


def _blank_environment() -> jinja2.Environment:
  """The environment of instruction derivation (see the module docstring)."""
  env = _environment(Blank, {**FILTERS, 'choice': _first})
  env.filters = {name: _passes_blanks(f) for name, f in env.filters.items()}
  # A field is there, even if blank.
  env.tests.update(defined=lambda value: True, undefined=lambda value: False)
  env.globals['range'] = _blank_range
  return env


BLANK_ENV = _blank_environment()


@functools.lru_cache(maxsize=None)
def compile_source(source: str, blank: bool = False) -> jinja2.Template:
  """`source` compiled in `BLANK_ENV` (`blank`) or `ENV`, once."""
  return (BLANK_ENV if blank else ENV).from_string(source)
