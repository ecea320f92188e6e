"""T0's multitask prompted training mixture and held-out zero-shot evaluation.

Registered names (see `tasks.registry` for the naming scheme):

* `spt_t0__<dataset>__<template>`: one training task per template of each
  T0 training dataset (splits `train`, and `validation` where it exists).
* `spt_t0_train`: their mixture. Rates follow T0: example-proportional over
  prompted examples, a dataset of N examples and T templates counting as at
  most 500k: each of its T template tasks has rate min(N, 500k / T)
  (`tasks.prompted.mixing_rate`; N is the training-split size listed below).
* `spt_t0__<dataset>__<template>__score`: one rank-classification task per
  template of each held-out dataset (split `validation`): one row per answer
  choice, accuracy of the best-scored choice.
* `spt_t0_heldout`: their mixture, for evaluation (T0 reports, per dataset,
  the mean and median accuracy over templates:
  `tasks.metrics.aggregate_over_templates`).

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


def _tfds(name: str, splits: Mapping[str, str],
          manual_download: bool = False) -> sources.TfdsSource:
  return sources.TfdsSource(name, splits, manual_download=manual_download)


def _local(name: str, hf_name: str, fields: Mapping[str, str],
           splits: Sequence[str] = ('train', 'validation')
           ) -> sources.LocalSource:
  return sources.LocalSource(name, fields, splits, hf_name)


def _dataset(name: str, source: seqio.DataSource, train_examples: int = 0,
             templates: Optional[str] = None) -> prompted.PromptedDataset:
  return prompted.PromptedDataset(
      name=name, source=source, templates=templates or name,
      train_examples=train_examples)


S, I, SL = 'string', 'int', 'string_list'

# T0's training datasets by task cluster, with their training-split sizes.
TRAIN_DATASETS = (
    # Multiple-choice QA.
    _dataset('commonsense_qa', _local(
        'commonsense_qa', "'commonsense_qa'",
        {'question': S, 'choices.label': SL, 'choices.text': SL,
         'answerKey': S}), 9_741),
    _dataset('dream', _local(
        'dream', "'dream'",
        {'dialogue': SL, 'question': S, 'choice': SL, 'answer': S}), 6_116),
    _dataset('quail', _local(
        'quail', "'quail'",
        {'context': S, 'question': S, 'answers': SL,
         'correct_answer_id': I}), 10_246),
    _dataset('quartz', _local(
        'quartz', "'quartz'",
        {'para': S, 'question': S, 'choices.label': SL, 'choices.text': SL,
         'answerKey': S}), 2_696),
    _dataset('social_i_qa', _local(
        'social_i_qa', "'social_i_qa'",
        {'context': S, 'question': S, 'answerA': S, 'answerB': S,
         'answerC': S, 'label': S}), 33_410),
    _dataset('wiqa', _local(
        'wiqa', "'wiqa'",
        {'question_stem': S, 'question_para_step': SL, 'answer_label': S}),
             29_808),
    _dataset('cosmos_qa', _tfds('cosmos_qa:1.0.0', _TRAIN_VALIDATION),
             25_262),
    _dataset('qasc', _tfds('qasc:0.1.0', _TRAIN_VALIDATION), 8_134),
    _dataset('quarel', _local(
        'quarel', "'quarel'",
        {'question': S, 'answer_index': I, 'world_literals.world1': SL,
         'world_literals.world2': SL}), 1_941),
    _dataset('sciq', _local(
        'sciq', "'sciq'",
        {'question': S, 'distractor1': S, 'distractor2': S, 'distractor3': S,
         'correct_answer': S, 'support': S}), 11_679),
    _dataset('wiki_hop', _local(
        'wiki_hop', "'wiki_hop', 'original'",
        {'question': S, 'candidates': SL, 'answer': S, 'supports': SL}),
             43_738),
    # Extractive QA.
    _dataset('adversarial_qa', _local(
        'adversarial_qa', "'adversarial_qa', 'adversarialQA'",
        {'title': S, 'context': S, 'question': S, 'answers.text': SL}),
             30_000),
    _dataset('quoref', _local(
        'quoref', "'quoref'",
        {'title': S, 'context': S, 'question': S, 'answers.text': SL}),
             19_399),
    _dataset('duorc_selfrc', _local(
        'duorc_selfrc', "'duorc', 'SelfRC'",
        {'title': S, 'plot': S, 'question': S, 'answers': SL,
         'no_answer': 'bool'}), 60_721, templates='duorc'),
    _dataset('duorc_paraphraserc', _local(
        'duorc_paraphraserc', "'duorc', 'ParaphraseRC'",
        {'title': S, 'plot': S, 'question': S, 'answers': SL,
         'no_answer': 'bool'}), 69_524, templates='duorc'),
    _dataset('ropes', _local(
        'ropes', "'ropes'",
        {'background': S, 'situation': S, 'question': S,
         'answers.text': SL}), 10_924),
    # Closed-book QA.
    _dataset('hotpot_qa', _local(
        'hotpot_qa', "'hotpot_qa', 'distractor'",
        {'question': S, 'answer': S}), 90_447),
    _dataset('wiki_qa', _local(
        'wiki_qa', "'wiki_qa'",
        {'question': S, 'answer': S, 'document_title': S, 'label': I}),
             20_360),
    # Structure to text.
    _dataset('common_gen', _local(
        'common_gen', "'common_gen'", {'concepts': SL, 'target': S}), 67_389),
    _dataset('wiki_bio', _tfds('wiki_bio:0.1.0', _TRAIN_VALIDATION), 582_659),
    # Sentiment.
    _dataset('amazon_polarity', _local(
        'amazon_polarity', "'amazon_polarity'",
        {'title': S, 'content': S, 'label': I}, splits=('train', 'test')),
             3_600_000),
    _dataset('app_reviews', _local(
        'app_reviews', "'app_reviews'", {'review': S, 'star': I},
        splits=('train',)), 288_065),
    _dataset('imdb', _tfds('imdb_reviews/plain_text:1.0.0', _TRAIN), 25_000),
    _dataset('rotten_tomatoes', _local(
        'rotten_tomatoes', "'rotten_tomatoes'", {'text': S, 'label': I}),
             8_530),
    _dataset('yelp', _tfds('yelp_polarity_reviews:0.2.0', _TRAIN), 560_000),
    # Summarization.
    _dataset('cnn_dailymail', _tfds('cnn_dailymail:3.4.0', _TRAIN_VALIDATION),
             287_113),
    _dataset('gigaword', _tfds('gigaword:1.2.0', _TRAIN_VALIDATION),
             3_803_957),
    _dataset('multi_news', _tfds('multi_news:2.1.0', _TRAIN_VALIDATION),
             44_972),
    _dataset('samsum', _tfds('samsum:1.0.0', _TRAIN_VALIDATION,
                             manual_download=True), 14_732),
    _dataset('xsum', _tfds('xsum:1.1.0', _TRAIN_VALIDATION,
                           manual_download=True), 204_045),
    # Topic classification.
    _dataset('ag_news', _tfds('ag_news_subset:1.0.0', _TRAIN), 120_000),
    _dataset('dbpedia_14', _local(
        'dbpedia_14', "'dbpedia_14'", {'title': S, 'content': S, 'label': I},
        splits=('train', 'test')), 560_000),
    _dataset('trec', _tfds('trec:1.0.0', _TRAIN), 5_452),
    # Paraphrase identification.
    _dataset('glue_mrpc', _tfds('glue/mrpc:2.0.0', _TRAIN_VALIDATION), 3_668),
    _dataset('paws', _tfds('paws_wiki/labeled_final_raw:1.1.0',
                           _TRAIN_VALIDATION), 49_401),
    _dataset('glue_qqp', _tfds('glue/qqp:2.0.0', _TRAIN_VALIDATION), 363_846),
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
    _dataset('super_glue_wsc', _tfds('super_glue/wsc.fixed:1.0.2',
                                     _VALIDATION)),
    _dataset('winogrande', _tfds('winogrande:1.2.0', _VALIDATION)),
    # Sentence completion.
    _dataset('super_glue_copa', _tfds('super_glue/copa:1.0.2', _VALIDATION)),
    _dataset('hellaswag', _tfds('hellaswag:1.1.0', _VALIDATION)),
    _dataset('story_cloze', _tfds('story_cloze/2016:1.0.0', _VALIDATION,
                                  manual_download=True)),
    # Word sense disambiguation.
    _dataset('super_glue_wic', _tfds('super_glue/wic:1.0.2', _VALIDATION)),
)


def register() -> None:
  """Registers the T0 tasks and the two mixtures (idempotent)."""
  features = vocab.output_features(vocab.t5_vocabulary())
  train = []
  for dataset in TRAIN_DATASETS:
    names = prompted.register(COLLECTION, dataset, features)
    rate = prompted.mixing_rate(dataset.train_examples, len(names))
    train.extend((name, rate) for name in names)
  registry.add_mixture(TRAIN_MIXTURE, train)
  heldout = []
  for dataset in HELDOUT_DATASETS:
    heldout.extend(prompted.register(COLLECTION, dataset, features, score=True))
  registry.add_mixture(HELDOUT_MIXTURE, heldout, default_rate=1.0)


register()
