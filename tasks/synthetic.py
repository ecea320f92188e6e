"""An offline multitask prompted mixture on which retrieval of memories matters.

Every example is a list of 3-5 distinct words from a 40-word lexicon (ten
animals, colors, fruits and tools). Nine task families transform the same
kind of list, so the task is given only by the instruction's wording:

  family          answer                                    choices (rank eval)
  first           the first word                            4
  last            the last word                             4
  reverse         the words in reverse order                4
  category_first  the category of the first word            4 (the categories)
  count           the number of words, spelled              4
  cipher          every word through a fixed secret code    4
  has_color       yes / no: is a color among the words      2
  category_last   (held out) the category of the last word  4 (the categories)
  cipher_first    (held out) the code of the first word     4

Distractor choices are the answers of confusable tasks on the same list (the
last word for `first`, the plain words for `cipher`, the category of the first
word for `category_last`, ...), so choosing well needs the instruction.
Templates (`tasks/templates/synthetic_<family>.json`, five per trained family,
four per held-out family) are paraphrases sharing their key words, so the
pooled instruction of an unseen paraphrase lies near the seen ones. One
template of every trained family is held out (zero-shot template
generalisation); the two held-out families compose trained instructions
(`category_first` + `last`, `cipher` + `first`), where retrieving the right
memories should help.

Data is generated deterministically from `SEED`; no download. A list belongs
to the evaluation pool when crc32(list) % `EVAL_POOL_MODULUS` == 0 and to the
training pool otherwise, so no evaluation example shares its words with any
training example. Split `train` draws `TRAIN_EXAMPLES_PER_TASK` lists per task
(seeded by template, so templates see different lists); split `validation`
draws `VALIDATION_EXAMPLES_PER_TASK` lists per family (the same lists for every
template of a family).

Registered names (naming scheme in `tasks.registry`):

* `spt_synthetic__<family>__<template>` (generation, exact-match accuracy):
  seen templates of trained families with splits `train` and `validation`;
  held-out templates and families with split `validation`.
* `spt_synthetic__<family>__<template>__score` (rank classification,
  split `validation`) for every template.
* Mixtures: `spt_synthetic_train` (7 families x 4 seen templates, equal
  rates); `spt_synthetic_seen` (their `__score` tasks);
  `spt_synthetic_heldout_templates` (the 7 held-out templates, `__score`);
  `spt_synthetic_heldout_tasks` (the 2 held-out families, 8 templates,
  `__score`); `spt_synthetic_heldout` (both); `spt_synthetic_heldout_gen`
  (both, generation).

The study's tasks over these families are `tasks.synthetic_study`'s
(`DEV_FAMILIES` are its own).

`SYNTHETIC_FEATURE_LENGTHS` fits every example without truncation with the
committed vocabulary (`tasks/data/synthetic_spm.model`, `tasks.build_vocab`).
"""

import dataclasses
import random
import zlib
from typing import Callable, Mapping, Optional, Sequence

import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from spt_jax import eval_protocol
from tasks import metrics
from tasks import prompt_templates
from tasks import prompted
from tasks import registry
from tasks import vocab

COLLECTION = 'spt_synthetic'
TRAIN_MIXTURE = 'spt_synthetic_train'
SEEN_MIXTURE = 'spt_synthetic_seen'
HELDOUT_TEMPLATES_MIXTURE = 'spt_synthetic_heldout_templates'
HELDOUT_TASKS_MIXTURE = 'spt_synthetic_heldout_tasks'
HELDOUT_MIXTURE = 'spt_synthetic_heldout'
HELDOUT_GEN_MIXTURE = 'spt_synthetic_heldout_gen'

SYNTHETIC_FEATURE_LENGTHS = {'inputs': 48, 'targets': 8, 'prompt': 16}

SEED = 20221219
EVAL_POOL_MODULUS = 8
TRAIN_EXAMPLES_PER_TASK = 2048
VALIDATION_EXAMPLES_PER_TASK = 128
MIN_WORDS, MAX_WORDS = 3, 5

