"""T5X's own binaries on our gin files and tasks: how users run SPT.

`python -m t5x.train`, `t5x.eval` and `t5x.infer` run in subprocesses on the
tiny model and offline data, in two chains whose runs several checks share:

* synthetic: training from scratch, then `t5x.eval` (rank classification per
  template, mean and median per dataset) and `t5x.infer` on its checkpoint;
  the same seed again, against its parameters; a misspelt macro;
* stages: a tiny Hugging Face T5 converted with a new memory bank, fine-tuned
  on GLUE keeping the converter's bank, then fine-tuned on SuperGLUE with a
  frozen backbone, the bank carried over (GLUE and SuperGLUE are small
  prepared TFDS folders written here).

The module runs in one pytest-xdist worker (`--dist loadfile`), so each chain's
runs are made once.
"""

import glob
import json
import os

from flax import traverse_util
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorboard.backend.event_processing import event_accumulator

from spt_jax.checkpoints import t5x_checkpoints
from tasks import synthetic
from tasks import vocab
from tests import t5x_test_utils

t5x_test_utils.import_t5x()

TINY_MODEL = 'gin_configs/models/spt_t5_1_1_tiny.gin'
# T5X's teacher-forced evaluation of every training task is not what these
# runs check, and costs more than their training.
NO_TRAIN_EVAL = '__main__.train.train_eval_dataset_cfg = None'
SYNTHETIC_STEPS = 40
STAGE_STEPS = 10
# The stages' T5 vocabulary: the synthetic SentencePiece model plus T5's 100
# sentinels, padded to a multiple of 128.
STAGE_VOCAB_SIZE = 640
STAGE_BINDINGS = [
    "TASK_FEATURE_LENGTHS = {'inputs': 48, 'targets': 8}",
    'SptConfig.prompt_length = 16',
    f'VOCAB_SIZE = {STAGE_VOCAB_SIZE}',
    'SptConfig.num_memories = 8',
    'SptConfig.memory_length = 2',
    'SptConfig.top_k = 2',
    'BATCH_SIZE = 8',
    f'TRAIN_STEPS_RELATIVE = {STAGE_STEPS}',
    f'utils.SaveCheckpointConfig.period = {STAGE_STEPS}',
    "ACTIVATION_DTYPE = 'float32'",
    'DROPOUT_RATE = 0.0',
    NO_TRAIN_EVAL,
]


def _params(checkpoint_dir):
  return traverse_util.flatten_dict(
      t5x_checkpoints.load_t5x_params(checkpoint_dir), sep='/'
  )


def _is_spt(name):
  return name.startswith(('memory_bank/', 'soft_prompt/'))


def _scalars(events_dir, tag):
  """{step: value} of a scalar T5X wrote to TensorBoard."""
  events = event_accumulator.EventAccumulator(
      events_dir, size_guidance={event_accumulator.TENSORS: 0}
  )
  events.Reload()
  return {
      e.step: float(tf.make_ndarray(e.tensor_proto))
      for e in events.Tensors(tag)
  }


# ---- synthetic: train from scratch, eval, infer -------------------------------

SCRATCH_FILES = [
    TINY_MODEL,
    'gin_configs/runs/spt_pretrain.gin',
    'gin_configs/mixtures/synthetic.gin',
]


@pytest.fixture(scope='module')
def scratch_run(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp('t5x_scratch'))
  t5x_test_utils.run_binary(
      't5x.train',
      SCRATCH_FILES,
      [
          f'MODEL_DIR = "{model_dir}"',
          f'TRAIN_STEPS = {SYNTHETIC_STEPS}',
          'utils.SaveCheckpointConfig.period = 20',
          'RANDOM_SEED = 0',
          NO_TRAIN_EVAL,
      ],
  )
  return model_dir


def test_train_from_scratch_lowers_the_loss_and_writes_checkpoints(scratch_run):
  for step in (0, 20, SYNTHETIC_STEPS):
    assert os.path.isdir(os.path.join(scratch_run, f'checkpoint_{step}'))
  assert os.path.exists(os.path.join(scratch_run, 'config.gin'))
  losses = _scalars(os.path.join(scratch_run, 'train'), 'cross_ent_loss')
  assert sorted(losses) == [20, SYNTHETIC_STEPS]
  assert losses[SYNTHETIC_STEPS] < 0.9 * losses[20]
  assert _scalars(os.path.join(scratch_run, 'train'), 'spt/pull_loss')
  first, last = (
      _params(os.path.join(scratch_run, f'checkpoint_{s}'))
      for s in (0, SYNTHETIC_STEPS)
  )
  assert not np.array_equal(first['memory_bank/keys'], last['memory_bank/keys'])


