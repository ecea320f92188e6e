"""The study's tasks (`spt_jax.study.compare`, `gin_configs/local/study/`).

Per trained family of `tasks.synthetic`, a `synthetic_study_<family>.json`
of new paraphrases that recombine the family's trained instruction words:
one dev template and two test ones (`heldout_templates`), and a dev family
`cipher_last` (`cipher` + `last`, `synthetic.DEV_FAMILIES`, outside
`synthetic.FAMILIES` and the vocabulary's corpus). The study trains on the
same 28 templates and registers `spt_study__<family>__<template>__score`:

* `spt_study_test`: the 7 held-out templates above, the 14 new test
  templates and the 2 held-out families (29 templates), each
  `STUDY_TEST_EXAMPLES_PER_TASK` lists of the evaluation pool;
* `spt_study_dev`: the 7 dev templates and `cipher_last` (11), each
  `STUDY_DEV_EXAMPLES_PER_TASK` other lists of that pool (salt `DEV_SALT`),
  on which settings are chosen;
* the frozen-backbone setting's families A (`spt_study_train_a`) and B
  (`spt_study_train_b`, `spt_study_test_b`: B's test templates and the
  held-out families, `spt_study_dev_b`).
"""

from typing import Mapping

import seqio

from spt_jax import eval_protocol
from tasks import metrics
from tasks import prompt_templates
from tasks import prompted
from tasks import registry
from tasks import synthetic
from tasks import vocab

# SPT against its baselines on larger held-out sets, with settings chosen on
# a dev set kept apart from them.
STUDY_COLLECTION = 'spt_study'
STUDY_MIXTURES = {
    'train': 'spt_study_train',  # = spt_synthetic_train
    'train_a': 'spt_study_train_a',  # the frozen backbone's families
    'train_b': 'spt_study_train_b',  # the families adapted on it
    'dev': 'spt_study_dev',
    'dev_b': 'spt_study_dev_b',
    'test': 'spt_study_test',
    'test_b': 'spt_study_test_b',
}
STUDY_FAMILIES_A = ('last', 'reverse', 'count', 'category_first')
STUDY_FAMILIES_B = ('first', 'cipher', 'has_color')
STUDY_TEST_EXAMPLES_PER_TASK = 256
STUDY_DEV_EXAMPLES_PER_TASK = 256
DEV_SALT = 'dev'


def study_templates(family: str) -> prompt_templates.TemplateCollection:
  """A family's study templates: dev ones, and test ones (`heldout`)."""
  return prompt_templates.load(f'synthetic_study_{family}')


def study_template_roles(family: synthetic.Family) -> dict[str, list[str]]:
  """The family's template names by study role: 'train', 'dev', 'test'.

  Trained families train on their seen templates, are tested on their
  held-out template and the study file's held-out ones, and tuned on the
  study file's others. Held-out families are test only; dev families dev only.
  """
  if family in synthetic.DEV_FAMILIES:
    return {'train': [], 'dev': study_templates(family.name).names, 'test': []}
  if family.heldout:
    return {'train': [], 'dev': [], 'test': family.templates.names}
  extra = study_templates(family.name)
  return {
      'train': family.templates.seen,
      'dev': extra.seen,
      'test': list(family.templates.heldout) + list(extra.heldout),
  }


def _study_template(family: str, name: str) -> prompt_templates.Template:
  """A template of the family's own file, or else of its study file."""
  spec = synthetic.FAMILIES_BY_NAME[family]
  if spec in synthetic.FAMILIES and name in spec.templates.names:
    return spec.templates[name]
  return study_templates(family)[name]


def _register_study_task(
    family: str, template: str, role: str, features: Mapping[str, seqio.Feature]
) -> str:
  """Registers a dev or test rank-classification task of the study."""
  name = eval_protocol.task_name(STUDY_COLLECTION, family, template, score=True)
  registry.add_task(
      name,
      source=synthetic.SyntheticSource(
          family,
          template,
          ('validation',),
          validation_examples=(
              STUDY_TEST_EXAMPLES_PER_TASK
              if role == 'test'
              else STUDY_DEV_EXAMPLES_PER_TASK
          ),
          validation_salt=DEV_SALT if role == 'dev' else '',
      ),
      preprocessors=prompted.preprocessors_for(
          _study_template(family, template), score=True
      ),
      output_features=features,
      postprocess_fn=metrics.rank_classification_postprocessor,
      metric_fns=[eval_protocol.rank_classification_accuracy],
  )
  return name


def register_study() -> None:
  """Registers the study's mixtures (`STUDY_MIXTURES`; idempotent)."""
  features = vocab.output_features(vocab.synthetic_vocabulary())
  names = {role: {} for role in ('train', 'dev', 'test')}
  for family in synthetic.FAMILIES + synthetic.DEV_FAMILIES:
    for role, templates in study_template_roles(family).items():
      for template in templates:
        if role == 'train':
          name = eval_protocol.task_name(
              synthetic.COLLECTION, family.name, template
          )
        else:
          name = _register_study_task(family.name, template, role, features)
        names[role].setdefault(family.name, []).append(name)

  def pick(role, families=None):
    return [
        n
        for f, ns in names[role].items()
        if families is None
        or f in families
        or synthetic.FAMILIES_BY_NAME[f].heldout
        for n in ns
    ]

  mixtures = {
      STUDY_MIXTURES['train']: pick('train'),
      STUDY_MIXTURES['train_a']: pick('train', STUDY_FAMILIES_A),
      STUDY_MIXTURES['train_b']: pick('train', STUDY_FAMILIES_B),
      STUDY_MIXTURES['dev']: pick('dev'),
      STUDY_MIXTURES['dev_b']: pick('dev', STUDY_FAMILIES_B),
      STUDY_MIXTURES['test']: pick('test'),
      STUDY_MIXTURES['test_b']: pick('test', STUDY_FAMILIES_B),
  }
  for mixture, tasks in mixtures.items():
    registry.add_mixture(mixture, tasks, default_rate=1.0)


register_study()
