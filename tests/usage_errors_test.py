"""Every bad setting and input: one line naming it and the fix, exit 2.

Settings and data are checked before any model work (in-process: the error,
its one-line message, and that no checkpoint was written); two runs of
`spt_jax.local.train` check what the user sees: one line, exit 2, no traceback.
Evaluation's checks run on a checkpoint saved here (no training).
"""

import json
import os
import subprocess
import sys

import gin
import pytest
import tensorflow as tf

from spt_jax import gin_utils
from spt_jax.local import eval as eval_lib
from spt_jax.local import train as train_lib
from spt_jax.local import train_checkpoints
from spt_jax.model import config
from spt_jax.model import models
from spt_jax.model import network
from tasks import preprocessors
from tasks import prompt_templates
from tasks import prompted
from tasks import sources
from tasks import vocab
from tests import params_test_utils
from tests import tasks_test_utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = {'q': 'string', 'label': 'int'}
CHOICES = 'x ||| y'
JINJA = '{{ q }} ? ||| {{ answer_choices[label] }}'


def _train(tmp_path, *bindings):
  gin.clear_config()
  try:
    gin_utils.parse_gin(
        ['gin_configs/local/synthetic.gin'],
        [
            f'MODEL_DIR = "{tmp_path / "run"}"',
            'EVAL_MIXTURE_OR_TASK_NAME = None',
            'BATCH_SIZE = 8',
            f'MIXTURE_OR_TASK_NAME = "{tasks_test_utils.SHORT_RUN_TASK}"',
            *bindings,
        ],
        entry=train_lib.train,
    )
    return gin.get_configurable(train_lib.train)(progress_bar=False)
  finally:
    gin.clear_config()


def _fails_before_training(tmp_path, error, message, *bindings):
  """Trains with `bindings`; the error must come, in one line, before step 0."""
  with pytest.raises(error, match=message) as e:
    _train(tmp_path, *bindings)
  assert '\n' not in gin_utils.error_message(e.value), str(e.value)
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


@pytest.mark.parametrize(
    'bindings, message',
    [
        (
            ['SptConfig.top_k = 0'],
            r'SptConfig.top_k must be in \[1, ' r'num_memories=8\], got 0',
        ),
        (
            ['SptConfig.top_k_chunks = 0'],
            'SptConfig.top_k_chunks=0 must divide',
        ),
        (
            [
                "SptConfig.retrieval = 'perturbed_topk'",
                'SptConfig.perturbed_sigma = 0.0',
            ],
            'SptConfig.perturbed_sigma must be positive',
        ),
        (
            ["SptConfig.top_k = '2'"],
            "SptConfig.top_k must be an integer, got '2'.* "
            'bind it without quotes',
        ),
        (
            ['NUM_PARTITIONS = 3'],
            'NUM_PARTITIONS=3 .* must divide the 8 available '
            'devices: use one of 1, 2, 4, 8',
        ),
        (
            ["TASK_FEATURE_LENGTHS = {'inputs': 48}"],
            "TASK_FEATURE_LENGTHS={'inputs': 48} lacks targets",
        ),
        (
            ["TASK_FEATURE_LENGTHS = {'inputs': 48, 'targets': 0}"],
            r"TASK_FEATURE_LENGTHS\['targets'\]=0 must be a positive",
        ),
        (
            ['INITIAL_CHECKPOINT_PATH = "/no/such/checkpoint"'],
            "INITIAL_CHECKPOINT_PATH '/no/such/checkpoint' does not exist",
        ),
    ],
)
def test_bad_settings_fail_before_training(tmp_path, bindings, message):
  _fails_before_training(tmp_path, gin_utils.ConfigError, message, *bindings)


def _templates(path, jinja=JINJA, choices=CHOICES, prefix=b''):
  template = {'name': 't', 'jinja': jinja}
  if choices is not None:
    template['answer_choices'] = choices
  path.write_bytes(
      prefix + json.dumps({'dataset': 'd', 'templates': [template]}).encode()
  )
  prompt_templates.load.cache_clear()
  return str(path)


def _jsonl(*records):
  return b''.join(json.dumps(r).encode() + b'\n' for r in records)


GOOD = _jsonl({'q': 'a b', 'label': 0}, {'q': 'c d', 'label': 1})


def _local_task(tmp_path, name, data=GOOD, kind='jsonl', **template):
  """A training task over `data/<name>/train.<kind>`; returns its name."""
  folder = tmp_path / 'data' / name
  folder.mkdir(parents=True)
  if kind == 'jsonl':
    (folder / 'train.jsonl').write_bytes(data)
  else:
    sources.write_tfrecord(str(folder / 'train.tfrecord'), data, FIELDS)
  source = sources.LocalSource(
      name, FIELDS, ('train',), f"'{name}'", data_dir=str(tmp_path / 'data')
  )
  templates = _templates(tmp_path / f'{name}.json', **template)
  return prompted.register(
      'usage',
      prompted.PromptedDataset(name, source, templates),
      vocab.output_features(vocab.synthetic_vocabulary()),
  )[0]


