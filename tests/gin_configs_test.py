"""Every gin file in gin_configs/ parses and builds what it configures.

Local-runner files are checked everywhere; T5X files only where T5X imports.
"""

import contextlib
import dataclasses
import glob
import importlib
import os
import sys

import gin
import jax
import pytest

from spt_jax import gin_utils
from spt_jax.model import config
from spt_jax.model import network
from tests import t5x_test_utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL_REQUIRED = [
    'MODEL_DIR = "/tmp/unused"',
    'MIXTURE_OR_TASK_NAME = "spt_synthetic_train"',
    "TASK_FEATURE_LENGTHS = {'inputs': 48, 'targets': 8, 'prompt': 16}",
    'TRAIN_STEPS = 1',
]


@contextlib.contextmanager
def _clean_gin():
  gin.clear_config()
  try:
    yield
  finally:
    gin.clear_config()


def _gin_files(folder):
  return sorted(
      os.path.relpath(p, REPO)
      for p in glob.glob(os.path.join(REPO, 'gin_configs', folder, '*.gin'))
  )


def test_every_gin_folder_is_a_package():
  for folder, _, _ in os.walk(os.path.join(REPO, 'gin_configs')):
    if '__pycache__' not in folder:
      assert os.path.exists(os.path.join(folder, '__init__.py')), folder


@pytest.mark.parametrize('size', _gin_files('sizes'))
@pytest.mark.parametrize('spt', [None] + _gin_files('spt'))
def test_local_train_with_every_size_and_spt_setting(size, spt):
  with _clean_gin():
    gin_utils.parse_gin(
        ['gin_configs/local/train.gin', size] + ([spt] if spt else []),
        LOCAL_REQUIRED,
    )
    net = gin.get_configurable(network.SptTransformer)()
  name = os.path.basename(size)[:-4]
  expected = config.T5_1_1_SIZES[name]
  assert {k: getattr(net.config, k) for k in expected} == expected
  assert net.config.vocab_size == 32128
  if spt is None:  # SptConfig's own defaults, with the in-band prompt.
    default = config.SptConfig()
    assert net.spt == dataclasses.replace(default, prompt_length=64)
  elif spt.endswith('no_memory.gin'):
    assert net.spt.prefix_length == 0
  elif spt.endswith('prompt_tuning.gin'):
    assert (net.spt.num_memories, net.spt.soft_prompt_length) == (0, 40)
  elif spt.endswith('large_bank.gin'):
    assert (net.spt.num_memories, net.spt.top_k_chunks) == (131072, 8)


@pytest.mark.parametrize(
    'files',
    [
        ['gin_configs/local/synthetic.gin'],
        [
            'gin_configs/local/synthetic.gin',
            'gin_configs/local/frozen_backbone.gin',
        ],
    ],
)
def test_local_run_files_build_a_runnable_model(files):
  with _clean_gin():
    gin_utils.parse_gin(files, ['MODEL_DIR = "/tmp/unused"'])
    net = gin.get_configurable(network.SptTransformer)()
    trainable = gin.query_parameter('%TRAINABLE')
  assert net.config.vocab_size == 512 and net.spt.num_memories == 8
  assert trainable == ('spt_only' if len(files) == 2 else 'all')
  # Compiled and run as one program rather than op by op.
  variables = jax.jit(
      lambda rng: net.init(
          rng,
          jax.numpy.ones((1, 24), int),
          jax.numpy.ones((1, 4), int),
          jax.numpy.ones((1, 4), int),
          enable_dropout=False,
      )
  )(jax.random.PRNGKey(0))
  assert 'memory_bank' in variables['params']


def test_local_eval_file_adds_to_a_run_configuration():
  with _clean_gin():
    gin_utils.parse_gin(
        ['gin_configs/local/synthetic.gin', 'gin_configs/local/eval.gin'],
        ['MODEL_DIR = "/tmp/unused"'],
    )
    assert (
        gin.query_parameter('%EVAL_MIXTURE_OR_TASK_NAME')
        == 'spt_synthetic_heldout'
    )
    net = gin.get_configurable(network.SptTransformer)()
  # The run's model, not the architecture's defaults.
  assert (net.spt.num_memories, net.config.vocab_size) == (8, 512)


def test_missing_gin_file_is_named():
  with _clean_gin(), pytest.raises(gin_utils.ConfigError, match='no_such.gin'):
    gin_utils.parse_gin(['gin_configs/local/no_such.gin'])


# ---- T5X ----------------------------------------------------------------------


