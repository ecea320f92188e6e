"""Gin flags and process entry of the local runner, with T5X's conventions.

`--gin_file` (repeatable), `--gin_search_paths` (comma separated) and
`--gin.NAME=VALUE` shorthands for `--gin_bindings='NAME = VALUE'`, so the same
command lines work for `python -m t5x.train` and `python -m spt_jax.local.train`.

`parse_gin` also rejects a macro set on the command line that no binding uses
(a misspelt `--gin.TRAIN_STPES=10`), and leaves `%gin.REQUIRED` macros unset
when the entry point does not use them (evaluation does not need
`TRAIN_STEPS`). `write_config` saves the effective configuration as
`MODEL_DIR/config.gin`, which evaluation reads alone.

`run` starts an entry point: configuration errors print one line, and any
failure ends the process at once with a non-zero status (see `run`).

T5X's binaries (`python -m t5x.train`, `t5x.eval`, `t5x.infer`) get the same
check of command-line macros: our T5X run files import this module, whose
finalize hook (`check_flag_macros_hook`) reads T5X's `--gin_bindings`.
"""

import difflib
import logging as py_logging
import os
import re
import sys
import traceback
from typing import Any, Callable, Iterator, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import gin

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# T5X's binaries define flags of the same names before they parse our gin
# files (which import this module): theirs are used then.
if 'gin_file' not in flags.FLAGS:
  flags.DEFINE_multi_string('gin_file', [], 'Gin files to parse, in order.')
if 'gin_bindings' not in flags.FLAGS:
  flags.DEFINE_multi_string(
      'gin_bindings', [], 'Individual gin bindings, applied after the files.'
  )
if 'gin_search_paths' not in flags.FLAGS:
  flags.DEFINE_list(
      'gin_search_paths',
      ['.'],
      'Folders where gin files and their includes are looked up; the '
      'repository root is always searched.',
  )

_REQUIRED = re.compile(r'^(\S+?)(?:/macro\.value)? set to `%gin.REQUIRED`')
_MACRO = 'gin.macro'
_MACRO_BINDING = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=')
CONFIG_FILE = 'config.gin'
# The evaluation bindings `config.gin` includes, so that it is enough alone.
EVAL_GIN = 'gin_configs/local/eval.gin'


class ConfigError(ValueError):
  """A configuration that cannot be used (a missing macro, an unknown task).

  `run` prints its message alone instead of a traceback.
  """


class InputError(Exception):
  """Bad input found before any model work: data, a template, a vocabulary.

  The tasks' errors of this kind subclass it (as well as their standard
  base), so that `run` prints them as one line without this package
  importing the tasks.
  """


def rewrite_gin_args(args: Sequence[str]) -> list[str]:
  """Turns `--gin.NAME=VALUE` into `--gin_bindings=NAME = VALUE`."""
  rewritten = []
  for arg in args:
    if arg.startswith('--gin.'):
      if '=' not in arg:
        raise ConfigError(f'Expected --gin.NAME=VALUE, got {arg!r}.')
      name, value = arg[len('--gin.') :].split('=', 1)
      arg = f'--gin_bindings={name} = {value}'
    rewritten.append(arg)
  return rewritten


def _references(value: Any) -> Iterator[Any]:
  # pylint: disable-next=protected-access
  for item in gin.config._iterate_flattened_values(value):
    if isinstance(item, gin.config.ConfigurableReference):
      yield item


def _config() -> dict[tuple[str, str], dict[str, Any]]:
  return gin.config._CONFIG  # pylint: disable=protected-access


def _used_macros(entry: Optional[Callable[..., Any]] = None) -> set[str]:
  """The macros referenced by any binding, or only those `entry` reaches."""
  config = _config()
  if entry is None:
    keys = list(config)
  else:
    keys = [('', f'{entry.__module__}.{entry.__name__}')]
  used, seen = set(), set()
  while keys:
    key = keys.pop()
    if key in seen:
      continue
    seen.add(key)
    for value in config.get(key, {}).values():
      for ref in _references(value):
        scope, selector = ref.config_key
        if selector == _MACRO:
          used.add(scope)
        if entry is not None:
          keys.extend([(scope, selector), ('', selector)])
  return used