LEXICON = {
    'animal': (
        'cat',
        'dog',
        'cow',
        'fox',
        'owl',
        'pig',
        'hen',
        'bee',
        'ant',
        'rat',
    ),
    'color': (
        'red',
        'blue',
        'green',
        'pink',
        'gray',
        'gold',
        'black',
        'white',
        'brown',
        'purple',
    ),
    'fruit': (
        'apple',
        'pear',
        'plum',
        'lime',
        'fig',
        'kiwi',
        'grape',
        'mango',
        'peach',
        'lemon',
    ),
    'tool': (
        'saw',
        'axe',
        'drill',
        'hammer',
        'wrench',
        'rake',
        'hoe',
        'chisel',
        'pliers',
        'shovel',
    ),
}
WORDS = tuple(w for words in LEXICON.values() for w in words)
CATEGORY = {w: c for c, words in LEXICON.items() for w in words}
# The secret code: each word maps to the word 17 places further in `WORDS`.
CIPHER = {w: WORDS[(i + 17) % len(WORDS)] for i, w in enumerate(WORDS)}
NUMBERS = ('two', 'three', 'four', 'five', 'six')


def in_eval_pool(words: Sequence[str]) -> bool:
  """Whether a word list belongs to the evaluation pool (else training)."""
  return zlib.crc32(' '.join(words).encode('utf-8')) % EVAL_POOL_MODULUS == 0


def _code(words: Sequence[str]) -> str:
  return ' '.join(CIPHER[w] for w in words)


def _outside(words: Sequence[str], rng: random.Random) -> list[str]:
  """Lexicon words not in the list, shuffled."""
  others = [w for w in WORDS if w not in words]
  rng.shuffle(others)
  return others


def _other_categories(word: str) -> list[str]:
  return [c for c in LEXICON if c != CATEGORY[word]]


def _has_color(words: Sequence[str]) -> str:
  return 'yes' if any(CATEGORY[w] == 'color' for w in words) else 'no'


@dataclasses.dataclass(frozen=True)
class Family:
  """A task family: the answer and the distractors of a word list.

  Attributes:
    name: the family's name (its templates: `synthetic_<name>.json`).
    answer: words -> the answer.
    distractors: (words, rng) -> wrong answers, most confusable first (may
      repeat each other or the answer; duplicates are dropped).
    num_choices: the number of answer choices of rank classification.
    heldout: whether the whole family is held out of training.
  """

  name: str
  answer: Callable[[Sequence[str]], str]
  distractors: Callable[[Sequence[str], random.Random], list[str]]
  num_choices: int = 4
  heldout: bool = False

  @property
  def templates(self) -> prompt_templates.TemplateCollection:
    return prompt_templates.load(f'synthetic_{self.name}')


FAMILIES = (
    Family(
        'first',
        lambda w: w[0],
        lambda w, rng: [w[-1], *w[1:-1], *_outside(w, rng)],
    ),
    Family(
        'last',
        lambda w: w[-1],
        lambda w, rng: [w[0], *w[-2:0:-1], *_outside(w, rng)],
    ),
    Family(
        'reverse',
        lambda w: ' '.join(reversed(w)),
        lambda w, rng: [
            ' '.join(w),
            ' '.join([*w[1:], w[0]]),
            ' '.join([w[1], w[0], *w[2:]]),
        ],
    ),
    Family(
        'category_first',
        lambda w: CATEGORY[w[0]],
        lambda w, rng: _other_categories(w[0]),
    ),
    Family(
        'count',
        lambda w: NUMBERS[len(w) - 2],
        lambda w, rng: rng.sample(NUMBERS, len(NUMBERS)),
    ),
    Family(
        'cipher',
        _code,
        lambda w, rng: [
            ' '.join(w),
            _code(w[::-1]),
            ' '.join([w[0], _code(w[1:])]),
        ],
    ),
    Family(
        'has_color',
        _has_color,
        lambda w, rng: ['no' if _has_color(w) == 'yes' else 'yes'],
        num_choices=2,
    ),
    Family(
        'category_last',
        lambda w: CATEGORY[w[-1]],
        lambda w, rng: _other_categories(w[-1]),
        heldout=True,
    ),
    Family(
        'cipher_first',
        lambda w: CIPHER[w[0]],
        lambda w, rng: [
            w[0],
            CIPHER[w[-1]],
            CIPHER[w[1]],
            *(CIPHER[x] for x in _outside(w, rng)),
        ],
        heldout=True,
    ),
)
# The study's dev family: composes trained instruction words (`cipher` +
# `last`) like the held-out families, for choosing settings without looking at
# them. Kept out of FAMILIES (and so of the vocabulary's corpus).
DEV_FAMILIES = (
    Family(
        'cipher_last',
        lambda w: CIPHER[w[-1]],
        lambda w, rng: [
            w[-1],
            CIPHER[w[0]],
            CIPHER[w[-2]],
            *(CIPHER[x] for x in _outside(w, rng)),
        ],
        heldout=True,
    ),
)
FAMILIES_BY_NAME = {f.name: f for f in FAMILIES + DEV_FAMILIES}


