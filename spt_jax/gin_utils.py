"""Gin flags for the local runner, with T5X's conventions.

`--gin_file` (repeatable), `--gin_search_paths` (comma separated) and
`--gin.NAME=VALUE` shorthands for `--gin_bindings='NAME = VALUE'`, so the same
command lines work for `python -m t5x.train` and `python -m spt_jax.train`.
"""

import os
import re
import sys
from typing import Callable, Optional, Sequence

from absl import app
from absl import flags
import gin

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_GIN_FILES = flags.DEFINE_multi_string(
    'gin_file', [], 'Gin files to parse, in order.'
)
_GIN_BINDINGS = flags.DEFINE_multi_string(
    'gin_bindings', [], 'Individual gin bindings, applied after the files.'
)
_GIN_SEARCH_PATHS = flags.DEFINE_list(
    'gin_search_paths',
    ['.'],
    'Folders where gin files and their includes are looked up; the '
    'repository root is always searched.',
)

_REQUIRED = re.compile(r'^(\S+?)(?:/macro\.value)? set to `%gin.REQUIRED`')


class ConfigError(ValueError):
  """A configuration that cannot be used (a missing macro, an unknown task).

  `run` prints its message alone instead of a traceback.
  """


def rewrite_gin_args(args: Sequence[str]) -> list[str]:
  """Turns `--gin.NAME=VALUE` into `--gin_bindings=NAME = VALUE`."""
  rewritten = []
  for arg in args:
    if arg.startswith('--gin.'):
      if '=' not in arg:
        raise ConfigError(f'Expected --gin.NAME=VALUE, got {arg!r}.')
      name, value = arg[len('--gin.'):].split('=', 1)
      arg = f'--gin_bindings={name} = {value}'
    rewritten.append(arg)
  return rewritten


def parse_gin(
    files: Sequence[str],
    bindings: Sequence[str] = (),
    search_paths: Sequence[str] = ('.',),
) -> None:
  """Parses gin files and bindings and finalises the config.

  Raises:
    ConfigError: a file is missing, a binding is malformed, or a macro set
      to `%gin.REQUIRED` was not given a value; the message names it.
  """
  for path in list(search_paths) + [REPO_ROOT]:
    gin.add_config_file_search_path(os.path.abspath(path))
  if not files:
    raise ConfigError('No --gin_file given.')
  try:
    gin.parse_config_files_and_bindings(
        list(files), list(bindings), finalize_config=False
    )
  except IOError as e:
    raise ConfigError(f'{e} (searched {list(search_paths) + [REPO_ROOT]})') from None
  try:
    gin.finalize()
  except ValueError as e:
    match = _REQUIRED.match(str(e))
    if match:
      name = match.group(1)
      raise ConfigError(
          f'Required gin macro {name} is not set: pass --gin.{name}=... '
          f'or bind it in a gin file.'
      ) from None
    raise


def parse_gin_flags() -> None:
  """`parse_gin` from the command-line flags."""
  parse_gin(_GIN_FILES.value, _GIN_BINDINGS.value, _GIN_SEARCH_PATHS.value)


def run(main: Callable[[Sequence[str]], Optional[int]]) -> None:
  """`absl.app.run` with `--gin.NAME=VALUE` flags; configuration errors exit 2."""

  def main_reporting_config_errors(argv):
    try:
      return main(argv)
    except ConfigError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)

  app.run(main_reporting_config_errors, argv=rewrite_gin_args(sys.argv))