def _check_command_line_macros(bindings: Sequence[str]) -> None:
  """Rejects macros set by `bindings` that no binding of any file uses.

  A macro no binding references has no effect, whether or not a file also
  sets it; a macro referenced but never set is gin's own error.
  """
  defined = {scope for scope, selector in _config() if selector == _MACRO}
  used = _used_macros()
  for binding in bindings:
    match = _MACRO_BINDING.match(binding)
    if not match or match.group(1) in used:
      continue
    name = match.group(1)
    close = difflib.get_close_matches(name, sorted(defined - {name}), n=1)
    hint = f' Did you mean {close[0]}?' if close else ''
    raise ConfigError(
        f'Unknown gin macro {name}: no gin file uses %{name}, so '
        f'--gin.{name} would have no effect.{hint}'
    )


# Whether `parse_gin` is parsing: it checks its own bindings, which need not
# be the command line's (spt_jax.study.compare parses several configurations).
_PARSING = []


@gin.config.register_finalize_hook
def check_flag_macros_hook(config: Any) -> None:
  """Finalize hook: `--gin_bindings` may set only macros some binding uses.

  T5X's binaries parse our gin files with `--gin_bindings` and finalize; our
  files import this module, so that a misspelt `--gin.BATCH_SIZ=8` fails
  there as it does in the local runner, rather than being recorded in
  config.gin and ignored. `parse_gin` checks its own bindings instead (this
  does nothing while it finalizes), and where the flags were never parsed
  (a library, a test) the flag holds no bindings.

  Args:
    config: gin's configuration (unused: `_config` reads the same).

  Raises:
    ConfigError: naming the macro and the closest defined one.
  """
  del config
  if _PARSING or 'gin_bindings' not in flags.FLAGS:
    return None
  _check_command_line_macros(flags.FLAGS['gin_bindings'].value or [])
  return None


def _syntax_error(error: SyntaxError) -> ConfigError:
  """A gin syntax error, with its file and line, as a ConfigError."""
  text = (error.text or '').rstrip('\n')
  hint = ''
  if text.startswith('\ufeff'):
    hint = (
        ' The file starts with a UTF-8 byte-order mark: save it as UTF-8 '
        'without one.'
    )
  where = f'{error.filename or "a --gin binding"}, line {error.lineno}'
  return ConfigError(
      f'Invalid gin syntax in {where}: {error.msg} ({text.strip()!r}).{hint}'
  )


def _unset_unused_required(entry: Callable[..., Any]) -> None:
  """Binds `%gin.REQUIRED` macros `entry` does not use to None."""
  reached = _used_macros(entry)
  for (scope, selector), params in list(_config().items()):
    if selector != _MACRO or scope in reached:
      continue
    value = params.get('value')
    if (
        isinstance(value, gin.config.ConfigurableReference)
        and value.selector == 'gin.constant'
        and value.scoped_configurable_fn() is gin.REQUIRED
    ):
      gin.bind_parameter(f'{scope}/{_MACRO}.value', None)


def parse_gin(
    files: Sequence[str],
    bindings: Sequence[str] = (),
    search_paths: Sequence[str] = ('.',),
    entry: Optional[Callable[..., Any]] = None,
) -> None:
  """Parses gin files and bindings and finalises the config.

  Args:
    files: gin files, in order.
    bindings: `NAME = VALUE` bindings, applied after the files.
    search_paths: folders where files and includes are looked up (the
      repository root is always searched).
    entry: the configurable the caller runs; macros set to `%gin.REQUIRED`
      that it does not use need no value (evaluation does not need
      `TRAIN_STEPS`). None: every required macro needs a value.

  Raises:
    ConfigError: a file is missing, a binding is malformed, a macro set in
      `bindings` is used nowhere (a misspelling), or a macro set to
      `%gin.REQUIRED` was not given a value; the message names it.
  """
  paths = list(search_paths) + [REPO_ROOT]
  for path in paths:
    gin.add_config_file_search_path(os.path.abspath(path))
  if not files:
    raise ConfigError('No --gin_file given.')
  try:
    gin.parse_config_files_and_bindings(
        list(files), list(bindings), finalize_config=False
    )
  except IOError as e:
    raise ConfigError(f'{e} (searched {paths})') from None
  except SyntaxError as e:
    raise _syntax_error(e) from None
  except ValueError as e:
    raise ConfigError(f'Invalid gin configuration: {e}') from None
  _check_command_line_macros(bindings)
  if entry is not None:
    _unset_unused_required(entry)
  _PARSING.append(True)
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
  finally:
    _PARSING.pop()


