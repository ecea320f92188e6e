"""T0's multitask prompted training mixture and held-out zero-shot evaluation.

Registered names (see `spt_jax.eval_protocol` for the naming scheme):

* `spt_t0__<dataset>__<template>`: one training task per template of each
  T0 training dataset (splits `train`, and `validation` where it exists).
* `spt_t0_train`: their mixture. Rates follow T0's code: each of the T
  template tasks of a dataset of N training examples has rate N if
  N <= 500,000, else 500,000 // T (`tasks.prompted.mixing_rate`). N is read
  from the data when the mixture is first used, not at registration: the
  prepared TFDS dataset's info, or the lines (records) of a local export
  (`tasks.prompted.count_examples`).
* `spt_t0__<dataset>__<template>__score`: one rank-classification task per
  template of each held-out dataset (split `validation`): one row per answer
  choice, accuracy of the best-scored choice.
* `spt_t0_heldout`: their mixture, for evaluation (T0 reports, per dataset,
  the mean and median accuracy over templates:
  `spt_jax.eval_protocol.aggregate_over_templates`).

Datasets come from TFDS when TFDS has them (they must be prepared:
`tfds build <name>`), otherwise from a Hugging Face export under
`$SPT_DATA_DIR` (see `tasks.sources`). Differences from T0's sources: Yelp is
TFDS's `yelp_polarity_reviews` (T0 used the 5-class `yelp_review_full`);
Adversarial QA is HF's combined `adversarialQA` config; ANLI's three rounds
are three datasets; StoryCloze is the 2016 release, which TFDS builds from a
manual download.
"""

from typing import Mapping, Optional, Sequence

import seqio

from tasks import prompted
from tasks import registry
from tasks import sources
from tasks import vocab

COLLECTION = 'spt_t0'
TRAIN_MIXTURE = 'spt_t0_train'
HELDOUT_MIXTURE = 'spt_t0_heldout'

# T0's recipe: inputs 1024, targets 256; the instruction is short.
FEATURE_LENGTHS = {'inputs': 1024, 'targets': 256, 'prompt': 64}

_TRAIN_VALIDATION = {'train': 'train', 'validation': 'validation'}
_TRAIN = {'train': 'train'}
_VALIDATION = {'validation': 'validation'}


def _tfds(
    name: str, splits: Mapping[str, str], manual_download: bool = False
) -> sources.TfdsSource:
  return sources.TfdsSource(name, splits, manual_download=manual_download)


def _local(
    name: str,
    hf_name: str,
    fields: Mapping[str, str],
    splits: Sequence[str] = ('train', 'validation'),
) -> sources.LocalSource:
  return sources.LocalSource(name, fields, splits, hf_name)


def _dataset(
    name: str, source: seqio.DataSource, templates: Optional[str] = None
) -> prompted.PromptedDataset:
  return prompted.PromptedDataset(
      name=name, source=source, templates=templates or name
  )


S, I, SL = 'string', 'int', 'string_list'
# Both DuoRC configurations' fields.
_DUORC_FIELDS = {
    'title': S,
    'plot': S,
    'question': S,
    'answers': SL,
    'no_answer': 'bool',
}

