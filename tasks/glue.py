"""GLUE, prompted, for SPT pretraining (before SuperGLUE fine-tuning).

Registered names:

* `spt_glue__<dataset>__<template>` for dataset in glue_cola, glue_sst2,
  glue_mrpc, glue_qqp, glue_stsb, glue_mnli, glue_qnli, glue_rte, glue_wnli:
  splits `train` and `validation` (MNLI: `validation` is matched, plus
  `validation_mismatched`). Predictions are mapped back to labels and scored
  with GLUE's metrics: CoLA Matthews correlation; MRPC and QQP F1 and
  accuracy; STS-B Pearson and Spearman correlations; accuracy otherwise.
* `spt_glue_<config>`: the templates of one GLUE dataset, equally mixed.
* `spt_glue`: their mixture, example-proportional (capped as in T0).
"""
import functools
from typing import Any, Callable

from tasks import metrics
from tasks import prompt_templates
from tasks import prompted
from tasks import registry
from tasks import sources
from tasks import vocab

COLLECTION = 'spt_glue'
MIXTURE = 'spt_glue'
FEATURE_LENGTHS = {'inputs': 512, 'targets': 16, 'prompt': 64}

_SPLITS = {'train': 'train', 'validation': 'validation'}
_MNLI_SPLITS = {'train': 'train', 'validation': 'validation_matched',
                'validation_mismatched': 'validation_mismatched'}

# GLUE config -> (training examples, metric functions on label indices).
_CONFIGS = {
    'cola': (8_551, (metrics.matthews_corrcoef, metrics.accuracy)),
    'sst2': (67_349, (metrics.accuracy,)),
    'mrpc': (3_668, (metrics.f1, metrics.accuracy)),
    'qqp': (363_846, (metrics.f1, metrics.accuracy)),
    'stsb': (5_749, (metrics.correlations,)),
    'mnli': (392_702, (metrics.accuracy,)),
    'qnli': (104_743, (metrics.accuracy,)),
    'rte': (2_490, (metrics.accuracy,)),
    'wnli': (635, (metrics.accuracy,)),
}

DATASETS = tuple(
    prompted.PromptedDataset(
        name=f'glue_{config}',
        source=sources.TfdsSource(
            f'glue/{config}:2.0.0', _MNLI_SPLITS if config == 'mnli' else
            _SPLITS),
        templates=f'glue_{config}',
        train_examples=size)
    for config, (size, _) in _CONFIGS.items())


def label_postprocessor(
    template: prompt_templates.Template) -> Callable[..., Any]:
  """Text -> label index among the template's choices (STS-B: a float)."""
  if template.fixed_answer_choices is None:
    return metrics.string_to_float
  return functools.partial(
      metrics.choice_index, answer_choices=template.fixed_answer_choices)


def register() -> None:
  """Registers the GLUE tasks and mixtures (idempotent)."""
  features = vocab.output_features(vocab.t5_vocabulary())
  mixture = []
  for dataset in DATASETS:
    config = dataset.name[len('glue_'):]
    metric_fns = _CONFIGS[config][1]
    names = prompted.register(
        COLLECTION, dataset, features,
        postprocess_fn=label_postprocessor,
        metric_fns=metric_fns)
    registry.add_mixture(f'{MIXTURE}_{config}', names, default_rate=1.0)
    rate = prompted.mixing_rate(dataset.train_examples, len(names))
    mixture.extend((name, rate) for name in names)
  registry.add_mixture(MIXTURE, mixture)


register()
