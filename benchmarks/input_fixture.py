"""The input pipeline benchmark's offline data: T0-style records and mixtures.

`write_fixture` writes, for 21 of T0's training datasets (those read from
local exports), JSON lines of generated text with each field at about its
dataset's typical length, and a SentencePiece vocabulary of the generated
words; `use_fixture` points our T0 tasks at them, and `register_t0_mixture`
mixes their prompted tasks at T0's rates (`benchmarks.input_pipeline`).
"""

import dataclasses
import json
import os
import re
from typing import Any, Dict, List, Optional, Sequence


import numpy as np
from sentencepiece import sentencepiece_model_pb2

from spt_jax import eval_protocol
from tasks import prompted
from tasks import registry
from tasks import t0

# The T0 tasks read their data and vocabulary from these (see `use_fixture`).
_DATA_ENV, _VOCAB_ENV = 'SPT_DATA_DIR', 'SPT_VOCAB_PATH'

_SYNTHETIC_VOCAB = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    'tasks',
    'data',
    'synthetic_spm.model',
)
T0_LENGTHS = {'inputs': 1024, 'targets': 256, 'prompt': 64}
MIXTURE = 'spt_bench_t0'
PRERENDERED_MIXTURE = 'spt_bench_t0_prerendered'
PRERENDERED_COLLECTION = 'spt_bench_prerendered'

# ----------------------------------------------------------------- Fixture --

# Approximate sizes of the datasets' training splits (their Hugging Face
# exports), used only for T0's mixing rates (`prompted.mixing_rate`).
TRAIN_SIZES = {
    'commonsense_qa': 9_741,
    'dream': 6_116,
    'quail': 10_246,
    'quartz': 2_696,
    'social_i_qa': 33_410,
    'wiqa': 29_808,
    'quarel': 1_941,
    'sciq': 11_679,
    'wiki_hop': 43_738,
    'adversarial_qa': 30_000,
    'quoref': 19_399,
    'duorc_selfrc': 60_721,
    'duorc_paraphraserc': 69_524,
    'ropes': 10_924,
    'hotpot_qa': 90_447,
    'wiki_qa': 20_360,
    'common_gen': 67_389,
    'amazon_polarity': 3_600_000,
    'app_reviews': 288_065,
    'rotten_tomatoes': 8_530,
    'dbpedia_14': 560_000,
}
# The P3 folder prefix of each (`tasks.p3.datasets.T0_DATASETS`).
P3_PREFIXES = {
    'commonsense_qa': 'cos_e_v1.11',
    'wiki_hop': 'wiki_hop_original',
    'adversarial_qa': 'adversarial_qa_dbidaf',
    'duorc_selfrc': 'duorc_SelfRC',
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
        list('aeiou')
    )
    morphemes, seen = [], set()
    while len(morphemes) < self.NUM_MORPHEMES:
      n = 4 * self.NUM_MORPHEMES
      syllables = [
          np.char.add(
              np.char.add(
                  consonants[rng.integers(18, size=n)],
                  vowels[rng.integers(5, size=n)],
              ),
              np.where(
                  rng.random(n) < 0.4, consonants[rng.integers(18, size=n)], ''
              ),
          )
          for _ in range(3)
      ]
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
    words += [
        ''.join(morphemes[k] for k in picks[i, : parts[i]])
        for i in range(extra)
    ]
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
      sentence = words[i : i + length]
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
  folder = os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      'tasks',
      'templates',
  )
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
  for ch in (
      'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'
      '0123456789.,?!\'"-_:;()/[]{}|'
  ):
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
  for generate in (_multiple_choice_record, _reading_or_other_record):
    record = generate(dataset, g)
    if record is not None:
      return record
  raise ValueError(f'No fixture generator for {dataset!r}.')


