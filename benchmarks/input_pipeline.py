r"""Examples per second of the input pipeline against what the model consumes.

Every variant is the training pipeline of `spt_jax.local.train_data.get_train_dataset`
(seqio mixture, shuffled and repeated, `SptEncDecFeatureConverter` without
packing, batched per host), read after a warm-up, on offline fixtures written
here:

  t0              T0's training datasets that are read from local exports
                  (21 of its 36; the other 15 come from TFDS), as JSON lines
                  of generated text with each field at about its dataset's
                  typical length, through our prompted tasks
                  (`spt_t0__<dataset>__<template>`, 63 tasks: the Jinja
                  templates are rendered in `tf.numpy_function`, then
                  tokenised), T0's mixing rates, inputs 1024 / targets 256 /
                  prompt 64.
  t0_prerendered  the same examples, rendered once up front: the pipeline
                  starts from the rendered text and only tokenises (what is
                  left when rendering costs nothing).
  t0_cached       the same tasks read from a SeqIO cache
                  (`get_dataset(use_cached=True)`, T5X's `USE_CACHED_TASKS =
                  True), written as `seqio.scripts.cache_tasks_main` writes
                  it (`write_cache_in_process`; `--cache_writer=beam` runs
                  the script itself).
  p3              P3 (pre-tokenised TFRecords, `tasks.p3`): a fixture of one
                  P3 folder per task above holding that task's examples, read
                  through `spt_p3_t0_train` (no promptsource: no prompt).
  synthetic       the offline synthetic mixture at its own lengths (48 / 8 /
                  16), the reference.

Beside them, the training step of T5 1.1 at 1024 / 256 tokens on this host
(`benchmarks.step_time`'s step: full fine-tuning, Adafactor, dropout 0.1),
for `pipeline / model` ratios; and, as an estimate (no accelerator here),
what 8 accelerators would consume at T0's lengths (`accelerator_demand`).
`render_ceiling` times the rendering of the numpy_function alone, in one
Python thread, on the same examples: under the GIL the whole pipeline cannot
render faster than that, whatever its parallelism.

    python -m benchmarks.input_pipeline --repeats=3
    python -m benchmarks.input_pipeline --variants=t0,p3 --model_sizes= --repeats=2

Variants are timed side by side in one process (`common.time_interleaved`):
each timed call first drains `--drain_batches` batches, untimed, so that
what the paused pipelines had buffered is not counted, then times
`--batches` batches. Writes benchmarks/results/input_pipeline.json.
"""

import argparse
import dataclasses
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Mapping, Sequence

if __package__ in (None, ''):
  sys.path.insert(
      0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  )

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import seqio  # pylint: disable=g-import-not-at-top
from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from benchmarks import step_time  # pylint: disable=g-import-not-at-top
import tasks  # pylint: disable=g-import-not-at-top,unused-import
from spt_jax import eval_protocol  # pylint: disable=g-import-not-at-top
from spt_jax.local import train_data  # pylint: disable=g-import-not-at-top
from spt_jax.local import trainer  # pylint: disable=g-import-not-at-top
from spt_jax.model import config  # pylint: disable=g-import-not-at-top
from spt_jax.model import feature_converters  # pylint: disable=g-import-not-at-top
from spt_jax.model import models  # pylint: disable=g-import-not-at-top
from spt_jax.model import network  # pylint: disable=g-import-not-at-top
from tasks import p3  # pylint: disable=g-import-not-at-top
from tasks import preprocessors  # pylint: disable=g-import-not-at-top
from tasks import prompted  # pylint: disable=g-import-not-at-top
from tasks import registry  # pylint: disable=g-import-not-at-top
from tasks import synthetic  # pylint: disable=g-import-not-at-top
from tasks import t0  # pylint: disable=g-import-not-at-top

# The T0 tasks read their data and vocabulary from these (see `use_fixture`).
_DATA_ENV, _VOCAB_ENV = 'SPT_DATA_DIR', 'SPT_VOCAB_PATH'

_SYNTHETIC_VOCAB = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tasks',
    'data', 'synthetic_spm.model')
T0_LENGTHS = {'inputs': 1024, 'targets': 256, 'prompt': 64}
MIXTURE = 'spt_bench_t0'
PRERENDERED_MIXTURE = 'spt_bench_t0_prerendered'
PRERENDERED_COLLECTION = 'spt_bench_prerendered'

# ----------------------------------------------------------------- Fixture --

# Approximate sizes of the datasets' training splits (their Hugging Face
# exports), used only for T0's mixing rates (`prompted.mixing_rate`).
TRAIN_SIZES = {
    'commonsense_qa': 9_741, 'dream': 6_116, 'quail': 10_246,
    'quartz': 2_696, 'social_i_qa': 33_410, 'wiqa': 29_808, 'quarel': 1_941,
    'sciq': 11_679, 'wiki_hop': 43_738, 'adversarial_qa': 30_000,
    'quoref': 19_399, 'duorc_selfrc': 60_721, 'duorc_paraphraserc': 69_524,
    'ropes': 10_924, 'hotpot_qa': 90_447, 'wiki_qa': 20_360,
    'common_gen': 67_389, 'amazon_polarity': 3_600_000,
    'app_reviews': 288_065, 'rotten_tomatoes': 8_530, 'dbpedia_14': 560_000,
}
# The P3 folder prefix of each (`tasks.p3.datasets.T0_DATASETS`).
P3_PREFIXES = {
    'commonsense_qa': 'cos_e_v1.11', 'wiki_hop': 'wiki_hop_original',
    'adversarial_qa': 'adversarial_qa_dbidaf', 'duorc_selfrc': 'duorc_SelfRC',
    'duorc_paraphraserc': 'duorc_ParaphraseRC',
    'hotpot_qa': 'kilt_tasks_hotpotqa',
}