@pytest.mark.parametrize(
    'name, task, error, message',
    [
        (
            'empty',
            dict(data=b''),
            sources.InvalidRecordError,
            r'empty/train.jsonl: no records \(the file is empty\)',
        ),
        (
            'empty_tfrecord',
            dict(data=[], kind='tfrecord'),
            gin_utils.ConfigError,
            r"split 'train' has no records \(.*empty_tfrecord/train.tfrecord\)",
        ),
        (
            'no_target',
            dict(jinja='{{ q }} ? {{ answer_choices[label] }}'),
            prompt_templates.TemplateError,
            'has no target: its jinja has no "|||"',
        ),
        (
            'empty_choices',
            dict(choices=''),
            prompt_templates.TemplateError,
            r"has an empty answer choice \('' gives \[''\]\)",
        ),
        (
            'not_utf8',
            dict(data=GOOD + b'{"q": "a \xff", "label": 1}\n'),
            sources.InvalidRecordError,
            r"not_utf8/train.jsonl, line 3: not UTF-8 \(byte b'\\xff' at column 10\)",
        ),
        (
            'labels_outside',
            dict(data=_jsonl({'q': 'a', 'label': 5}, {'q': 'b', 'label': -1})),
            gin_utils.ConfigError,
            "yields no example from split 'train' .* drops every record",
        ),
        (
            'wrong_type',
            dict(data=_jsonl({'q': 3, 'label': 1})),
            sources.InvalidRecordError,
            "line 1: field 'q' should be string, got 3",
        ),
        (
            'unknown_field',
            dict(jinja='{{ qq }} ||| {{ answer_choices[label] }}'),
            prompt_templates.TemplateError,
            'uses qq in its input',
        ),
    ],
)
def test_bad_data_is_found_before_training(
    tmp_path, name, task, error, message
):
  task_name = _local_task(tmp_path, name, **task)
  _fails_before_training(
      tmp_path,
      error,
      message,
      f'MIXTURE_OR_TASK_NAME = "{task_name}"',
      'MIXTURE_OR_TASK_MODULE = None',
  )


def test_byte_order_marks_are_not_data(tmp_path):
  (tmp_path / 'bom').mkdir()
  (tmp_path / 'bom' / 'train.jsonl').write_bytes(b'\xef\xbb\xbf' + GOOD)
  source = sources.LocalSource(
      'bom', FIELDS, ('train',), "'bom'", data_dir=str(tmp_path)
  )
  rows = list(source.get_dataset('train', shuffle=False).as_numpy_iterator())
  assert [r['q'] for r in rows] == [b'a b', b'c d']
  path = _templates(tmp_path / 'bom.json', prefix=b'\xef\xbb\xbf')
  assert prompt_templates.load(path).names == ['t']
  gin_file = tmp_path / 'bom.gin'
  gin_file.write_bytes(
      b'\xef\xbb\xbfinclude "gin_configs/local/synthetic.gin"\n'
  )
  gin.clear_config()
  with pytest.raises(
      gin_utils.ConfigError, match=f'{gin_file}, line 1: .*byte-order mark'
  ):
    gin_utils.parse_gin([str(gin_file)], ['MODEL_DIR = "/tmp/unused"'])
  gin.clear_config()


def test_labels_outside_the_answer_choices_are_counted(tmp_path, caplog):
  """Skipped with a counted warning: GLUE's unlabelled records carry -1."""
  template = prompt_templates.load(_templates(tmp_path / 't.json'))['t']
  dataset = preprocessors.apply_template(
      tf.data.Dataset.from_tensor_slices(
          {'q': ['a', 'b', 'c'], 'label': [5, 0, -1]}
      ),
      template,
  )
  with caplog.at_level('WARNING'):
    kept = list(dataset.as_numpy_iterator())
  assert [r['targets'] for r in kept] == [b'x']
  assert (
      "Template 't': skipped 1 record(s) without a target so far" in caplog.text
  )
  assert '"label": 5' in caplog.text
  assert 'skipped 2' not in caplog.text  # Logged at 1, 10, 100, ...


# ---- evaluation ---------------------------------------------------------------

_EVAL_TASK = 'spt_synthetic__first__first_word_in_list__score'


def _tiny_model(num_memories=8):
  t5 = config.t5_1_1_config('tiny', vocab_size=512, dropout_rate=0.0)
  spt = config.SptConfig(
      num_memories=num_memories, memory_length=4, top_k=2, prompt_length=16
  )
  return models.SptModel(network.SptTransformer(t5, spt))