def test_one_seed_gives_one_run(scratch_run, tmp_path):
  """RANDOM_SEED fixes the data order too (spt_train_common.gin).

  T5X draws a new data seed at every start otherwise: two runs of one
  command used to differ from their first steps.
  """
  model_dir = str(tmp_path / 'seeded')
  t5x_test_utils.run_binary(
      't5x.train',
      SCRATCH_FILES,
      [
          f'MODEL_DIR = "{model_dir}"',
          'TRAIN_STEPS = 20',
          'RANDOM_SEED = 0',
          'utils.SaveCheckpointConfig.period = 20',
          NO_TRAIN_EVAL,
      ],
  )
  expected = _params(os.path.join(scratch_run, 'checkpoint_20'))
  actual = _params(os.path.join(model_dir, 'checkpoint_20'))
  for name, value in expected.items():
    np.testing.assert_array_equal(actual[name], value, err_msg=name)


def test_a_misspelt_macro_stops_t5x_train(tmp_path):
  out = t5x_test_utils.run_binary(
      't5x.train',
      SCRATCH_FILES,
      [f'MODEL_DIR = "{tmp_path / "run"}"', 'TRAIN_STEPS = 2', 'BATCH_SIZ = 8'],
      check=False,
  )
  assert out.returncode == 1
  assert (
      'ConfigError: Unknown gin macro BATCH_SIZ: no gin file uses '
      '%BATCH_SIZ, so --gin.BATCH_SIZ would have no effect. Did you mean '
      'BATCH_SIZE?'
  ) in out.stderr
  assert not os.path.exists(tmp_path / 'run')


def test_eval_reports_accuracy_per_template_and_per_dataset(
    scratch_run, tmp_path
):
  output_dir = str(tmp_path)
  t5x_test_utils.run_binary(
      't5x.eval',
      [
          TINY_MODEL,
          'gin_configs/runs/spt_eval.gin',
          'gin_configs/mixtures/synthetic.gin',
      ],
      [
          f'CHECKPOINT_PATH = "{scratch_run}/checkpoint_{SYNTHETIC_STEPS}"',
          f'EVAL_OUTPUT_DIR = "{output_dir}"',
          f'MIXTURE_OR_TASK_NAME = "{synthetic.HELDOUT_TASKS_MIXTURE}"',
      ],
  )
  results = os.path.join(output_dir, 'inference_eval')

  def last_line(name):
    with open(os.path.join(results, f'{name}-metrics.jsonl')) as f:
      return json.loads(f.read().splitlines()[-1])

  per_template = {}
  for path in glob.glob(os.path.join(results, '*__score-metrics.jsonl')):
    name = os.path.basename(path)[: -len('-metrics.jsonl')]
    per_template[name] = last_line(name)['accuracy']
  assert per_template and all(0 <= v <= 100 for v in per_template.values())
  cipher_first = [v for k, v in per_template.items() if '__cipher_first__' in k]
  aggregate = last_line('cipher_first__templates')
  assert aggregate['step'] == SYNTHETIC_STEPS
  assert aggregate['num_templates'] == len(cipher_first) > 1
  assert aggregate['accuracy_mean'] == pytest.approx(np.mean(cipher_first))
  assert aggregate['accuracy_median'] == pytest.approx(np.median(cipher_first))


def test_infer_writes_predictions(scratch_run, tmp_path):
  output_dir = str(tmp_path)
  t5x_test_utils.run_binary(
      't5x.infer',
      [
          TINY_MODEL,
          'gin_configs/runs/spt_infer.gin',
          'gin_configs/mixtures/synthetic.gin',
      ],
      [
          f'CHECKPOINT_PATH = "{scratch_run}/checkpoint_{SYNTHETIC_STEPS}"',
          f'INFER_OUTPUT_DIR = "{output_dir}"',
          'MIXTURE_OR_TASK_NAME = "spt_synthetic__reverse__end_to_start"',
      ],
  )
  (path,) = glob.glob(
      os.path.join(
          output_dir,
          'spt_synthetic__reverse__end_to_start-predict.jsonl-*-of-*[0-9]',
      )
  )
  with open(path) as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == synthetic.VALIDATION_EXAMPLES_PER_TASK
  assert all(isinstance(row['prediction'], str) for row in rows)
  assert rows[0]['inputs']['prompt_pretokenized']


# ---- stages: converted checkpoint -> GLUE -> SuperGLUE, frozen -------------------


def write_prepared_tfds(name, examples_by_split, data_dir):
  """Writes examples as the prepared TFDS dataset `name` under data_dir."""
  builder = tfds.builder(name, data_dir=data_dir)
  path = builder.data_path
  tf.io.gfile.makedirs(os.fspath(path))
  split_infos = []
  for split, examples in examples_by_split.items():
    template = tfds.core.ShardedFileTemplate(
        data_dir=path,
        dataset_name=builder.name,
        split=split,
        filetype_suffix='tfrecord',
    )
    shard = template.sharded_filepath(shard_index=0, num_shards=1)
    with tf.io.TFRecordWriter(os.fspath(shard)) as writer:
      for example in examples:
        writer.write(builder.info.features.serialize_example(example))
    split_infos.append(
        tfds.core.SplitInfo(
            name=split,
            shard_lengths=[len(examples)],
            num_bytes=0,
            filename_template=template,
        )
    )
  builder.info.set_splits(tfds.core.SplitDict(split_infos))
  builder.info.write_to_directory(path)


