"""Every failure ends promptly with an error that names the problem.

Configuration errors are raised before any model work (in-process); a
failure inside the input pipeline ends the process at once (subprocess with a
timeout: it used to hang in tf.data's teardown). A MODEL_DIR holds one run: a
second live run, a changed model and a corrupt checkpoint are each refused or
set aside by name, on copies of one shared short run.
"""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import gin
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import seqio
import tensorflow as tf

from spt_jax import gin_utils
from spt_jax.local import checks
from spt_jax.local import run_lock
from spt_jax.local import train as train_lib
from spt_jax.local import train_checkpoints
from tasks import preprocessors
from tasks import prompt_templates
from tasks import prompted
from tasks import sources
from tasks import vocab
from tests import tasks_test_utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MODULE = """
import os
from tasks import prompted, sources, vocab
HERE = os.path.dirname(os.path.abspath(__file__))
prompted.register('faulty', prompted.PromptedDataset(
    name='ratio', source=sources.LocalSource(
        'ratio', {'label': 'int'}, ('train',), "'ratio'"),
    templates=os.path.join(HERE, 'ratio.json')),
    vocab.output_features(vocab.synthetic_vocabulary()))
"""


def _templates(path, jinja, choices=None):
  template = {'name': 't', 'jinja': jinja}
  if choices:
    template['answer_choices'] = choices
  path.write_text(json.dumps({'dataset': 'd', 'templates': [template]}))
  prompt_templates.load.cache_clear()
  return str(path)


