"""GLUE, prompted, for SPT pretraining (before SuperGLUE fine-tuning).

Registered names:

* `spt_glue__<dataset>__<template>` for dataset in glue_cola, glue_sst2,
  glue_mrpc, glue_qqp, glue_stsb, glue_mnli, glue_qnli, glue_rte, glue_wnli:
  splits `train` and `validation` (MNLI: `validation` is matched, plus
  `validation_mismatched`). Predictions are mapped back to labels and scored
  with GLUE's metrics: CoLA Matthews correlation; MRPC and QQP F1 and
  accuracy; STS-B Pearson and Spearman correlations; accuracy otherwise.
* `spt_glue_<config>`: the templates of one GLUE dataset, equally mixed.
* `spt_glue`: their mixture, example-proportional (capped as in T0), the
  sizes read from the prepared data when the mixture is first used.
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
_MNLI_SPLITS = {
    'train': 'train',
    'validation': 'validation_matched',
    'validation_mismatched': 'validation_mismatched',
}

# GLUE config -> metric functions on label indices.
_CONFIGS = {
    'cola': (metrics.matthews_corrcoef, metrics.accuracy),
    'sst2': (metrics.accuracy,),
    'mrpc': (metrics.f1, metrics.accuracy),
    'qqp': (metrics.f1, metrics.accuracy),
    'stsb': (metrics.correlations,),
    'mnli': (metrics.accuracy,),
    'qnli': (metrics.accuracy,),
    'rte': (metrics.accuracy,),
    'wnli': (metrics.accuracy,),
}

DATASETS = tuple(
    prompted.PromptedDataset(
        name=f'glue_{config}',
        source=sources.TfdsSource(
            f'glue/{config}:2.0.0',
            _MNLI_SPLITS if config == 'mnli' else _SPLITS,
        ),
        templates=f'glue_{config}',
    )
    for config in _CONFIGS
)


def label_postprocessor(
    template: prompt_templates.Template,
) -> Callable[..., Any]:
  """Text -> label index among the template's choices (STS-B: a float)."""
  if template.fixed_answer_choices is None:
    return metrics.string_to_float
  return functools.partial(
      metrics.choice_index, answer_choices=template.fixed_answer_choices
  )


def register() -> None:
  """Registers the GLUE tasks and mixtures (idempotent)."""
  features = vocab.output_features(vocab.t5_vocabulary())
  mixture = []
  for dataset in DATASETS:
    config = dataset.name[len('glue_') :]
    metric_fns = _CONFIGS[config]
    names = prompted.register(
        COLLECTION,
        dataset,
        features,
        postprocess_fn=label_postprocessor,
        metric_fns=metric_fns,
    )
    registry.add_mixture(f'{MIXTURE}_{config}', names, default_rate=1.0)
    rate = prompted.lazy_mixing_rate(dataset.source, len(names))
    mixture.extend((name, rate) for name in names)
  registry.add_mixture(MIXTURE, mixture)


register()