@contextlib.contextmanager
def _as_main(module_name):
  """T5X run files import `__main__` as the T5X script they configure."""
  saved = sys.modules['__main__']
  sys.modules['__main__'] = importlib.import_module(module_name)
  try:
    yield
  finally:
    sys.modules['__main__'] = saved


def _parse_t5x(files, bindings, script, monkeypatch):
  t5x = t5x_test_utils.import_t5x()
  from t5x import gin_utils as t5x_gin_utils  # pylint: disable=g-import-not-at-top

  t5x_root = os.path.dirname(os.path.dirname(t5x.__file__))
  # The offline test vocabulary stands in for T5's (read when models are built).
  monkeypatch.setenv('SPT_VOCAB_PATH', t5x_test_utils.SEQIO_TEST_VOCAB)
  with _as_main(script):
    t5x_gin_utils.parse_gin_flags([REPO, t5x_root], files, bindings)


T5X_MODELS = _gin_files('models')


@pytest.mark.parametrize('model_file', T5X_MODELS)
def test_t5x_model_files(model_file, monkeypatch):
  t5x_test_utils.import_t5x()
  from spt_jax.t5x_ext import models as t5x_models  # pylint: disable=g-import-not-at-top

  size = os.path.basename(model_file)[len('spt_t5_1_1_') : -4]
  files = [model_file]
  if size not in config.T5_1_1_SIZES:  # The bare model file needs a size.
    size = 'small'
    files.append('gin_configs/sizes/small.gin')
  with _clean_gin():
    _parse_t5x(files, [], 't5x.train', monkeypatch)
    model = gin.get_configurable(t5x_models.SptEncoderDecoderModel)()
  assert isinstance(model.module, network.SptTransformer)
  assert model.module.spt.num_memories == 256
  expected = config.T5_1_1_SIZES[size]
  assert {k: getattr(model.module.config, k) for k in expected} == expected


_TRAIN_BINDINGS = [
    'MODEL_DIR = "/tmp/unused"',
    'INITIAL_CHECKPOINT_PATH = "/tmp/ckpt"',
]


@pytest.mark.parametrize(
    'run_files, script, bindings',
    [
        (
            ['runs/spt_pretrain.gin', 'mixtures/synthetic.gin'],
            't5x.train',
            ['MODEL_DIR = "/tmp/unused"'],
        ),
        (['runs/spt_finetune.gin'], 't5x.train', _TRAIN_BINDINGS),
        (
            ['runs/spt_finetune.gin'],
            't5x.train',
            _TRAIN_BINDINGS + ['RESTORE_SPT_PARAMS = True'],
        ),
        (['runs/spt_finetune_frozen.gin'], 't5x.train', _TRAIN_BINDINGS),
        (['runs/spt_glue.gin'], 't5x.train', _TRAIN_BINDINGS),
        (['runs/spt_super_glue.gin'], 't5x.train', _TRAIN_BINDINGS),
        (
            ['runs/spt_eval.gin'],
            't5x.eval',
            [
                'CHECKPOINT_PATH = "/tmp/ckpt"',
                'EVAL_OUTPUT_DIR = "/tmp/unused"',
            ],
        ),
        (
            ['runs/spt_infer.gin'],
            't5x.infer',
            [
                'MIXTURE_OR_TASK_NAME = "spt_synthetic_heldout"',
                'CHECKPOINT_PATH = "/tmp/ckpt"',
                'INFER_OUTPUT_DIR = "/tmp/unused"',
            ],
        ),
    ],
)
def test_t5x_run_files(run_files, script, bindings, monkeypatch):
  t5x_test_utils.import_t5x()
  from t5x import partitioning as t5x_partitioning  # pylint: disable=g-import-not-at-top
  from t5x import utils  # pylint: disable=g-import-not-at-top

  run_files = [f'gin_configs/{f}' for f in run_files]
  with _clean_gin():
    _parse_t5x(
        ['gin_configs/models/spt_t5_1_1_tiny.gin'] + run_files,
        bindings,
        script,
        monkeypatch,
    )
    rules = gin.get_configurable(t5x_partitioning.standard_logical_axis_rules)()
    assert ('memory', ('data', 'model')) in rules
    assert gin.query_parameter('%MIXTURE_OR_TASK_MODULE') == 'tasks'
    if script == 't5x.train':
      assert gin.query_parameter('train/utils.DatasetConfig.pack') is False
      assert gin.query_parameter('%USE_CACHED_TASKS') is False
    if script != 't5x.train':
      split = gin.query_parameter(
          '%EVAL_SPLIT' if script == 't5x.eval' else '%INFER_SPLIT'
      )
      assert split == 'validation'
    if 'spt_pretrain' not in run_files[0] and script == 't5x.train':
      restore = gin.get_configurable(utils.RestoreCheckpointConfig)()
      assert restore.fallback_to_scratch
      keeps_bank = (
          'super_glue' in run_files[0]
          or 'RESTORE_SPT_PARAMS = True' in bindings
      )
      assert restore.assignment_map == (
          () if keeps_bank else ((r'^.*(memory_bank|soft_prompt).*$', None),)
      )
    if 'frozen' in run_files[0]:
      _check_frozen_optimizer()