def test_failure_inside_the_input_pipeline_exits_promptly(tmp_path):
  (tmp_path / 'faulty_tasks.py').write_text(_MODULE)
  _templates(
      tmp_path / 'ratio.json', 'Ten over {{ label }}? ||| ' '{{ 10 // label }}'
  )
  (tmp_path / 'data' / 'ratio').mkdir(parents=True)
  (tmp_path / 'data' / 'ratio' / 'train.jsonl').write_text(
      '{"label": 0}\n' * 64
  )
  env = dict(
      os.environ,
      PYTHONPATH=f'{tmp_path}{os.pathsep}{REPO}',
      SPT_DATA_DIR=str(tmp_path / 'data'),
  )
  out = subprocess.run(
      [
          sys.executable,
          '-m',
          'tasks.show',
          'faulty__ratio__t',
          '--module',
          'faulty_tasks',
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=90,
  )
  assert out.returncode == 1
  assert 'ZeroDivisionError' in out.stderr


def _train(tmp_path, *bindings):
  gin.clear_config()
  try:
    gin_utils.parse_gin(
        ['gin_configs/local/synthetic.gin'],
        [
            f'MODEL_DIR = "{tmp_path / "run"}"',
            'EVAL_MIXTURE_OR_TASK_NAME = None',
            *bindings,
        ],
        entry=train_lib.train,
    )
    return gin.get_configurable(train_lib.train)(progress_bar=False)
  finally:
    gin.clear_config()


@pytest.mark.parametrize(
    'binding, message',
    [
        ('TRAIN_STEPS = -1', 'TRAIN_STEPS=-1 must be a positive integer'),
        ('CHECKPOINT_PERIOD = 0', 'CHECKPOINT_PERIOD=0 must be a positive'),
        ('BATCH_SIZE = 12', 'BATCH_SIZE=12 must be a multiple of the 8'),
        ('VOCAB_SIZE = 100', 'VOCAB_SIZE=100 is smaller than the vocabulary'),
        (
            'MIXTURE_OR_TASK_MODULE = "no_such_tasks"',
            "MIXTURE_OR_TASK_MODULE 'no_such_tasks' cannot be imported",
        ),
    ],
)
def test_unusable_settings_fail_before_training(tmp_path, binding, message):
  with pytest.raises(gin_utils.ConfigError, match=message):
    _train(tmp_path, binding)
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


def test_unwritable_model_dir_fails_before_training(tmp_path):
  (tmp_path / 'file').write_text('')
  with pytest.raises(gin_utils.ConfigError, match='cannot be written'):
    _train(tmp_path, f'MODEL_DIR = "{tmp_path / "file" / "run"}"')


def test_nan_loss_stops_the_run(tmp_path):
  with pytest.raises(train_lib.TrainingDiverged, match='The loss is'):
    _train(
        tmp_path,
        'Z_LOSS = 1e999',
        'TRAIN_STEPS = 2',
        'LOG_PERIOD = 1',
        'BATCH_SIZE = 8',
        f'MIXTURE_OR_TASK_NAME = "{tasks_test_utils.SHORT_RUN_TASK}"',
    )
  assert sorted(os.listdir(tmp_path / 'run' / 'checkpoints')) == ['0']


def _local_task(tmp_path, name, splits, score=False):
  (tmp_path / name).mkdir()
  (tmp_path / name / 'train.jsonl').write_text('{"q": "a b", "label": 1}\n')
  source = sources.LocalSource(
      name,
      {'q': 'string', 'label': 'int'},
      splits,
      f"'{name}'",
      data_dir=str(tmp_path),
  )
  templates = _templates(
      tmp_path / f'{name}.json',
      '{{ q }} ? ||| {{ answer_choices[label] }}',
      'x ||| y',
  )
  return prompted.register(
      'faults',
      prompted.PromptedDataset(name, source, templates),
      vocab.output_features(vocab.synthetic_vocabulary()),
      score=score,
  )[0]


def test_missing_evaluation_data_and_metrics_are_found_up_front(tmp_path):
  task = _local_task(
      tmp_path, 'no_validation', ('train', 'validation'), score=True
  )
  with pytest.raises(
      gin_utils.ConfigError, match="split 'validation'.*not found"
  ):
    checks.check_data(task, 'validation')
  generation = _local_task(tmp_path, 'no_metric', ('train',))
  with pytest.raises(gin_utils.ConfigError, match='have no metric'):
    checks.check_metrics(generation)


def test_missing_tfds_data_names_the_fix(tmp_path, monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
  source = sources.TfdsSource(
      'glue/rte:2.0.0', {'train': 'train'}, data_dir=str(tmp_path)
  )
  with pytest.raises(sources.DataNotFoundError, match='tfds build glue'):
    source.list_shards('train')
  with pytest.raises(sources.DataNotFoundError, match='tfds build glue'):
    source.get_dataset('train')


def test_template_file_errors_name_the_file(tmp_path):
  bad_json = tmp_path / 'bad_json.json'
  bad_json.write_text('{"templates": [}')
  with pytest.raises(
      prompt_templates.TemplateError, match=f'{bad_json}: not valid JSON'
  ):
    prompt_templates.load(str(bad_json))
  path = _templates(tmp_path / 'bad_jinja.json', '{{ q ||| x')
  with pytest.raises(
      prompt_templates.TemplateError,
      match=f'{path}: Template .t.: Jinja syntax error',
  ) as e:
    prompt_templates.load(path)
  assert 'instruction' not in str(e.value)


def test_undefined_template_variable_is_found_when_the_dataset_is_built(
    tmp_path,
):
  template = prompt_templates.load(
      _templates(tmp_path / 'typo.json', '{{ qestion }} ||| {{ label }}')
  )['t']
  dataset = tf.data.Dataset.from_tensors({'question': 'a', 'label': 1})
  with pytest.raises(
      prompt_templates.TemplateError,
      match='uses qestion.*fields are label, question',
  ):
    preprocessors.apply_template(dataset, template)


def test_target_not_among_answer_choices_is_an_error(tmp_path):
  template = prompt_templates.load(
      _templates(
          tmp_path / 'choices.json', '{{ q }} ||| {{ label }}', 'no ||| yes'
      )
  )['t']
  dataset = preprocessors.rank_classification(
      preprocessors.apply_template(
          tf.data.Dataset.from_tensors({'q': 'a', 'label': 1}), template
      )
  )
  with pytest.raises(
      tf.errors.InvalidArgumentError,
      match='target is not among the answer choices',
  ):
    list(dataset.as_numpy_iterator())


def _saved(tmp_path):
  store = train_checkpoints.TrainCheckpoints(str(tmp_path))
  state = {'params': {'w': jnp.ones(4)}, 'step': jnp.zeros((), jnp.int32)}
  store.save(0, state)
  store.save(1, state)
  return store, state


def test_damaged_checkpoints_are_named(tmp_path):
  store, state = _saved(tmp_path)
  shutil.rmtree(os.path.join(store.step_dir(1), 'default'))
  with pytest.raises(
      train_checkpoints.CheckpointError, match=f'step 1 in {store.step_dir(1)}'
  ):
    store.restore_params(1)
  step, _ = store.restore_latest(state)
  assert step == 0
  assert os.listdir(tmp_path / 'damaged_checkpoints') == ['1']
  shutil.rmtree(os.path.join(store.step_dir(0), 'default'))
  with pytest.raises(
      train_checkpoints.CheckpointError,
      match=r'(?s)No checkpoint .* can be read.*checkpoints/0',
  ):
    store.restore_latest(state)
  store.close()


def test_full_disk_is_named(tmp_path, monkeypatch):
  store, state = _saved(tmp_path)

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(store._manager, 'save', full)  # pylint: disable=protected-access
  with pytest.raises(
      train_checkpoints.CheckpointError,
      match='No space left on device while writing checkpoint '
      'step 2.*last complete checkpoint is step 1',
  ):
    store.save(2, state)
  np.testing.assert_array_equal(store.restore_params(1)['w'], np.ones(4))
  store.close()


# The shared run: checkpoints 0, 3 and 6; metrics logged at steps 4 and 6.
_SHORT_RUN = [
    'BATCH_SIZE = 8',
    'LOG_PERIOD = 4',
    'CHECKPOINT_PERIOD = 3',
    f'MIXTURE_OR_TASK_NAME = "{tasks_test_utils.SHORT_RUN_TASK}"',
]


@pytest.fixture(scope='module')
def short_run(tmp_path_factory):
  """A 6-step run that the tests below copy (and never change)."""
  root = tmp_path_factory.mktemp('short_run')
  return str(root / 'run'), _train(root, *_SHORT_RUN, 'TRAIN_STEPS = 6')


def _copy(short_run, tmp_path):
  shutil.copytree(short_run[0], tmp_path / 'run')
  return tmp_path / 'run'


def _listing(folder):
  return sorted(
      os.path.relpath(os.path.join(d, n), folder)
      for d, _, names in os.walk(folder)
      for n in names
  )


def test_a_live_model_dir_is_refused_and_a_killed_holder_leaves_no_lock(
    short_run, tmp_path
):
  run = _copy(short_run, tmp_path)
  config = (run / 'config.gin').read_text()
  holder = subprocess.Popen(
      [
          sys.executable,
          '-c',
          'import sys, time; from spt_jax.local import run_lock; '
          'run_lock.RunLock(sys.argv[1]).acquire(); print("held", flush=True); '
          'time.sleep(600)',
          str(run),
      ],
      cwd=REPO,
      env=dict(os.environ, PYTHONPATH=REPO),
      stdout=subprocess.PIPE,
      text=True,
  )
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(
        run_lock.ModelDirInUse,
        match=f'MODEL_DIR {run} is in use by another run: pid '
        f'{holder.pid} on host .* since ',
    ) as e:
      _train(tmp_path, *_SHORT_RUN, 'TRAIN_STEPS = 9')
    # One line (gin adds the configurable's name on the next).
    assert 'or train into another MODEL_DIR.' in str(e.value).splitlines()[0]
    assert (run / 'config.gin').read_text() == config
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # The kernel dropped the dead holder's lock: the run resumes, here at its
  # last step, and reports the metrics it ended with (they used to be {}).
  resumed = _train(tmp_path, *_SHORT_RUN, 'TRAIN_STEPS = 6')
  assert resumed.step == 6 and resumed.metrics == short_run[1].metrics


def test_a_changed_model_is_refused_and_nothing_is_moved(short_run, tmp_path):
  run = _copy(short_run, tmp_path)
  before = {name: (run / name).read_bytes() for name in _listing(run)}
  with pytest.raises(
      gin_utils.ConfigError,
      match=r'holds a run of another model or method.*'
      r'SptConfig.num_memories: 8 -> 16\. Train into a new '
      'MODEL_DIR',
  ) as e:
    _train(
        tmp_path, *_SHORT_RUN, 'TRAIN_STEPS = 9', 'SptConfig.num_memories = 16'
    )
  assert 'nothing was changed.' in str(e.value).splitlines()[0]
  after = {
      name: (run / name).read_bytes()
      for name in _listing(run)
      if name != run_lock.LOCK_FILE
  }
  assert after == {k: v for k, v in before.items() if k != run_lock.LOCK_FILE}
  # Settings that do not change the model may change on resume.
  assert (
      _train(
          tmp_path,
          *_SHORT_RUN,
          'TRAIN_STEPS = 6',
          'LEARNING_RATE = 0.02',
          'EVAL_BATCH_SIZE = 16',
      ).step
      == 6
  )


def test_a_corrupt_checkpoint_is_set_aside_and_the_run_resumes_before_it(
    short_run, tmp_path, caplog
):
  run = _copy(short_run, tmp_path)
  step_dir = run / 'checkpoints' / '6'
  files = [
      p
      for p in step_dir.rglob('*')
      if p.is_file() and p.name != train_checkpoints.MANIFEST
  ]
  largest = max(files, key=lambda p: p.stat().st_size)
  with open(largest, 'r+b') as f:  # 8 bytes inside a file: the same size.
    f.seek(largest.stat().st_size // 2)
    f.write(b'\xff' * 8)
  resumed = _train(tmp_path, *_SHORT_RUN, 'TRAIN_STEPS = 6')
  assert (
      f'step 6 in {step_dir} is corrupt: its file '
      f'{largest.relative_to(step_dir)}'
  ) in caplog.text
  assert os.listdir(run / 'damaged_checkpoints') == ['6']
  # Resumed from step 3, the run logs the uninterrupted run's windows (steps
  # 1-4 and 5-6), not a window cut short at the restore.
  assert [s for s, _ in resumed.history] == [4, 6]
  for (_, expected), (_, actual) in zip(short_run[1].history, resumed.history):
    np.testing.assert_allclose(actual['loss'], expected['loss'], rtol=1e-5)


def test_nan_right_after_a_restore_suspects_that_checkpoint(
    short_run, tmp_path
):
  """A checkpoint bad when written (it verifies): NaN at its first step."""
  run = _copy(short_run, tmp_path)
  store = train_checkpoints.TrainCheckpoints(str(run))
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore(os.path.join(store.step_dir(6), 'default'))
  state['params'] = jax.tree.map(lambda x: x * np.nan, state['params'])
  shutil.rmtree(store.step_dir(6))
  store.close()
  store = train_checkpoints.TrainCheckpoints(str(run))
  store.save(6, state)
  store.close()
  argv = [
      sys.executable,
      '-m',
      'spt_jax.local.train',
      '--gin_file=gin_configs/local/synthetic.gin',
      f'--gin.MODEL_DIR="{run}"',
      '--gin.EVAL_MIXTURE_OR_TASK_NAME=None',
      '--gin.TRAIN_STEPS=8',
      '--gin.LOG_PERIOD=1',
  ]
  argv += [
      f'--gin.{b.replace(" = ", "=")}'
      for b in _SHORT_RUN
      if not b.startswith('LOG_PERIOD')
  ]
  out = subprocess.run(
      argv, cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 1, out.stderr[-3000:]
  assert 'Traceback' not in out.stderr
  assert re.search(
      r'error: The loss is nan at step 7, 1 step\(s\) after restoring '
      r'checkpoint step 6 .*: that checkpoint is suspect\. Move '
      r'.*checkpoints/6 out of .* to resume from step 3',
      out.stderr,
  ), out.stderr[-3000:]


def test_sigterm_during_the_final_evaluation_says_what_was_kept(
    short_run, tmp_path, monkeypatch
):
  """Training is done and saved; the message says how to evaluate it."""
  _copy(short_run, tmp_path)

  def terminated(**unused_kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # The handler raises before this ends.
    raise AssertionError('SIGTERM did not interrupt the evaluation')

  monkeypatch.setattr(train_lib.eval_lib, 'evaluate', terminated)
  handler = signal.getsignal(signal.SIGTERM)
  with pytest.raises(
      train_lib.TrainingInterrupted,
      match=r'SIGTERM during the final evaluation: training '
      r'finished at step 6, saved in .*; evaluate it with '
      r'python -m spt_jax.local.eval --gin_file=.*config.gin',
  ):
    _train(
        tmp_path,
        *_SHORT_RUN,
        'TRAIN_STEPS = 6',
        'EVAL_MIXTURE_OR_TASK_NAME = "spt_synthetic_heldout"',
    )
  assert signal.getsignal(signal.SIGTERM) is handler