def _sample_words(family: str, rng: random.Random) -> list[str]:
  size = rng.randint(MIN_WORDS, MAX_WORDS)
  if family != 'has_color':
    return rng.sample(WORDS, size)
  # Balance yes/no: half the lists avoid colors altogether.
  if rng.random() < 0.5:
    return rng.sample([w for w in WORDS if CATEGORY[w] != 'color'], size)
  words = rng.sample(WORDS, size - 1)
  color = rng.choice([w for w in LEXICON['color'] if w not in words])
  words.insert(rng.randrange(size), color)
  return words


def make_example(
    family: str, split: str, index: int, salt: str = ''
) -> dict[str, object]:
  """The `index`-th example of a family in a split (deterministic).

  Args:
    family: a family name.
    split: 'train' (training pool) or 'validation' (evaluation pool).
    index: the example's index.
    salt: distinguishes the streams of a family's templates.

  Returns:
    {'words': str (space separated), 'answer': str, 'choices': list[str]
    (the answer among distractors, shuffled)}.
  """
  want_eval = split != tfds.Split.TRAIN
  rng = random.Random(f'{SEED}/{family}/{split}/{salt}/{index}')
  while True:
    words = _sample_words(family, rng)
    if in_eval_pool(words) == want_eval:
      break
  spec = FAMILIES_BY_NAME[family]
  answer = spec.answer(words)
  distractors = [
      d for d in dict.fromkeys(spec.distractors(words, rng)) if d != answer
  ]
  choices = [answer, *distractors[: spec.num_choices - 1]]
  rng.shuffle(choices)
  return {'words': ' '.join(words), 'answer': answer, 'choices': choices}


class SyntheticSource(seqio.DataSource):
  """Generated examples of one family (and template stream) of the mixture."""

  def __init__(
      self,
      family: str,
      template: str,
      splits: Sequence[str] = ('train', 'validation'),
      validation_examples: int = VALIDATION_EXAMPLES_PER_TASK,
      validation_salt: str = '',
      train_examples: int = TRAIN_EXAMPLES_PER_TASK,
  ):
    """Constructor.

    Args:
      family: the family.
      template: the template whose `train` stream to generate (validation
        lists are shared by all templates of the family).
      splits: the splits to offer.
      validation_examples: the size of the `validation` split.
      validation_salt: names the stream of `validation` lists; another salt
        draws other lists of the evaluation pool (the study's dev set).
      train_examples: the size of the `train` split.
    """
    sizes = {
        'train': train_examples,
        'validation': validation_examples,
    }
    super().__init__(
        splits=splits, num_input_examples={s: sizes[s] for s in splits}
    )
    self._family = family
    self._template = template
    self._validation_salt = validation_salt

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def __repr__(self) -> str:
    return (
        f'{type(self).__name__}(family={self._family!r}, '
        f'template={self._template!r}, splits={self.splits})'
    )

  def examples(
      self, split: str, shard_index: int = 0, num_shards: int = 1
  ) -> list[dict[str, object]]:
    """The split's examples (see `make_example`), optionally one shard."""
    salt = (
        self._template if split == tfds.Split.TRAIN else self._validation_salt
    )
    return [
        make_example(self._family, split, index, salt)
        for index in range(
            shard_index, self.num_input_examples(split), num_shards
        )
    ]

  def get_dataset(
      self,
      split: str = tfds.Split.TRAIN,
      shuffle: bool = True,
      seed: Optional[int] = None,
      shard_info: Optional[seqio.ShardInfo] = None,
      *,
      sequence_length: Optional[Mapping[str, int]] = None,
      use_cached: bool = False,
      num_epochs: Optional[int] = 1,
  ) -> tf.data.Dataset:
    """Raw examples: `words`, `answer` string [] and `choices` string [C].

    The examples are generated when this is called (about 30 us each) and
    served from memory.
    """
    del shuffle, seed, sequence_length, use_cached, num_epochs  # Unused.
    if split not in self.splits:
      raise ValueError(f'Split {split!r} not in {self.splits}.')
    shard = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
    examples = self.examples(split, *shard)
    choices = tf.RaggedTensor.from_row_lengths(
        tf.constant([c for e in examples for c in e['choices']], tf.string),
        [len(e['choices']) for e in examples],
    )
    return tf.data.Dataset.from_tensor_slices(
        {
            'words': tf.constant([e['words'] for e in examples], tf.string),
            'answer': tf.constant([e['answer'] for e in examples], tf.string),
            'choices': choices,
        }
    )