def _check_frozen_optimizer():
  """The MultiOptimizer gives optimizer state to SPT parameters only."""
  from spt_jax.t5x_ext import models as t5x_models  # pylint: disable=g-import-not-at-top
  from t5x import optimizers  # pylint: disable=g-import-not-at-top
  from t5x import train_state as train_state_lib  # pylint: disable=g-import-not-at-top

  model = gin.get_configurable(t5x_models.SptEncoderDecoderModel)()
  assert isinstance(model.optimizer_def, optimizers.MultiOptimizer)
  shapes = {
      'encoder_input_tokens': (2, 72),
      'decoder_input_tokens': (2, 4),
      'decoder_target_tokens': (2, 4),
  }
  variables = model.get_initial_variables(jax.random.PRNGKey(0), shapes)
  state = train_state_lib.FlaxOptimTrainState.create(
      model.optimizer_def, variables
  )
  states = state.param_states
  trained = {
      k
      for k, v in states.items()
      if any(
          x is not None and getattr(x, 'size', 0) for x in jax.tree.leaves(v)
      )
  }
  assert trained == {'memory_bank'}


_MISSPELT = [
    (
        't5x.train',
        ['runs/spt_pretrain.gin', 'mixtures/synthetic.gin'],
        ['MODEL_DIR = "/tmp/unused"', 'BATCH_SIZ = 8'],
        'BATCH_SIZE',
    ),
    (
        't5x.eval',
        ['runs/spt_eval.gin'],
        [
            'CHECKPOINT_PATH = "/tmp/ckpt"',
            'EVAL_OUTPUT_DIR = "/tmp/unused"',
            'EVAL_SPILT = "test"',
        ],
        'EVAL_SPLIT',
    ),
    (
        't5x.infer',
        ['runs/spt_infer.gin'],
        [
            'MIXTURE_OR_TASK_NAME = "spt_synthetic_heldout"',
            'CHECKPOINT_PATH = "/tmp/ckpt"',
            'INFER_OUTPUT_DIR = "/tmp/unused"',
            'INFER_SPLT = "test"',
        ],
        'INFER_SPLIT',
    ),
]


@pytest.mark.parametrize('script, run_files, bindings, right', _MISSPELT)
def test_t5x_binaries_reject_a_misspelt_command_line_macro(
    script, run_files, bindings, right, monkeypatch
):
  """Our run files import gin_utils, whose finalize hook reads --gin_bindings.

  T5X alone would record the macro in config.gin and ignore it.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top

  files = ['gin_configs/models/spt_t5_1_1_tiny.gin'] + [
      f'gin_configs/{f}' for f in run_files
  ]
  wrong = bindings[-1].split(' = ')[0]
  monkeypatch.setattr(flags.FLAGS['gin_bindings'], 'value', bindings)
  with (
      _clean_gin(),
      pytest.raises(
          gin_utils.ConfigError,
          match=f'Unknown gin macro {wrong}: .*Did you mean {right}?',
      ),
  ):
    _parse_t5x(files, bindings, script, monkeypatch)
  # Spelt right, the same command parses.
  bindings = bindings[:-1] + [bindings[-1].replace(wrong, right)]
  monkeypatch.setattr(flags.FLAGS['gin_bindings'], 'value', bindings)
  with _clean_gin():
    _parse_t5x(files, bindings, script, monkeypatch)


def test_t5x_training_data_order_follows_random_seed(monkeypatch):
  t5x_test_utils.import_t5x()
  from t5x import utils  # pylint: disable=g-import-not-at-top

  files = [
      'gin_configs/models/spt_t5_1_1_tiny.gin',
      'gin_configs/runs/spt_pretrain.gin',
      'gin_configs/mixtures/synthetic.gin',
  ]
  for seed in (3, None):  # None: T5X's new seed at every start.
    with _clean_gin():
      _parse_t5x(
          files,
          ['MODEL_DIR = "/tmp/unused"', f'RANDOM_SEED = {seed}'],
          't5x.train',
          monkeypatch,
      )
      with gin.config_scope('train'):
        assert gin.get_configurable(utils.DatasetConfig)().seed == seed