def write_config(model_dir: str) -> str:
  """Writes the effective gin configuration to `model_dir/config.gin`.

  The file holds every binding and macro of the parsed configuration and
  includes `gin_configs/local/eval.gin`, so that

      python -m spt_jax.local.eval --gin_file=MODEL_DIR/config.gin

  evaluates the run without repeating its flags.

  Args:
    model_dir: the run's folder (created if missing).

  Returns:
    The path written.
  """
  os.makedirs(model_dir, exist_ok=True)
  path = os.path.join(model_dir, CONFIG_FILE)
  text = gin.config_str()
  header = (
      '# The effective gin configuration of this run, written by the local\n'
      '# runner. Evaluate with\n'
      f'#   python -m spt_jax.local.eval --gin_file={path}\n'
  )
  imports, _, body = text.partition('\n\n')
  with open(path + '.tmp', 'w') as f:
    f.write(f'{header}{imports}\n\ninclude {EVAL_GIN!r}\n\n{body}')
  os.replace(path + '.tmp', path)
  return path


def parse_gin_flags(entry: Optional[Callable[..., Any]] = None) -> None:
  """`parse_gin` from the command-line flags."""
  parse_gin(
      flags.FLAGS.gin_file or [],
      flags.FLAGS.gin_bindings,
      flags.FLAGS.gin_search_paths,
      entry,
  )


class _QuietOrbax(py_logging.Filter):
  """Drops orbax's INFO records (a hundred per run); keeps its warnings."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or (
        f'{os.sep}orbax{os.sep}' not in record.pathname
    )


def quiet_library_logs() -> None:
  """Silences the INFO logs of orbax; idempotent."""
  logger = logging.get_absl_logger()
  if not any(isinstance(f, _QuietOrbax) for f in logger.filters):
    logger.addFilter(_QuietOrbax())


def _exit_now(code: int) -> None:
  """Flushes the output and ends the process without Python's teardown.

  After a failure, freeing the exception frees the tf.data iterators it
  references; their destructors wait for parallel `map` calls that run
  Python (`tf.numpy_function`) and need the GIL this thread holds, so a
  normal exit can hang for ever. `os._exit` ends the process at once.
  """
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  os._exit(code)  # pylint: disable=protected-access


# What gin appends to an exception raised inside a configurable it calls.
_GIN_CONTEXT = re.compile(r"\n  In call to configurable '[^\n]*$")


def error_message(error: BaseException) -> str:
  """The message of an error, without the call context gin appends to it.

  An error raised while gin calls a configurable (SptConfig, `train`) has
  "In call to configurable ..." appended, once per configurable it passed;
  the message before it names the setting and the fix.
  """
  message = str(error)
  while True:
    stripped = _GIN_CONTEXT.sub('', message)
    if stripped == message:
      return message
    message = stripped


def run(
    main: Callable[[Sequence[str]], Optional[int]],
    short_errors: tuple[type[BaseException], ...] = (),
    usage_errors: tuple[type[BaseException], ...] = (),
) -> None:
  """`absl.app.run` with `--gin.NAME=VALUE` flags, that never hangs on errors.

  A `ConfigError` prints its message alone and exits with 2, as do the
  `usage_errors` (bad settings or inputs found by other modules: a template,
  a data file); the `short_errors` (whose messages say all there is to say)
  print alone and exit with 1; `Ctrl-C` exits with 130 (after the entry
  point's own clean-up); any other exception prints its traceback and exits
  with 1. In each case the process ends at once (see `_exit_now`), so a job
  scheduler sees the failure.

  Args:
    main: the entry point.
    short_errors: exception types reported by their message alone.
    usage_errors: exception types reported as a `ConfigError` is.
  """

  def main_reporting_errors(argv):
    quiet_library_logs()
    try:
      return main(argv)
    except (ConfigError,) + usage_errors as e:  # pylint: disable=catching-non-exception
      print(f'error: {error_message(e)}', file=sys.stderr)
      _exit_now(2)
    except short_errors as e:  # pylint: disable=catching-non-exception
      print(f'error: {error_message(e)}', file=sys.stderr)
      _exit_now(1)
    except KeyboardInterrupt as e:
      print(f'Interrupted. {e}'.strip(), file=sys.stderr)
      _exit_now(130)
    except Exception:  # pylint: disable=broad-except
      traceback.print_exc()
      _exit_now(1)

  try:
    args = rewrite_gin_args(sys.argv)
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  app.run(main_reporting_errors, argv=args)