VOCAB_PIECES = 32_000


class TextGenerator:
  """Deterministic English-like text over a 32k-piece fixture vocabulary.

  Words are 1-3 "morphemes" (syllable strings) drawn with Zipf frequencies,
  so that the fixture vocabulary (`vocabulary_proto`, one piece per morpheme
  at a word's start and one inside a word) gives about 1.3 pieces per word,
  as T5's vocabulary does on English. Only the lengths of the texts matter
  here: rendering and tokenisation cost what the characters cost.
  """

  NUM_MORPHEMES = 15_900
  NUM_WORDS = 40_000

  def __init__(self, seed: int = 0):
    rng = np.random.default_rng(seed)
    consonants, vowels = np.array(list('bcdfghjklmnprstvwz')), np.array(
        list('aeiou'))
    morphemes, seen = [], set()
    while len(morphemes) < self.NUM_MORPHEMES:
      n = 4 * self.NUM_MORPHEMES
      syllables = [
          np.char.add(np.char.add(consonants[rng.integers(18, size=n)],
                                  vowels[rng.integers(5, size=n)]),
                      np.where(rng.random(n) < 0.4,
                               consonants[rng.integers(18, size=n)], ''))
          for _ in range(3)]
      count = rng.choice([1, 2, 3], size=n, p=[0.55, 0.4, 0.05])
      for i in range(n):
        m = ''.join(syllables[j][i] for j in range(count[i]))
        if m not in seen and len(morphemes) < self.NUM_MORPHEMES:
          seen.add(m)
          morphemes.append(m)
    self.morphemes = morphemes
    zipf = np.cumsum(1.0 / (np.arange(self.NUM_MORPHEMES) + 10.0))
    extra = self.NUM_WORDS - 300
    parts = rng.choice([1, 2, 3], size=extra, p=[0.7, 0.25, 0.05])
    picks = np.searchsorted(zipf / zipf[-1], rng.random((extra, 3)))
    words = list(morphemes[:300])  # Single-morpheme function words.
    words += [''.join(morphemes[k] for k in picks[i, :parts[i]])
              for i in range(extra)]
    self.words = np.array(words, dtype=object)
    weights = 1.0 / (np.arange(self.NUM_WORDS) + 2.7)
    self._cdf = np.cumsum(weights / weights.sum())
    self.rng = np.random.default_rng(seed + 1)

  def sample_words(self, n: int) -> List[str]:
    return list(self.words[np.searchsorted(self._cdf, self.rng.random(n))])

  def text(self, mean_words: float) -> str:
    """About `mean_words` words (log-normal), in sentences of 6-24 words."""
    n = max(1, int(round(mean_words * np.exp(self.rng.normal(0, 0.5) - 0.125))))
    words = self.sample_words(n)
    out, i = [], 0
    while i < n:
      length = int(self.rng.integers(6, 25))
      sentence = words[i:i + length]
      if len(sentence) > 8 and self.rng.random() < 0.5:
        sentence[len(sentence) // 2] += ','
      out.append(' '.join(sentence) + ('.' if i + length < n or n > 5 else ''))
      i += length
    return ' '.join(out)

  def texts(self, count: int, mean_words: float) -> List[str]:
    return [self.text(mean_words) for _ in range(count)]

  def integer(self, low: int, high: int) -> int:
    """Uniform in [low, high]."""
    return int(self.rng.integers(low, high + 1))

  def pick(self, values: Sequence[Any]) -> Any:
    return values[int(self.rng.integers(len(values)))]


def _template_words() -> List[str]:
  """The words of our templates (their English wording), in a fixed order."""
  folder = os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), 'tasks', 'templates')
  words = set()
  for name in sorted(os.listdir(folder)):
    if name.endswith('.json'):
      with open(os.path.join(folder, name)) as f:
        words.update(re.findall(r'[A-Za-z]+', f.read()))
  return sorted(words)


def vocabulary_proto(generator: TextGenerator) -> bytes:
  """A SentencePiece unigram model over the generator's morphemes.

  Ids follow T5: pad 0, EOS 1, UNK 2, no BOS; 32,000 pieces, so with T5's
  100 sentinel ids (`tasks.vocab.t5_vocabulary`) the fixture's token ids
  span T5's range. The templates' own words are single pieces, as most are in
  T5's vocabulary; the rarest morphemes have none (they split further).
  """
  model = sentencepiece_model_pb2.ModelProto()
  spec = model.trainer_spec
  spec.model_type = sentencepiece_model_pb2.TrainerSpec.UNIGRAM
  spec.pad_id, spec.eos_id, spec.unk_id, spec.bos_id = 0, 1, 2, -1
  # The committed synthetic model's normalizer: one rule (ideographic space
  # to space), which spares SentencePiece's log line about an empty one.
  with open(_SYNTHETIC_VOCAB, 'rb') as f:
    committed = sentencepiece_model_pb2.ModelProto.FromString(f.read())
  model.normalizer_spec.CopyFrom(committed.normalizer_spec)
  piece_type = sentencepiece_model_pb2.ModelProto.SentencePiece

  def add(piece, score, kind=piece_type.NORMAL):
    p = model.pieces.add()
    p.piece, p.score, p.type = piece, score, kind

  add('<pad>', 0.0, piece_type.CONTROL)
  add('</s>', 0.0, piece_type.CONTROL)
  add('<unk>', 0.0, piece_type.UNKNOWN)
  add('\u2581', -19.0)
  for ch in ('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'
             '0123456789.,?!\'"-_:;()/[]{}|'):
    add('\u2581' + ch, -20.0)
    add(ch, -20.5)
  pieces = {p.piece for p in model.pieces}
  for word in _template_words():
    for piece in ('\u2581' + word, word):
      if piece not in pieces:
        pieces.add(piece)
        add(piece, -8.0)
  for rank, m in enumerate(generator.morphemes):
    score = -float(np.log(rank + 10.0))
    for piece, s in (('\u2581' + m, score), (m, score - 1.0)):
      if piece not in pieces and len(pieces) < VOCAB_PIECES:
        pieces.add(piece)
        add(piece, s)
  spec.vocab_size = len(model.pieces)
  return model.SerializeToString()


