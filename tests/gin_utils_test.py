"""gin_utils: misspelt macros, training-only macros, the run's config.gin."""

import gin
import pytest

from spt_jax import gin_utils
from spt_jax.local import eval as eval_lib
from spt_jax.local import train as train_lib

SYNTHETIC = ['gin_configs/local/synthetic.gin']


@pytest.fixture(autouse=True)
def _clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_misspelt_command_line_macro_is_an_error():
  with pytest.raises(
      gin_utils.ConfigError, match='TRAIN_STPES.*Did you mean TRAIN_STEPS'
  ):
    gin_utils.parse_gin(SYNTHETIC, ['MODEL_DIR = "/tmp/x"', 'TRAIN_STPES = 10'])


def test_evaluation_needs_no_training_only_macro():
  files = ['gin_configs/local/train.gin', 'gin_configs/local/eval.gin']
  bindings = [
      'MODEL_DIR = "/tmp/x"',
      'MIXTURE_OR_TASK_NAME = "a"',
      'EVAL_MIXTURE_OR_TASK_NAME = "b"',
      'TASK_FEATURE_LENGTHS = None',
  ]
  gin_utils.parse_gin(files, bindings, entry=eval_lib.run_eval)
  assert gin.query_parameter('%EVAL_MIXTURE_OR_TASK_NAME') == 'b'

  gin.clear_config()
  with pytest.raises(gin_utils.ConfigError, match='TRAIN_STEPS is not set'):
    gin_utils.parse_gin(files, bindings, entry=train_lib.train)


def test_written_config_is_enough_for_evaluation(tmp_path):
  gin_utils.parse_gin(
      SYNTHETIC,
      [f'MODEL_DIR = "{tmp_path}"', 'TRAIN_STEPS = 7'],
      entry=train_lib.train,
  )
  path = gin_utils.write_config(str(tmp_path))
  gin.clear_config()

  gin_utils.parse_gin([path], entry=eval_lib.run_eval)
  assert gin.query_parameter('%MODEL_DIR') == str(tmp_path)
  assert gin.query_parameter('spt_jax.local.eval.run_eval.mixture_or_task_name')
  assert gin.query_parameter('%TRAIN_STEPS') == 7


def test_the_finalize_hook_checks_the_command_line_bindings(monkeypatch):
  """What T5X's binaries get: gin's own parse, then finalize, reads the flag."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  gin.add_config_file_search_path(gin_utils.REPO_ROOT)
  bindings = ['MODEL_DIR = "/tmp/x"', 'BATCH_SIZ = 8']
  monkeypatch.setattr(flags.FLAGS['gin_bindings'], 'value', bindings)
  with pytest.raises(
      gin_utils.ConfigError, match='BATCH_SIZ.*Did you mean BATCH_SIZE'
  ):
    gin.parse_config_files_and_bindings(SYNTHETIC, bindings)
  gin.clear_config()
  # parse_gin checks its own bindings, not the flag's (spt_jax.study.compare
  # parses configurations the command line does not give).
  gin_utils.parse_gin(SYNTHETIC, ['MODEL_DIR = "/tmp/x"'])
  assert gin.config_is_locked()


def test_error_message_drops_what_gin_appends():
  gin_utils.parse_gin(
      SYNTHETIC,
      ['MODEL_DIR = "/tmp/x"', 'TRAIN_STEPS = 1', 'SptConfig.top_k = 0'],
  )
  with pytest.raises(gin_utils.ConfigError) as e:
    gin.get_configurable(train_lib.train)()
  assert 'In call to configurable' in str(e.value)
  assert gin_utils.error_message(e.value) == (
      'SptConfig.top_k must be in [1, num_memories=8], got 0: it is the '
      'number of memories each example retrieves.'
  )
  multi_line = ValueError('line one\n  a command to run')
  assert gin_utils.error_message(multi_line) == str(multi_line)