# T0's training datasets by task cluster.
TRAIN_DATASETS = (
    # Multiple-choice QA.
    _dataset(
        'commonsense_qa',
        _local(
            'commonsense_qa',
            "'commonsense_qa'",
            {
                'question': S,
                'choices.label': SL,
                'choices.text': SL,
                'answerKey': S,
            },
        ),
    ),
    _dataset(
        'dream',
        _local(
            'dream',
            "'dream'",
            {'dialogue': SL, 'question': S, 'choice': SL, 'answer': S},
        ),
    ),
    _dataset(
        'quail',
        _local(
            'quail',
            "'quail'",
            {
                'context': S,
                'question': S,
                'answers': SL,
                'correct_answer_id': I,
            },
        ),
    ),
    _dataset(
        'quartz',
        _local(
            'quartz',
            "'quartz'",
            {
                'para': S,
                'question': S,
                'choices.label': SL,
                'choices.text': SL,
                'answerKey': S,
            },
        ),
    ),
    _dataset(
        'social_i_qa',
        _local(
            'social_i_qa',
            "'social_i_qa'",
            {
                'context': S,
                'question': S,
                'answerA': S,
                'answerB': S,
                'answerC': S,
                'label': S,
            },
        ),
    ),
    _dataset(
        'wiqa',
        _local(
            'wiqa',
            "'wiqa'",
            {'question_stem': S, 'question_para_step': SL, 'answer_label': S},
        ),
    ),
    _dataset('cosmos_qa', _tfds('cosmos_qa:1.0.0', _TRAIN_VALIDATION)),
    _dataset('qasc', _tfds('qasc:0.1.0', _TRAIN_VALIDATION)),
    _dataset(
        'quarel',
        _local(
            'quarel',
            "'quarel'",
            {
                'question': S,
                'answer_index': I,
                'world_literals.world1': SL,
                'world_literals.world2': SL,
            },
        ),
    ),
    _dataset(
        'sciq',
        _local(
            'sciq',
            "'sciq'",
            {
                'question': S,
                'distractor1': S,
                'distractor2': S,
                'distractor3': S,
                'correct_answer': S,
                'support': S,
            },
        ),
    ),
    _dataset(
        'wiki_hop',
        _local(
            'wiki_hop',
            "'wiki_hop', 'original'",
            {'question': S, 'candidates': SL, 'answer': S, 'supports': SL},
        ),
    ),
    # Extractive QA.
    _dataset(
        'adversarial_qa',
        _local(
            'adversarial_qa',
            "'adversarial_qa', 'adversarialQA'",
            {'title': S, 'context': S, 'question': S, 'answers.text': SL},
        ),
    ),
    _dataset(
        'quoref',
        _local(
            'quoref',
            "'quoref'",
            {'title': S, 'context': S, 'question': S, 'answers.text': SL},
        ),
    ),
    _dataset(
        'duorc_selfrc',
        _local(
            'duorc_selfrc',
            "'duorc', 'SelfRC'",
            _DUORC_FIELDS,
        ),
        templates='duorc',
    ),
    _dataset(
        'duorc_paraphraserc',
        _local(
            'duorc_paraphraserc',
            "'duorc', 'ParaphraseRC'",
            _DUORC_FIELDS,
        ),
        templates='duorc',
    ),
    _dataset(
        'ropes',
        _local(
            'ropes',
            "'ropes'",
            {
                'background': S,
                'situation': S,
                'question': S,
                'answers.text': SL,
            },
        ),
    ),
    # Closed-book QA.
    _dataset(
        'hotpot_qa',
        _local(
            'hotpot_qa',
            "'hotpot_qa', 'distractor'",
            {'question': S, 'answer': S},
        ),
    ),
    _dataset(
        'wiki_qa',
        _local(
            'wiki_qa',
            "'wiki_qa'",
            {'question': S, 'answer': S, 'document_title': S, 'label': I},
        ),
    ),
    # Structure to text.
    _dataset(
        'common_gen',
        _local('common_gen', "'common_gen'", {'concepts': SL, 'target': S}),
    ),
    _dataset('wiki_bio', _tfds('wiki_bio:0.1.0', _TRAIN_VALIDATION)),
    # Sentiment.
    _dataset(
        'amazon_polarity',
        _local(
            'amazon_polarity',
            "'amazon_polarity'",
            {'title': S, 'content': S, 'label': I},
            splits=('train', 'test'),
        ),
    ),
    _dataset(
        'app_reviews',
        _local(
            'app_reviews',
            "'app_reviews'",
            {'review': S, 'star': I},
            splits=('train',),
        ),
    ),
    _dataset('imdb', _tfds('imdb_reviews/plain_text:1.0.0', _TRAIN)),
    _dataset(
        'rotten_tomatoes',
        _local('rotten_tomatoes', "'rotten_tomatoes'", {'text': S, 'label': I}),
    ),
    _dataset('yelp', _tfds('yelp_polarity_reviews:0.2.0', _TRAIN)),
    # Summarization.
    _dataset('cnn_dailymail', _tfds('cnn_dailymail:3.4.0', _TRAIN_VALIDATION)),
    _dataset('gigaword', _tfds('gigaword:1.2.0', _TRAIN_VALIDATION)),
    _dataset('multi_news', _tfds('multi_news:2.1.0', _TRAIN_VALIDATION)),
    _dataset(
        'samsum', _tfds('samsum:1.0.0', _TRAIN_VALIDATION, manual_download=True)
    ),
    _dataset(
        'xsum', _tfds('xsum:1.1.0', _TRAIN_VALIDATION, manual_download=True)
    ),
    # Topic classification.
    _dataset('ag_news', _tfds('ag_news_subset:1.0.0', _TRAIN)),
    _dataset(
        'dbpedia_14',
        _local(
            'dbpedia_14',
            "'dbpedia_14'",
            {'title': S, 'content': S, 'label': I},
            splits=('train', 'test'),
        ),
    ),
    _dataset('trec', _tfds('trec:1.0.0', _TRAIN)),
    # Paraphrase identification.
    _dataset('glue_mrpc', _tfds('glue/mrpc:2.0.0', _TRAIN_VALIDATION)),
    _dataset(
        'paws', _tfds('paws_wiki/labeled_final_raw:1.1.0', _TRAIN_VALIDATION)
    ),
    _dataset('glue_qqp', _tfds('glue/qqp:2.0.0', _TRAIN_VALIDATION)),
)