def _labels(n: int) -> List[str]:
  return [chr(ord('A') + i) for i in range(n)]


def t0_record(dataset: str, g: TextGenerator) -> Dict[str, Any]:
  """One generated record of a T0 dataset, its fields at typical lengths.

  Labels are consistent with the fields (an answer among the choices), so
  that every template renders every record, but for the few records that a
  template drops by design (e.g. WikiQA's negative answers for the question
  writing template).
  """
  text = g.text
  if dataset == 'commonsense_qa':
    labels = _labels(5)
    return {'question': text(13) + '?',
            'choices': {'label': labels, 'text': g.texts(5, 1.5)},
            'answerKey': g.pick(labels)}
  if dataset == 'dream':
    choices = g.texts(3, 5)
    return {'dialogue': g.texts(g.integer(4, 9), 14), 'question': text(8) + '?',
            'choice': choices, 'answer': g.pick(choices)}
  if dataset == 'quail':
    return {'context': text(320), 'question': text(10) + '?',
            'answers': g.texts(4, 6), 'correct_answer_id': g.integer(0, 3)}
  if dataset == 'quartz':
    return {'para': text(35), 'question': text(20),
            'choices': {'label': ['A', 'B'], 'text': g.texts(2, 2)},
            'answerKey': g.pick(['A', 'B'])}
  if dataset == 'social_i_qa':
    return {'context': text(15), 'question': text(7) + '?',
            'answerA': text(4), 'answerB': text(4), 'answerC': text(4),
            'label': g.pick(['1', '2', '3'])}
  if dataset == 'wiqa':
    return {'question_stem': text(12),
            'question_para_step': g.texts(g.integer(4, 9), 8),
            'answer_label': g.pick(['more', 'less', 'no_effect'])}
  if dataset == 'quarel':
    return {'question': text(40), 'answer_index': g.integer(0, 1),
            'world_literals': {'world1': [text(2)], 'world2': [text(2)]}}
  if dataset == 'sciq':
    return {'question': text(14) + '?', 'distractor1': text(2),
            'distractor2': text(2), 'distractor3': text(2),
            'correct_answer': text(2), 'support': text(80)}
  if dataset == 'wiki_hop':
    candidates = g.texts(g.integer(2, 30), 2)
    relation = '_'.join(g.sample_words(g.integer(1, 3)))
    return {'question': f'{relation} {text(2)}', 'candidates': candidates,
            'answer': g.pick(candidates),
            'supports': g.texts(g.integer(3, 25), 90)}
  if dataset in ('adversarial_qa', 'quoref'):
    context = 120 if dataset == 'adversarial_qa' else 330
    return {'title': text(3), 'context': text(context),
            'question': text(12) + '?', 'answers': {'text': [text(2.5)]}}
  if dataset in ('duorc_selfrc', 'duorc_paraphraserc'):
    plot = 580 if dataset == 'duorc_selfrc' else 900
    no_answer = g.rng.random() < 0.1
    return {'title': text(3), 'plot': text(plot), 'question': text(8) + '?',
            'answers': [] if no_answer else [text(3)], 'no_answer': no_answer}
  if dataset == 'ropes':
    return {'background': text(120), 'situation': text(90),
            'question': text(15) + '?', 'answers': {'text': [text(2)]}}
  if dataset == 'hotpot_qa':
    return {'question': text(18) + '?', 'answer': text(2)}
  if dataset == 'wiki_qa':
    return {'question': text(7) + '?', 'answer': text(25),
            'document_title': text(2), 'label': int(g.rng.random() < 0.05)}
  if dataset == 'common_gen':
    return {'concepts': g.sample_words(g.integer(3, 5)), 'target': text(11)}
  if dataset == 'amazon_polarity':
    return {'title': text(5), 'content': text(75), 'label': g.integer(0, 1)}
  if dataset == 'app_reviews':
    return {'review': text(20), 'star': g.integer(1, 5)}
  if dataset == 'rotten_tomatoes':
    return {'text': text(21), 'label': g.integer(0, 1)}
  if dataset == 'dbpedia_14':
    return {'title': text(3), 'content': text(46), 'label': g.integer(0, 13)}
  raise ValueError(f'No fixture generator for {dataset!r}.')


@dataclasses.dataclass(frozen=True)
class Fixture:
  """Where `write_fixture` put the offline data."""

  root: str

  @property
  def data_dir(self) -> str:  # $SPT_DATA_DIR
    return os.path.join(self.root, 'data')

  @property
  def vocab_path(self) -> str:  # $SPT_VOCAB_PATH
    return os.path.join(self.root, 'vocab.model')

  @property
  def p3_dir(self) -> str:
    return os.path.join(self.root, 'P3')

  @property
  def cache_dir(self) -> str:
    return os.path.join(self.root, 'seqio_cache')