@pytest.fixture(scope='module')
def saved_params():
  """The parameters of the synthetic run's model (8 memories), not trained."""
  shapes = {
      'encoder_input_tokens': (1, 24),
      'decoder_input_tokens': (1, 4),
      'decoder_target_tokens': (1, 4),
  }
  return params_test_utils.initial_params(_tiny_model(), shapes)


def _checkpoint(tmp_path, params):
  store = train_checkpoints.TrainCheckpoints(str(tmp_path / 'run'))
  store.save(3, {'params': params})
  store.close()
  return tmp_path / 'run'


def _evaluate(run, model=None, **kwargs):
  return eval_lib.run_eval(
      model=model or _tiny_model(),
      checkpoint_dir=str(run),
      mixture_or_task_name=_EVAL_TASK,
      mixture_or_task_module='tasks',
      batch_size=8,
      **kwargs,
  )


def test_evaluation_with_another_bank_names_the_checkpoint(
    saved_params, tmp_path
):
  run = _checkpoint(tmp_path, saved_params)
  with pytest.raises(
      gin_utils.ConfigError,
      match=rf'Checkpoint {run}/checkpoints/3 does not fit the model: '
      r'parameter memory_bank/keys has shape \(8, 64\) there, the model '
      r'expects \(16, 64\) \(and 1 more\)\. Evaluate with the run.s own '
      'configuration',
  ):
    _evaluate(run, _tiny_model(num_memories=16))


def test_evaluation_of_a_step_without_metadata_names_it(saved_params, tmp_path):
  run = _checkpoint(tmp_path, saved_params)
  step_dir = run / 'checkpoints' / '3'
  os.remove(step_dir / 'default' / '_METADATA')
  with pytest.raises(
      train_checkpoints.CorruptCheckpoint,
      match='its file default/_METADATA is missing',
  ):
    _evaluate(run)
  # A step saved without checksums: the read itself names it (it used to
  # be a bare TypeError).
  os.remove(step_dir / train_checkpoints.MANIFEST)
  with pytest.raises(
      train_checkpoints.CheckpointError,
      match=f'step 3 in {step_dir} has no readable metadata',
  ):
    _evaluate(run)


def test_unwritable_evaluation_output_fails_before_scoring(
    saved_params, tmp_path
):
  run = _checkpoint(tmp_path, saved_params)
  (tmp_path / 'file').write_text('')
  with pytest.raises(
      gin_utils.ConfigError,
      match='EVAL_OUTPUT_DIR .*/file/eval. cannot be written',
  ):
    _evaluate(run, output_dir=str(tmp_path / 'file' / 'eval'))


# ---- what the user sees --------------------------------------------------------

_BAD_TEMPLATE_MODULE = """
import os
from tasks import prompted, sources, vocab
HERE = os.path.dirname(os.path.abspath(__file__))
prompted.register('bad', prompted.PromptedDataset(
    name='d', source=sources.LocalSource(
        'd', {'q': 'string', 'label': 'int'}, ('train',), "'d'",
        data_dir=HERE),
    templates=os.path.join(HERE, 'd.json')),
    vocab.output_features(vocab.synthetic_vocabulary()))
"""


@pytest.mark.parametrize('case', ['spt_config', 'template'])
def test_the_runner_prints_one_line_and_exits_2(tmp_path, case):
  bindings = [f'MODEL_DIR="{tmp_path / "run"}"', 'TRAIN_STEPS=1']
  if case == 'spt_config':  # Raised inside a configurable gin calls.
    bindings.append('SptConfig.top_k=0')
    expected = 'error: SptConfig.top_k must be in [1, num_memories=8], got 0'
  else:  # Raised by the tasks package, when the pipeline is built.
    (tmp_path / 'bad_tasks.py').write_text(_BAD_TEMPLATE_MODULE)
    (tmp_path / 'd').mkdir()
    (tmp_path / 'd' / 'train.jsonl').write_bytes(GOOD)
    _templates(tmp_path / 'd.json', jinja='{{ q }}')
    bindings += [
        'MIXTURE_OR_TASK_MODULE="bad_tasks"',
        'MIXTURE_OR_TASK_NAME="bad__d__t"',
    ]
    expected = "error: Template 't' ('{{ q }}') has no target"
  env = dict(os.environ, PYTHONPATH=f'{tmp_path}{os.pathsep}{REPO}')
  out = subprocess.run(
      [
          sys.executable,
          '-m',
          'spt_jax.local.train',
          '--gin_file=gin_configs/local/synthetic.gin',
          *[f'--gin.{b}' for b in bindings],
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert out.returncode == 2, out.stderr[-3000:]
  errors = [l for l in out.stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == 1 and errors[0].startswith(expected), out.stderr[-3000:]
  assert 'Traceback' not in out.stderr
  assert 'In call to configurable' not in out.stderr
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')
