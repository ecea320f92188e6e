"""The study's benchmark (`spt_jax.study.compare`, `gin_configs/local/study/`).

The families of `tasks.synthetic`, with templates composed from two parts:
a frame shared by every family (`FRAMES`: "List: {words}. Give {task}.") and
a phrase naming the family's task (`PHRASES`: "the first word", "the word at
the start"). No frame tells the families apart, so a model has to read the
phrase; and a held-out template is an unseen pairing of a trained frame and
a trained phrase, or, for a held-out family, phrases that recombine trained
words ("the kind of the last word").

Each trained family (the i-th of `synthetic.FAMILIES`) trains on every frame
f, each with phrase (f + i) % 2 (8 templates, 56 in all); its held-out
templates are the other phrase with frames 0-3 (test, 4 per family) and
4-7 (dev, 4 per family). Held-out families are test only, with frames 0-3
and both phrases (8 each); the dev family `cipher_last`
(`synthetic.DEV_FAMILIES`) is dev only, with frames 4-7 and both phrases.
Templates are named `<frame>_<phrase a|b>`.

Hand-written paraphrases, each with its own wording, would let a model key
on frame words and answer a held-out paraphrase as the family whose
training templates share its frame: all or nothing per template
(docs/study/README.md, "Benchmark").

Registered (`STUDY_MIXTURES`):

* `spt_study_train`: `spt_study__<family>__<template>`, split `train`,
  `STUDY_TRAIN_EXAMPLES_PER_TASK` lists each (generation, exact match), and
  `validation` for probing what a training template retrieves;
* `spt_study_test` (44 templates) and `spt_study_dev` (36):
  `spt_study__<family>__<template>__score` (rank classification), split
  `validation`: `STUDY_EVAL_EXAMPLES_PER_TASK` lists of the evaluation pool
  per template, the dev ones drawn apart from the test ones (salt
  `DEV_SALT`).
"""

from typing import Mapping

import seqio

from spt_jax import eval_protocol
from tasks import prompt_templates
from tasks import registry
from tasks import synthetic
from tasks import vocab

STUDY_COLLECTION = 'spt_study'
STUDY_MIXTURES = {
    'train': 'spt_study_train',
    'dev': 'spt_study_dev',
    'test': 'spt_study_test',
}
# (name, jinja of the input with a `{task}` slot); frames 0-3 make the test
# templates, 4-7 the dev ones.
FRAMES = (
    ('give', 'List: {{ words }}. Give {task}.'),
    ('what_is', 'What is {task}? {{ words }}'),
    ('tell', 'Tell me {task} of {{ words }}.'),
    ('write', 'Write {task} for {{ words }}.'),
    ('reply', 'Words: {{ words }}. Reply with {task}.'),
    ('read', 'Read {{ words }} and say {task}.'),
    ('answer', 'Answer with {task}: {{ words }}'),
    ('find', 'Find {task} in {{ words }}.'),
)
TEST_FRAMES, DEV_FRAMES = FRAMES[:4], FRAMES[4:]
PHRASES = {
    'first': ('the first word', 'the word at the start'),
    'last': ('the last word', 'the word at the end'),
    'reverse': ('the words in reverse order', 'the words backwards'),
    'category_first': (
        'the category of the first word',
        'the kind of the first word',
    ),
    'count': ('the number of words', 'how many words'),
    'cipher': ('the words in secret code', 'the code of every word'),
    'has_color': ('yes if a color is there', 'whether there is a color'),
    # Held out: `category_first`'s and `last`'s words; `cipher`'s and
    # `first`'s; the dev family, `cipher`'s and `last`'s.
    'category_last': (
        'the category of the last word',
        'the kind of the last word',
    ),
    'cipher_first': (
        'the first word in secret code',
        'the code of the first word',
    ),
    'cipher_last': (
        'the last word in secret code',
        'the code of the last word',
    ),
}
PHRASE_NAMES = ('a', 'b')
STUDY_TRAIN_EXAMPLES_PER_TASK = 768
STUDY_EVAL_EXAMPLES_PER_TASK = 128
DEV_SALT = 'dev'


def study_template(
    family: str, frame: int, phrase: int
) -> prompt_templates.Template:
  """The template of `FRAMES[frame]` with the family's `phrase`-th phrase."""
  frame_name, jinja = FRAMES[frame]
  return prompt_templates.Template(
      name=f'{frame_name}_{PHRASE_NAMES[phrase]}',
      jinja=jinja.replace('{task}', PHRASES[family][phrase])
      + ' ||| {{ answer }}',
      answer_choices="{{ choices | join(' ||| ') }}",
  )


def study_templates(family: synthetic.Family) -> dict[str, list]:
  """The family's templates by study role: 'train', 'dev', 'test'."""
  frames = range(len(FRAMES))
  test = range(len(TEST_FRAMES))
  dev = range(len(TEST_FRAMES), len(FRAMES))
  both = range(len(PHRASES[family.name]))
  if family in synthetic.DEV_FAMILIES:
    roles = {'dev': [(f, p) for f in dev for p in both]}
  elif family.heldout:
    roles = {'test': [(f, p) for f in test for p in both]}
  else:
    i = synthetic.FAMILIES.index(family)
    trained = {f: (f + i) % 2 for f in frames}
    roles = {
        'train': list(trained.items()),
        'test': [(f, 1 - trained[f]) for f in test],
        'dev': [(f, 1 - trained[f]) for f in dev],
    }
  return {
      role: [study_template(family.name, f, p) for f, p in pairs]
      for role, pairs in roles.items()
  }


def _register_study_task(
    family: str,
    template: prompt_templates.Template,
    role: str,
    features: Mapping[str, seqio.Feature],
) -> str:
  """Registers a training task, or a dev or test rank-classification task."""
  score = role != 'train'
  name = eval_protocol.task_name(
      STUDY_COLLECTION, family, template.name, score=score
  )
  if score:
    source = synthetic.SyntheticSource(
        family,
        template.name,
        ('validation',),
        validation_examples=STUDY_EVAL_EXAMPLES_PER_TASK,
        validation_salt=DEV_SALT if role == 'dev' else '',
    )
  else:
    # `validation`: probes of the training templates' retrieval.
    source = synthetic.SyntheticSource(
        family,
        template.name,
        validation_examples=STUDY_EVAL_EXAMPLES_PER_TASK,
        train_examples=STUDY_TRAIN_EXAMPLES_PER_TASK,
    )
  synthetic.add_template_task(name, source, template, score, features)
  return name


def register_study() -> None:
  """Registers the study's tasks and mixtures (`STUDY_MIXTURES`; idempotent)."""
  features = vocab.output_features(vocab.synthetic_vocabulary())
  names = {role: [] for role in STUDY_MIXTURES}
  for family in synthetic.FAMILIES + synthetic.DEV_FAMILIES:
    for role, templates in study_templates(family).items():
      for template in templates:
        names[role].append(
            _register_study_task(family.name, template, role, features)
        )
  for role, mixture in STUDY_MIXTURES.items():
    registry.add_mixture(mixture, names[role], default_rate=1.0)


register_study()