# T0's held-out evaluation datasets (validation splits).
HELDOUT_DATASETS = (
    # Natural language inference.
    _dataset('anli_r1', _tfds('anli/r1:0.1.0', _VALIDATION), templates='anli'),
    _dataset('anli_r2', _tfds('anli/r2:0.1.0', _VALIDATION), templates='anli'),
    _dataset('anli_r3', _tfds('anli/r3:0.1.0', _VALIDATION), templates='anli'),
    _dataset('super_glue_cb', _tfds('super_glue/cb:1.0.2', _VALIDATION)),
    _dataset('super_glue_rte', _tfds('super_glue/rte:1.0.2', _VALIDATION)),
    # Coreference resolution.
    _dataset(
        'super_glue_wsc', _tfds('super_glue/wsc.fixed:1.0.2', _VALIDATION)
    ),
    _dataset('winogrande', _tfds('winogrande:1.2.0', _VALIDATION)),
    # Sentence completion.
    _dataset('super_glue_copa', _tfds('super_glue/copa:1.0.2', _VALIDATION)),
    _dataset('hellaswag', _tfds('hellaswag:1.1.0', _VALIDATION)),
    _dataset(
        'story_cloze',
        _tfds('story_cloze/2016:1.0.0', _VALIDATION, manual_download=True),
    ),
    # Word sense disambiguation.
    _dataset('super_glue_wic', _tfds('super_glue/wic:1.0.2', _VALIDATION)),
)


def register() -> None:
  """Registers the T0 tasks and the two mixtures (idempotent)."""
  features = vocab.output_features(vocab.t5_vocabulary())
  train = []
  for dataset in TRAIN_DATASETS:
    names = prompted.register(COLLECTION, dataset, features)
    rate = prompted.lazy_mixing_rate(dataset.source, len(names))
    train.extend((name, rate) for name in names)
  registry.add_mixture(TRAIN_MIXTURE, train)
  heldout = []
  for dataset in HELDOUT_DATASETS:
    heldout.extend(prompted.register(COLLECTION, dataset, features, score=True))
  registry.add_mixture(HELDOUT_MIXTURE, heldout, default_rate=1.0)


register()