def write_fixture(root: str, datasets: Sequence[str] = tuple(TRAIN_SIZES),
                  records: int = 1000, seed: int = 0) -> Fixture:
  """Writes the vocabulary and the datasets' records; points the tasks there.

  Each dataset gets `records` training records and a tenth as many (at
  least 8) in each of its other splits (SeqIO's cache script caches every
  split of a task).
  """
  fixture = Fixture(root)
  generator = TextGenerator(seed)
  os.makedirs(fixture.data_dir, exist_ok=True)
  with open(fixture.vocab_path, 'wb') as f:
    f.write(vocabulary_proto(generator))
  use_fixture(fixture)

  by_name = {d.name: d for d in t0.TRAIN_DATASETS}
  for dataset in datasets:
    folder = os.path.join(fixture.data_dir, dataset)
    os.makedirs(folder, exist_ok=True)
    for split in by_name[dataset].source.splits:
      count = records if split == 'train' else max(8, records // 10)
      with open(os.path.join(folder, f'{split}.jsonl'), 'w') as f:
        for _ in range(count):
          f.write(json.dumps(t0_record(dataset, generator)) + '\n')
  return fixture


def use_fixture(fixture: Fixture) -> None:
  """Points the T0 tasks at the fixture's data and vocabulary.

  Sets `$SPT_DATA_DIR` and `$SPT_VOCAB_PATH` (read by subprocesses, such as
  SeqIO's cache script, when they import `tasks`) and registers the T0 tasks
  again, since their vocabulary is fixed when they are registered.
  """
  os.environ[_DATA_ENV] = fixture.data_dir
  os.environ[_VOCAB_ENV] = fixture.vocab_path
  t0.register()


# ---------------------------------------------------------------- Mixtures --


def t0_task_names(datasets: Sequence[str]) -> Dict[str, List[str]]:
  """dataset -> the names of its `spt_t0` training tasks."""
  by_name = {d.name: d for d in t0.TRAIN_DATASETS}
  return {
      d: [eval_protocol.task_name(t0.COLLECTION, d, t.name)
          for t in by_name[d].template_collection.templates]
      for d in datasets
  }


def t0_rate(dataset: str, num_templates: int) -> int:
  return prompted.mixing_rate(TRAIN_SIZES[dataset], num_templates)


def register_t0_mixture(datasets: Sequence[str],
                        name: str = MIXTURE) -> List[str]:
  """A mixture of the datasets' `spt_t0` tasks with T0's rates."""
  entries = []
  for dataset, names in t0_task_names(datasets).items():
    rate = t0_rate(dataset, len(names))
    entries += [(n, rate) for n in names]
  registry.add_mixture(name, entries)
  return [n for n, _ in entries]


# ------------------------- Pre-processed copies: SeqIO caches, P3 folders --


def precache_examples(task_name: str, split: str = 'train'
                      ) -> List[Dict[str, Any]]:
  """A task's examples where SeqIO caches them: rendered, tokenised, no EOS.

  In the source's order, as `seqio.scripts.cache_tasks_main` computes them
  (`Task.preprocess_precache` on the unshuffled source).
  """
  task = seqio.get_mixture_or_task(task_name)
  ds = task.preprocess_precache(task.source.get_dataset(split, shuffle=False))
  return list(ds.as_numpy_iterator())


def _tf_example(example: Mapping[str, Any]) -> bytes:
  """A tf.train.Example as SeqIO's cache and P3 store one (ints as int64)."""
  feature = {}
  for key, value in example.items():
    flat = np.asarray(value).reshape(-1)
    if flat.dtype.kind in 'SUO':
      feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[v if isinstance(v, bytes) else str(v).encode() for v in flat]))
    elif flat.dtype.kind == 'f':
      feature[key] = tf.train.Feature(
          float_list=tf.train.FloatList(value=flat.tolist()))
    else:
      feature[key] = tf.train.Feature(
          int64_list=tf.train.Int64List(value=flat.astype(np.int64).tolist()))
  return tf.train.Example(
      features=tf.train.Features(feature=feature)).SerializeToString()