@pytest.fixture(scope='module')
def stage_setup(tmp_path_factory):
  """Offline GLUE/SuperGLUE RTE, and a converted tiny T5 with a bank."""
  pytest.importorskip('torch')
  pytest.importorskip('transformers')
  from spt_jax.checkpoints import convert_checkpoint  # pylint: disable=g-import-not-at-top
  from tests import t5_reference  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp('t5x_stages')
  rng = np.random.default_rng(0)

  def sentence():
    return ' '.join(rng.choice(synthetic.WORDS, 4))

  glue = [
      dict(sentence1=sentence(), sentence2=sentence(), label=i % 2, idx=i)
      for i in range(64)
  ]
  super_glue = [
      dict(premise=sentence(), hypothesis=sentence(), label=i % 2, idx=i)
      for i in range(64)
  ]
  tfds_dir = str(root / 'tfds')
  write_prepared_tfds(
      'glue/rte:2.0.0', {'train': glue, 'validation': glue[:16]}, tfds_dir
  )
  write_prepared_tfds(
      'super_glue/rte:1.0.2',
      {'train': super_glue, 'validation': super_glue[:16]},
      tfds_dir,
  )
  # The tiny size of gin_configs/sizes/tiny.gin.
  hf = t5_reference.tiny_hf_t5(
      vocab_size=STAGE_VOCAB_SIZE,
      d_model=64,
      d_kv=16,
      d_ff=128,
      num_layers=2,
      num_decoder_layers=2,
      num_heads=4,
      relative_attention_num_buckets=32,
      relative_attention_max_distance=128,
  )
  hf.save_pretrained(str(root / 'hf'))
  converted = str(root / 'converted')
  convert_checkpoint.convert(
      converted,
      hf_path=str(root / 'hf'),
      spt=convert_checkpoint.spt_shapes_config(
          num_memories=8, memory_length=2, memory_init='vocab_sample'
      ),
  )
  env = {
      'TFDS_DATA_DIR': tfds_dir,
      'SPT_VOCAB_PATH': vocab.SYNTHETIC_VOCAB_PATH,
  }
  return root, os.path.join(converted, 'checkpoint_0'), env


@pytest.fixture(scope='module')
def glue_stage(stage_setup):
  root, converted, env = stage_setup
  model_dir = str(root / 'glue')
  t5x_test_utils.run_binary(
      't5x.train',
      [TINY_MODEL, 'gin_configs/runs/spt_glue.gin'],
      STAGE_BINDINGS
      + [
          f'MODEL_DIR = "{model_dir}"',
          f'INITIAL_CHECKPOINT_PATH = "{converted}"',
          'RESTORE_SPT_PARAMS = True',
          'MIXTURE_OR_TASK_NAME = "spt_glue_rte"',
      ],
      env=env,
  )
  return model_dir


@pytest.fixture(scope='module')
def super_glue_stage(stage_setup, glue_stage):
  root, _, env = stage_setup
  model_dir = str(root / 'super_glue')
  t5x_test_utils.run_binary(
      't5x.train',
      [
          TINY_MODEL,
          'gin_configs/runs/spt_super_glue.gin',
          'gin_configs/runs/frozen_backbone.gin',
      ],
      STAGE_BINDINGS
      + [
          f'MODEL_DIR = "{model_dir}"',
          f'INITIAL_CHECKPOINT_PATH = "{glue_stage}/checkpoint_{STAGE_STEPS}"',
          'MIXTURE_OR_TASK_NAME = "spt_super_glue_rte"',
      ],
      env=env,
  )
  return model_dir


def test_finetuning_a_converted_checkpoint_keeps_its_bank(
    stage_setup, glue_stage
):
  _, converted, _ = stage_setup
  given = _params(converted)
  restored = _params(os.path.join(glue_stage, 'checkpoint_0'))
  assert set(restored) == set(given)
  for name, value in given.items():  # The bank too, not a fresh one.
    np.testing.assert_array_equal(restored[name], value, err_msg=name)
  trained = _params(os.path.join(glue_stage, f'checkpoint_{STAGE_STEPS}'))
  for name in ('memory_bank/values', 'encoder/layers_0/mlp/wi_0/kernel'):
    assert not np.array_equal(trained[name], given[name]), name


def test_super_glue_stage_carries_the_bank_over_a_frozen_backbone(
    glue_stage, super_glue_stage
):
  after_glue = _params(os.path.join(glue_stage, f'checkpoint_{STAGE_STEPS}'))
  start = _params(os.path.join(super_glue_stage, f'checkpoint_{STAGE_STEPS}'))
  end = _params(os.path.join(super_glue_stage, f'checkpoint_{2 * STAGE_STEPS}'))
  for name, value in after_glue.items():
    np.testing.assert_array_equal(start[name], value, err_msg=name)
    if _is_spt(name):
      assert not np.array_equal(end[name], value), f'{name} did not train'
    else:
      np.testing.assert_array_equal(end[name], value, err_msg=name)
