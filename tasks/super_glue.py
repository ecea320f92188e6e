"""SuperGLUE, prompted, for fine-tuning after SPT pretraining on GLUE.

Registered names:

* `spt_super_glue__<dataset>__<template>` for dataset in super_glue_boolq,
  super_glue_cb, super_glue_copa, super_glue_multirc, super_glue_record,
  super_glue_rte, super_glue_wic, super_glue_wsc: splits `train` and
  `validation`, scored with SuperGLUE's metrics on the generated answers:
  accuracy (BoolQ, COPA, RTE, WiC, WSC), accuracy and macro-F1 (CB), F1 over
  answers and exact match per question (MultiRC), max-over-answers exact match
  and token F1 (ReCoRD).
* `spt_super_glue_<dataset>`: the fine-tuning mixture of one dataset (all its
  templates, equal rates), e.g. `spt_super_glue_boolq`.
* `spt_super_glue`: all of them, example-proportional (capped as in T0).
"""

import functools
from typing import Any, Callable, Mapping, Sequence

from tasks import metrics
from tasks import prompt_templates
from tasks import prompted
from tasks import registry
from tasks import sources
from tasks import vocab

COLLECTION = 'spt_super_glue'
MIXTURE = 'spt_super_glue'
FEATURE_LENGTHS = {'inputs': 512, 'targets': 32, 'prompt': 64}

_SPLITS = {'train': 'train', 'validation': 'validation'}

Template = prompt_templates.Template


def _labels(template: Template) -> Callable[..., Any]:
  return functools.partial(
      metrics.choice_index, answer_choices=template.fixed_answer_choices
  )


def _multirc(template: Template) -> Callable[..., Any]:
  return functools.partial(
      metrics.multirc_postprocessor,
      answer_choices=template.fixed_answer_choices,
  )


# config -> (postprocessor of a template, metric functions, raw features the
# metrics need).
_CONFIGS: Mapping[
    str, tuple[Callable[[Template], Any], Sequence[Any], Mapping[str, str]]
] = {
    'boolq': (_labels, (metrics.accuracy,), {}),
    'cb': (_labels, (metrics.accuracy, metrics.macro_f1(3)), {}),
    'copa': (lambda _: metrics.normalized_text, (metrics.accuracy,), {}),
    'multirc': (
        _multirc,
        (metrics.multirc,),
        {'paragraph_idx': 'idx.paragraph', 'question_idx': 'idx.question'},
    ),
    'record': (
        lambda _: metrics.record_postprocessor,
        (metrics.squad,),
        {'answers': 'answers'},
    ),
    'rte': (_labels, (metrics.accuracy,), {}),
    'wic': (_labels, (metrics.accuracy,), {}),
    'wsc': (_labels, (metrics.accuracy,), {}),
}

DATASETS = tuple(
    prompted.PromptedDataset(
        name=f'super_glue_{config}',
        source=sources.TfdsSource(
            'super_glue/{}:1.0.2'.format(
                'wsc.fixed' if config == 'wsc' else config
            ),
            _SPLITS,
        ),
        templates=f'super_glue_{config}',
        keep_features=keep,
    )
    for config, (_, _, keep) in _CONFIGS.items()
)


def register() -> None:
  """Registers the SuperGLUE tasks and mixtures (idempotent)."""
  features = vocab.output_features(vocab.t5_vocabulary())
  everything = []
  for dataset in DATASETS:
    config = dataset.name[len('super_glue_') :]
    postprocess_fn, metric_fns, _ = _CONFIGS[config]
    names = prompted.register(
        COLLECTION,
        dataset,
        features,
        postprocess_fn=postprocess_fn,
        metric_fns=metric_fns,
    )
    registry.add_mixture(f'{MIXTURE}_{config}', names, default_rate=1.0)
    rate = prompted.lazy_mixing_rate(dataset.source, len(names))
    everything.extend((name, rate) for name in names)
  registry.add_mixture(MIXTURE, everything)


register()