def _feature_info(example: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
  """{'dtype', 'shape'} per feature, as `seqio.beam_utils.GetInfo` writes."""
  info = {}
  for key, value in example.items():
    value = np.asarray(value)
    dtype = ('string' if value.dtype.kind in 'SUO' else
             'bool' if value.dtype.kind == 'b' else value.dtype.name)
    info[key] = {'dtype': dtype,
                 'shape': [None] + list(value.shape[1:]) if value.ndim else []}
  return info


def write_split(folder: str, split: str, examples: Sequence[Mapping[str, Any]],
                stats: Mapping[str, Any]) -> None:
  """One shard with `info.<split>.json` and `stats.<split>.json`."""
  os.makedirs(folder, exist_ok=True)
  with tf.io.TFRecordWriter(
      os.path.join(folder, f'{split}.tfrecord-00000-of-00001')) as writer:
    for example in examples:
      writer.write(_tf_example(example))
  with open(os.path.join(folder, f'info.{split}.json'), 'w') as f:
    json.dump({'features': _feature_info(examples[0]), 'num_shards': 1,
               'seqio_version': seqio.__version__}, f)
  with open(os.path.join(folder, f'stats.{split}.json'), 'w') as f:
    json.dump(dict(stats), f)


def write_cache_in_process(cache_dir: str, task_names: Sequence[str],
                           examples: Mapping[str, Sequence[Mapping[str, Any]]]
                           ) -> None:
  """The SeqIO cache `cache_tasks_main` writes, of the `train` split, in-process.

  Beam's DirectRunner, the runner a single host has, needed more than 12 GB
  and 13 minutes for the 63 tasks x 200 records of the full fixture here
  (a real mixture is cached on a Beam cluster: `--pipeline_options=
  --runner=DataflowRunner,...`). This writes the same layout, one shard per
  task: `<cache_dir>/<task>/train.tfrecord-*`, `info.train.json`,
  `stats.train.json` and `COMPLETED`; `tests/benchmarks_input_pipeline_test.py`
  checks that both caches hold the same examples.

  Args:
    cache_dir: the cache directory.
    task_names: the tasks.
    examples: task name -> `precache_examples(task)`.
  """
  for name in task_names:
    task_examples = examples[name]
    stats = {'examples': len(task_examples)}
    for key in seqio.get_mixture_or_task(name).output_features:
      lengths = [len(ex[key]) for ex in task_examples]
      stats[f'{key}_tokens'] = int(np.sum(lengths))
      stats[f'{key}_max_tokens'] = int(np.max(lengths))
    folder = os.path.join(cache_dir, seqio.get_task_dir_from_name(name))
    write_split(folder, 'train', task_examples, stats)
    with open(os.path.join(folder, 'COMPLETED'), 'w') as f:
      f.write('')


def cache_command(task_names: Sequence[str], cache_dir: str) -> List[str]:
  """`seqio.scripts.cache_tasks_main` for these tasks (Beam's DirectRunner).

  `--tasks` takes task names (regular expressions), not a mixture's name.
  """
  return [
      sys.executable, '-m', 'seqio.scripts.cache_tasks_main',
      '--module_import=tasks', f'--tasks={",".join(task_names)}',
      f'--output_cache_dir={cache_dir}', '--min_shards=1',
      # One process: the multi-process DirectRunner grew past 20 GB on
      # the full fixture here.
      '--pipeline_options=--runner=DirectRunner,'
      '--direct_running_mode=in_memory',
  ]


def write_cache_with_beam(cache_dir: str, task_names: Sequence[str]) -> None:
  """Caches the tasks with `seqio.scripts.cache_tasks_main` (every split)."""
  out = subprocess.run(cache_command(task_names, cache_dir), env=os.environ,
                       capture_output=True, text=True)
  if out.returncode:
    raise RuntimeError(f'cache_tasks_main failed:\n{out.stderr[-3000:]}')


def write_p3_fixture(fixture: Fixture, datasets: Sequence[str],
                     examples: Mapping[str, Sequence[Mapping[str, Any]]]
                     ) -> List[str]:
  """One P3 folder per `spt_t0` task of `datasets`, holding its examples.

  As P3 stores them: inputs without EOS, targets with EOS, the pretokenised
  text and the answer choices; `stats.train.json` claims the dataset's real
  size (`TRAIN_SIZES`), from which `tasks.p3` computes T0's rates.

  Args:
    fixture: where to write (`fixture.p3_dir`).
    datasets: the datasets.
    examples: task name -> `precache_examples(task)`.

  Returns:
    The folder names.
  """
  eos = 1
  folders = []
  for dataset, names in t0_task_names(datasets).items():
    for name in names:
      folder = f'{P3_PREFIXES.get(dataset, dataset)}_{eval_protocol.template_info(name)[1]}'
      records = [{
          'inputs': ex['inputs'].astype(np.int32),
          'targets': np.append(ex['targets'], eos).astype(np.int32),
          'inputs_pretokenized': ex['inputs_pretokenized'],
          'targets_pretokenized': ex['targets_pretokenized'],
          'answer_choices': np.asarray(ex['answer_choices'], object),
      } for ex in examples[name]]
      write_split(os.path.join(fixture.p3_dir, 'data', folder), 'train',
                  records, {'examples': TRAIN_SIZES[dataset]})
      folders.append(folder)
  return folders


def register_prerendered_mixture(
    datasets: Sequence[str],
    examples: Mapping[str, Sequence[Mapping[str, Any]]],
    name: str = PRERENDERED_MIXTURE) -> List[str]:
  """The T0 mixture's tasks, each starting from its rendered text.

  A task per `spt_t0` task, whose source holds that task's rendered
  `inputs`, `targets` and `prompt` strings in memory (its examples'
  `*_pretokenized` features) and which then tokenises and appends EOS as the
  `spt_t0` task does: the same examples, without rendering.
  """
  entries = []
  for dataset, names in t0_task_names(datasets).items():
    rate = t0_rate(dataset, len(names))
    for original in names:
      text = {key: [ex[f'{key}_pretokenized'] for ex in examples[original]]
              for key in ('inputs', 'targets', 'prompt')}

      def dataset_fn(split, shuffle_files, seed=None, text=text):
        del split, shuffle_files, seed  # One in-memory split.
        return tf.data.Dataset.from_tensor_slices(
            {k: tf.constant(v, tf.string) for k, v in text.items()})

      task_name = eval_protocol.task_name(
          PRERENDERED_COLLECTION, *eval_protocol.template_info(original))
      registry.add_task(
          task_name,
          source=seqio.FunctionDataSource(dataset_fn, splits=['train']),
          preprocessors=[seqio.preprocessors.tokenize,
                         seqio.CacheDatasetPlaceholder(),
                         seqio.preprocessors.append_eos_after_trim],
          output_features=seqio.get_mixture_or_task(original).output_features)
      entries.append((task_name, rate))
  registry.add_mixture(name, entries)
  return [n for n, _ in entries]


# --------------------------------------------------------------- Pipelines --


def train_batches(name: str, lengths: Mapping[str, int], prompt_length: int,
                  batch_size: int, seed: int = 0, use_cached: bool = False):
  """One host's training batches: `spt_jax.local.train_data.get_train_dataset`."""
  return train_data.get_train_dataset(
      name, dict(lengths), batch_size,
      functools.partial(feature_converters.SptEncDecFeatureConverter,
                        prompt_length=prompt_length),
      seed, shard_info=seqio.ShardInfo(0, 1), use_cached=use_cached)


def render_only_batches(datasets: Sequence[str], batch_size: int,
                        seed: int = 0):
  """The T0 mixture cut after rendering: source, template, mixed, batched.

  Each task's raw records (shuffled, repeated) through its first
  preprocessor (`tasks.preprocessors.apply_template`, the Jinja template in
  `tf.numpy_function`), sampled with T0's rates: what the pipeline can render
  per second, with nothing after it to share the cores with.
  """
  streams, rates = [], []
  for dataset, names in t0_task_names(datasets).items():
    for name in names:
      task = seqio.get_mixture_or_task(name)
      raw = task.source.get_dataset('train', shuffle=True, seed=seed)
      rendered = task.preprocessors[0](raw.repeat())
      streams.append(rendered.map(
          lambda ex: {k: ex[k] for k in ('inputs', 'targets', 'prompt')}))
      rates.append(float(t0_rate(dataset, len(names))))
  mixed = tf.data.Dataset.sample_from_datasets(
      streams, weights=np.asarray(rates) / np.sum(rates), seed=seed)
  return mixed.batch(batch_size, drop_remainder=True).prefetch(
      tf.data.AUTOTUNE)


class PipelineReader:
  """Reads the batches of one pipeline."""

  def __init__(self, dataset, batch_size: int):
    self.batch_size = batch_size
    self._iterator = dataset.as_numpy_iterator()

  def read(self, batches: int) -> List[Dict[str, np.ndarray]]:
    return [next(self._iterator) for _ in range(batches)]

  def timed(self, batches: int, drain: int):
    """Wall and CPU seconds of `batches` batches read after `drain` more.

    The drained batches, untimed, empty what the pipeline buffered while
    others were timed.
    """

    for _ in range(drain):
      next(self._iterator)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
      next(self._iterator)
    return common.Measured(time.perf_counter() - wall,
                           time.process_time() - cpu)


def render_ceiling(datasets: Sequence[str], seconds: float = 5.0,
                   seed: int = 0) -> Dict[str, float]:
  """Examples/s of `apply_template`'s Python work alone, in one thread.

  What its `render` does per example inside `tf.numpy_function` (numpy
  values to Python, the template, UTF-8 encoding), on raw records as tf.data
  hands them over, templates drawn with T0's rates. Timed by the thread's
  CPU clock: the GIL lets no more than one thread do this at a time, so no
  number of tf.data threads renders faster than `examples_per_cpu_s`.
  """
  work, weights = [], []
  for dataset, names in t0_task_names(datasets).items():
    source = seqio.get_mixture_or_task(names[0]).source
    raw = list(source.get_dataset('train', shuffle=False)
               .take(200).as_numpy_iterator())
    for name in names:
      template = seqio.get_mixture_or_task(name).preprocessors[0].keywords[
          'template']
      work.append((template, raw))
      weights.append(t0_rate(dataset, len(names)))
  weights = np.asarray(weights, float) / np.sum(weights)
  rng = np.random.default_rng(seed)
  count, chars, spent = 0, 0, 0.0
  while spent < seconds:
    template, raw = work[rng.choice(len(work), p=weights)]
    example = raw[rng.integers(len(raw))]
    flat = tf.nest.flatten(example)
    start = time.thread_time()
    value = preprocessors.to_python(tf.nest.pack_sequence_as(example, flat))
    rendered = template.render(value)
    if rendered is not None:
      encoded = [rendered.inputs.encode('utf-8'),
                 rendered.targets.encode('utf-8')]
      encoded += [c.encode('utf-8') for c in rendered.answer_choices]
      chars += len(encoded[0]) + len(encoded[1])
    spent += time.thread_time() - start
    count += 1
  return {'examples_per_cpu_s': count / spent,
          'cpu_us_per_example': 1e6 * spent / count,
          'rendered_chars_per_example': chars / count}


# ------------------------------------------------------------ Model steps ---


def model_steps(sizes: Sequence[str], batch: int, lengths: Mapping[str, int],
                ) -> Dict[str, Callable[[], Any]]:
  """`benchmarks.step_time`'s plain T5 1.1 training step at the lengths."""
  steps = {}
  for size in sizes:
    shapes = common.Shapes(size, batch, lengths['inputs'], lengths['targets'])
    cfg = config.t5_1_1_config(size)
    common.log(f'compiling the T5-{size} step')
    arrays = step_time.random_batch(shapes, cfg.vocab_size)
    params = step_time.backbone_params(cfg, shapes, 0)
    model = models.SptModel(network.SptTransformer(cfg, config.NO_SPT))
    compiled, state = step_time.compiled_step(
        model, trainer.adafactor(), params, arrays)
    steps[f'model_t5_{size}'] = common.stepper(compiled, state, arrays)
  return steps


# Peak dense bf16 FLOP/s of one accelerator, for the estimate.
PEAK_TFLOPS = {
    'H100/H200': 989.0,
    'TPU v4 chip': 275.0,
    'TPU v3 core': 61.5,
}


def accelerator_demand(lengths: Mapping[str, int], mfu: float,
                       accelerators: int = 8,
                       sizes: Sequence[str] = ('small', 'base', 'large', 'xl',
                                               'xxl'),
                       prefix: int = 40) -> List[Dict[str, Any]]:
  """Examples/s that `accelerators` chips would consume, from FLOPs.

  Training FLOPs per example (`common.t5_train_flops`, full fine-tuning;
  the encoder holds the inputs, the discrete prompt and SPT's `prefix`
  prepended positions) at `mfu` of each accelerator's peak. An estimate, not
  a measurement.
  """
  rows = []
  for size in sizes:
    cfg = config.t5_1_1_config(size)
    flops = common.t5_train_flops(
        cfg.emb_dim, cfg.num_heads, cfg.head_dim, cfg.mlp_dim,
        cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.vocab_size, 1,
        lengths['inputs'] + lengths.get('prompt', 0) + prefix,
        lengths['targets'])
    row = {'size': size, 'train_tflop_per_example': flops / 1e12}
    for name, peak in PEAK_TFLOPS.items():
      row[f'{accelerators}x {name}'] = accelerators * peak * 1e12 * mfu / flops
    rows.append(row)
  return rows


# ---------------------------------------------------------------- Measure ---

VARIANTS = ('t0', 't0_render_only', 't0_prerendered', 't0_cached', 'p3',
            'synthetic')


@dataclasses.dataclass
class Prepared:
  """The fixture and what was derived from it."""

  fixture: Fixture
  datasets: Sequence[str]
  task_names: List[str]
  seconds: Dict[str, float] = dataclasses.field(default_factory=dict)


def prepare(root: str, variants: Sequence[str], datasets: Sequence[str],
            records: int, cache_writer: str = 'in_process') -> Prepared:
  """Writes the fixture, and the P3 copy and SeqIO cache the variants need.

  Args:
    root: the fixture's folder.
    variants: the variants to measure.
    datasets: the T0 datasets.
    records: training records per dataset.
    cache_writer: 'beam' (`seqio.scripts.cache_tasks_main`) or 'in_process'
      (`write_cache_in_process`, the same cache).

  Returns:
    What was prepared, with the seconds each part took.
  """
  seconds = {}
  start = time.perf_counter()
  fixture = write_fixture(root, datasets, records)
  task_names = register_t0_mixture(datasets)
  seconds['fixture'] = time.perf_counter() - start
  prepared = Prepared(fixture, list(datasets), task_names, seconds=seconds)
  needs = set(variants)
  examples = {}
  if needs & {'t0_prerendered', 'p3'} or (
      't0_cached' in needs and cache_writer == 'in_process'):
    start = time.perf_counter()
    examples = {name: precache_examples(name) for name in task_names}
    seconds['precache_examples'] = time.perf_counter() - start
  if 't0_cached' in needs:
    common.log(f'caching {len(task_names)} tasks ({cache_writer})')
    start = time.perf_counter()
    if cache_writer == 'beam':
      write_cache_with_beam(fixture.cache_dir, task_names)
    else:
      write_cache_in_process(fixture.cache_dir, task_names, examples)
    seconds[f'cache_{cache_writer}'] = time.perf_counter() - start
  if 'p3' in needs:
    write_p3_fixture(fixture, datasets, examples)
  if 't0_prerendered' in needs:
    register_prerendered_mixture(datasets, examples)
  return prepared


def pipelines(prepared: Prepared, variants: Sequence[str], batch_size: int,
              seed: int = 0, lengths: Mapping[str, int] = T0_LENGTHS
              ) -> Dict[str, Any]:
  """The batched tf.data pipeline of each variant."""
  out = {}
  for variant in variants:
    if variant == 't0':
      out[variant] = train_batches(MIXTURE, lengths, lengths['prompt'],
                                   batch_size, seed)
    elif variant == 't0_render_only':
      out[variant] = render_only_batches(prepared.datasets, batch_size, seed)
    elif variant == 't0_prerendered':
      out[variant] = train_batches(PRERENDERED_MIXTURE, lengths,
                                   lengths['prompt'], batch_size, seed)
    elif variant == 't0_cached':
      seqio.add_global_cache_dirs([prepared.fixture.cache_dir])
      out[variant] = train_batches(MIXTURE, lengths, lengths['prompt'],
                                   batch_size, seed, use_cached=True)
    elif variant == 'p3':
      p3.mixtures.register(prepared.fixture.p3_dir, vocabulary=seqio.SentencePieceVocabulary(
          prepared.fixture.vocab_path, extra_ids=100))
      out[variant] = train_batches(
          p3.datasets.T0_TRAIN_MIXTURE, {k: v for k, v in lengths.items()
                                if k != 'prompt'}, 0, batch_size, seed)
    elif variant == 'synthetic':
      lengths_ = synthetic.SYNTHETIC_FEATURE_LENGTHS
      out[variant] = train_batches(synthetic.TRAIN_MIXTURE, lengths_,
                                   lengths_['prompt'], batch_size, seed)
    else:
      raise ValueError(f'Unknown variant {variant!r}; expected one of '
                       f'{VARIANTS}.')
  return out


def warm_up(readers: Mapping[str, PipelineReader], examples: int
            ) -> Dict[str, Dict[str, float]]:
  """Reads `examples` from each pipeline (filling its shuffle buffers)."""
  out = {}
  for name, reader in readers.items():
    start = time.perf_counter()
    reader.read(1)
    first = time.perf_counter() - start
    reader.read(max(0, -(-examples // reader.batch_size) - 1))
    out[name] = {'first_batch_s': first,
                 'warmup_s': time.perf_counter() - start}
    common.log(f'{name}: first batch after {first:.1f} s, {examples} examples '
               f'after {out[name]["warmup_s"]:.1f} s')
  return out


def measure(readers: Mapping[str, PipelineReader],
            steps: Mapping[str, Callable[[], Any]], step_batch: int,
            batches: int, drain: int, repeats: int, pause_s: float,
            ) -> List[Dict[str, Any]]:
  """Examples/s of every pipeline and model step, timed side by side."""
  fns = {name: functools.partial(reader.timed, batches, drain)
         for name, reader in readers.items()}
  fns.update(steps)
  times = common.time_interleaved(
      fns, repeats, jax.block_until_ready, warmup=1, pause_s=pause_s)
  rows = []
  for name, timing in times.items():
    summary = common.summarize(timing)
    examples = (readers[name].batch_size * batches if name in readers
                else step_batch)
    rows.append({
        'variant': name,
        'examples_per_call': examples,
        'examples_per_s': examples / summary['median_s'],
        'cpu_ms_per_example': 1e3 * summary['cpu_median_s'] / examples,
        'cores_busy': summary['cpu_median_s'] / summary['median_s'],
        **summary,
    })
  return rows


def ratios(rows: Sequence[Mapping[str, Any]]) -> Dict[str, Dict[str, float]]:
  """examples/s of each pipeline over t0, synthetic and each model step."""
  by_name = {r['variant']: r for r in rows}
  table = {}
  pipes = [n for n in by_name if not n.startswith('model_')]
  bases = [n for n in ('t0', 'synthetic') if n in by_name] + [
      n for n in by_name if n.startswith('model_')]
  for a in pipes:
    for b in bases:
      if a != b:
        table[f'{a}_over_{b}'] = {
            'examples_per_s': by_name[a]['examples_per_s']
                              / by_name[b]['examples_per_s'],
            'cpu_per_example': by_name[b]['cpu_ms_per_example']
                               / by_name[a]['cpu_ms_per_example'],
        }
  return table


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--variants', default=','.join(VARIANTS))
  parser.add_argument('--model_sizes', default='small,base',
                      help='T5 1.1 sizes whose step to time ("" for none).')
  parser.add_argument('--model_batch', type=int, default=2)
  parser.add_argument('--batch', type=int, default=32,
                      help="Pipeline batch (one host's rows).")
  parser.add_argument('--batches', type=int, default=40,
                      help='Timed batches per call.')
  parser.add_argument('--drain_batches', type=int, default=16)
  parser.add_argument('--warmup_examples', type=int, default=20_000)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--pause_s', type=float, default=3.0)
  parser.add_argument('--records', type=int, default=1000,
                      help='Fixture training records per dataset.')
  parser.add_argument('--datasets', default=','.join(TRAIN_SIZES))
  parser.add_argument('--cache_writer', default='in_process',
                      choices=('in_process', 'beam'),
                      help='How the t0_cached variant\'s cache is written '
                      '(write_cache_in_process).')
  parser.add_argument('--mfu', type=float, default=0.4,
                      help='Assumed MFU of the accelerator estimate.')
  parser.add_argument('--fixture_dir',
                      help='Where to write the fixture (default: a new '
                      'temporary folder).')
  args = parser.parse_args()
  variants = [v for v in args.variants.split(',') if v]
  datasets = [d for d in args.datasets.split(',') if d]
  sizes = [s for s in args.model_sizes.split(',') if s]


  root = args.fixture_dir or tempfile.mkdtemp(prefix='spt_input_pipeline_')
  common.log(f'writing the fixture to {root}')
  prepared = prepare(root, variants, datasets, args.records,
                     args.cache_writer)
  readers = {name: PipelineReader(ds, args.batch) for name, ds in
             pipelines(prepared, variants, args.batch).items()}
  warmup = warm_up(readers, args.warmup_examples)
  steps = model_steps(sizes, args.model_batch, T0_LENGTHS)
  ceiling = render_ceiling(datasets)
  common.log(f'render ceiling: {ceiling}')
  rows = measure(readers, steps, args.model_batch, args.batches,
                 args.drain_batches, args.repeats, args.pause_s)
  table = ratios(rows)
  demand = accelerator_demand(T0_LENGTHS, args.mfu)

  common.print_table(rows, ['variant', 'examples_per_s', 'median_s', 'min_s',
                            'cpu_ms_per_example', 'cores_busy'])
  print()
  common.print_table([{'ratio': k, **v} for k, v in table.items()])
  print(f'\nrender ceiling (one thread): {ceiling}\n')
  common.print_table(demand)
  path = common.write_results('input_pipeline', {
      'machine': common.machine(),
      'settings': vars(args),
      'fixture_seconds': prepared.seconds,
      'warmup': warmup,
      'rows': rows,
      'ratios': table,
      'render_ceiling': ceiling,
      'accelerator_demand': {'mfu': args.mfu, 'accelerators': 8,
                             'rows': demand},
  })
  common.log(f'wrote {path}')


if __name__ == '__main__':
  main()