def _multiple_choice_record(
    dataset: str, g: TextGenerator
) -> Optional[Dict[str, Any]]:
  """A record of T0's multiple-choice QA datasets; None for the others."""
  text = g.text
  if dataset == 'commonsense_qa':
    labels = _labels(5)
    return {
        'question': text(13) + '?',
        'choices': {'label': labels, 'text': g.texts(5, 1.5)},
        'answerKey': g.pick(labels),
    }
  if dataset == 'dream':
    choices = g.texts(3, 5)
    return {
        'dialogue': g.texts(g.integer(4, 9), 14),
        'question': text(8) + '?',
        'choice': choices,
        'answer': g.pick(choices),
    }
  if dataset == 'quail':
    return {
        'context': text(320),
        'question': text(10) + '?',
        'answers': g.texts(4, 6),
        'correct_answer_id': g.integer(0, 3),
    }
  if dataset == 'quartz':
    return {
        'para': text(35),
        'question': text(20),
        'choices': {'label': ['A', 'B'], 'text': g.texts(2, 2)},
        'answerKey': g.pick(['A', 'B']),
    }
  if dataset == 'social_i_qa':
    return {
        'context': text(15),
        'question': text(7) + '?',
        'answerA': text(4),
        'answerB': text(4),
        'answerC': text(4),
        'label': g.pick(['1', '2', '3']),
    }
  if dataset == 'wiqa':
    return {
        'question_stem': text(12),
        'question_para_step': g.texts(g.integer(4, 9), 8),
        'answer_label': g.pick(['more', 'less', 'no_effect']),
    }
  if dataset == 'quarel':
    return {
        'question': text(40),
        'answer_index': g.integer(0, 1),
        'world_literals': {'world1': [text(2)], 'world2': [text(2)]},
    }
  if dataset == 'sciq':
    return {
        'question': text(14) + '?',
        'distractor1': text(2),
        'distractor2': text(2),
        'distractor3': text(2),
        'correct_answer': text(2),
        'support': text(80),
    }
  return None


def _reading_or_other_record(
    dataset: str, g: TextGenerator
) -> Optional[Dict[str, Any]]:
  """A record of the other T0 datasets (extractive QA, summaries,
  classification); None for the rest."""
  text = g.text
  if dataset == 'wiki_hop':
    candidates = g.texts(g.integer(2, 30), 2)
    relation = '_'.join(g.sample_words(g.integer(1, 3)))
    return {
        'question': f'{relation} {text(2)}',
        'candidates': candidates,
        'answer': g.pick(candidates),
        'supports': g.texts(g.integer(3, 25), 90),
    }
  if dataset in ('adversarial_qa', 'quoref'):
    context = 120 if dataset == 'adversarial_qa' else 330
    return {
        'title': text(3),
        'context': text(context),
        'question': text(12) + '?',
        'answers': {'text': [text(2.5)]},
    }
  if dataset in ('duorc_selfrc', 'duorc_paraphraserc'):
    plot = 580 if dataset == 'duorc_selfrc' else 900
    no_answer = g.rng.random() < 0.1
    return {
        'title': text(3),
        'plot': text(plot),
        'question': text(8) + '?',
        'answers': [] if no_answer else [text(3)],
        'no_answer': no_answer,
    }
  if dataset == 'ropes':
    return {
        'background': text(120),
        'situation': text(90),
        'question': text(15) + '?',
        'answers': {'text': [text(2)]},
    }
  if dataset == 'hotpot_qa':
    return {'question': text(18) + '?', 'answer': text(2)}
  if dataset == 'wiki_qa':
    return {
        'question': text(7) + '?',
        'answer': text(25),
        'document_title': text(2),
        'label': int(g.rng.random() < 0.05),
    }
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
  return None


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


def write_fixture(
    root: str,
    datasets: Sequence[str] = tuple(TRAIN_SIZES),
    records: int = 1000,
    seed: int = 0,
) -> Fixture:
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
      d: [
          eval_protocol.task_name(t0.COLLECTION, d, t.name)
          for t in by_name[d].template_collection.templates
      ]
      for d in datasets
  }


def t0_rate(dataset: str, num_templates: int) -> int:
  return prompted.mixing_rate(TRAIN_SIZES[dataset], num_templates)


def register_t0_mixture(
    datasets: Sequence[str], name: str = MIXTURE
) -> List[str]:
  """A mixture of the datasets' `spt_t0` tasks with T0's rates."""
  entries = []
  for dataset, names in t0_task_names(datasets).items():
    rate = t0_rate(dataset, len(names))
    entries += [(n, rate) for n in names]
  registry.add_mixture(name, entries)
  return [n for n, _ in entries]