def add_template_task(
    name: str,
    source: seqio.DataSource,
    template: prompt_templates.Template,
    score: bool,
    features: Mapping[str, seqio.Feature],
) -> None:
  """Registers `template`'s task: its answer as text, or (`score`) its
  rank classification over the choices."""
  registry.add_task(
      name,
      source=source,
      preprocessors=prompted.preprocessors_for(template, score),
      output_features=features,
      postprocess_fn=(
          metrics.rank_classification_postprocessor
          if score
          else metrics.normalized_text
      ),
      metric_fns=[
          eval_protocol.rank_classification_accuracy
          if score
          else metrics.accuracy
      ],
  )


def _register_family(
    family: Family, features: Mapping[str, seqio.Feature]
) -> dict[str, list[str]]:
  """Registers a family's tasks; returns their names by role."""
  names = {'train': [], 'seen': [], 'heldout': [], 'heldout_gen': []}
  collection = family.templates
  for template in collection.templates:
    seen = not family.heldout and template.name not in collection.heldout
    splits = ('train', 'validation') if seen else ('validation',)
    for score in (False, True):
      name = eval_protocol.task_name(
          COLLECTION, family.name, template.name, score
      )
      source = SyntheticSource(
          family.name, template.name, ('validation',) if score else splits
      )
      add_template_task(name, source, template, score, features)
      if seen:
        names['seen' if score else 'train'].append(name)
      else:
        names['heldout' if score else 'heldout_gen'].append(name)
  return names


def register() -> None:
  """Registers the synthetic tasks and mixtures (idempotent)."""
  features = vocab.output_features(vocab.synthetic_vocabulary())
  by_role = {}
  heldout_tasks = []
  for family in FAMILIES:
    names = _register_family(family, features)
    for role, role_names in names.items():
      by_role.setdefault(role, []).extend(role_names)
    if family.heldout:
      heldout_tasks.extend(names['heldout'])
  heldout_templates = [n for n in by_role['heldout'] if n not in heldout_tasks]
  registry.add_mixture(TRAIN_MIXTURE, by_role['train'], default_rate=1.0)
  registry.add_mixture(SEEN_MIXTURE, by_role['seen'], default_rate=1.0)
  registry.add_mixture(
      HELDOUT_TEMPLATES_MIXTURE, heldout_templates, default_rate=1.0
  )
  registry.add_mixture(HELDOUT_TASKS_MIXTURE, heldout_tasks, default_rate=1.0)
  registry.add_mixture(HELDOUT_MIXTURE, by_role['heldout'], default_rate=1.0)
  registry.add_mixture(
      HELDOUT_GEN_MIXTURE, by_role['heldout_gen'], default_rate=1.0
  )


register()
