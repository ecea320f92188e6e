"""T0's datasets in P3, the collection's names and settings.

Part of `tasks.p3` (see its docstring).
"""

import dataclasses
import re
from typing import Optional

from tasks import sources

P3_DIR_ENV = 'SPT_P3_DIR'
PROMPTSOURCE_DIR_ENV = 'SPT_PROMPTSOURCE_DIR'

COLLECTION = 'spt_p3'
T0_TRAIN_MIXTURE = 'spt_p3_t0_train'
T0_PLUS_TRAIN_MIXTURE = 'spt_p3_t0plus_train'
T0_PLUS_PLUS_TRAIN_MIXTURE = 'spt_p3_t0plusplus_train'
HELDOUT_MIXTURE = 'spt_p3_t0_heldout'
HELDOUT_SPLIT = 'validation'
TRAIN_SPLIT = 'train'

SCORE_EVAL_SUFFIX = '_score_eval'
# The template used when a folder's name has no template part.
DEFAULT_TEMPLATE = 'default'

# T0's recipe: inputs 1024, targets 256; the instruction is short.
FEATURE_LENGTHS = {'inputs': 1024, 'targets': 256, 'prompt': 64}

# Training stages of T0's mixtures: a dataset of stage S trains T0 models of
# stage S and later.
T0 = 'T0'
T0_PLUS = 'T0+'
T0_PLUS_PLUS = 'T0++'
STAGES = (T0, T0_PLUS, T0_PLUS_PLUS)
TRAIN_MIXTURES = {
    T0: T0_TRAIN_MIXTURE,
    T0_PLUS: T0_PLUS_TRAIN_MIXTURE,
    T0_PLUS_PLUS: T0_PLUS_PLUS_TRAIN_MIXTURE,
}

# Training tasks T0's code leaves out of its mixtures (broken cached files).
EXCLUDED_TRAINING_FOLDERS = ('gigaword_summarize_',)

ANLI = 'anli'

# A file that git-lfs has not fetched holds a short pointer starting so.
LFS_POINTER_START = b'version https://git-lfs'
LFS_POINTER_MAX_BYTES = 1024

# Features stored as int64 in tf.train.Example (seqio's cache convention).
INT64_STORED = ('int32', 'int64', 'bool')


@dataclasses.dataclass(frozen=True)
class T0Dataset:
  """A dataset of T0's experiments (t-zero's `datasets.csv`).

  Attributes:
    dataset: the Hugging Face dataset name.
    subset: its configuration, or None.
    train_stage: the first T0 mixture that trains on it (T0, T0+, T0++), or
      None.
    heldout: whether T0 evaluates on it zero-shot (validation split).
  """

  dataset: str
  subset: Optional[str] = None
  train_stage: Optional[str] = None
  heldout: bool = False

  @property
  def prefix(self) -> str:
    """The P3 folder prefix: `<dataset>_<subset>` in T0's task-name form."""
    return p3_name(self.dataset, self.subset)


T0_DATASETS = (
    # Held-out evaluation (COPA, WSC, WiC and HellaSwag also train T0+/T0++).
    T0Dataset('super_glue', 'wsc.fixed', T0_PLUS_PLUS, heldout=True),
    T0Dataset('winogrande', 'winogrande_xl', heldout=True),
    T0Dataset('super_glue', 'cb', heldout=True),
    T0Dataset('super_glue', 'rte', heldout=True),
    T0Dataset('anli', None, heldout=True),
    T0Dataset('super_glue', 'copa', T0_PLUS_PLUS, heldout=True),
    T0Dataset('hellaswag', None, T0_PLUS, heldout=True),
    T0Dataset('story_cloze', '2016', heldout=True),
    T0Dataset('super_glue', 'wic', T0_PLUS_PLUS, heldout=True),
    # Paraphrase identification.
    T0Dataset('glue', 'mrpc', T0),
    T0Dataset('glue', 'qqp', T0),
    T0Dataset('paws', 'labeled_final', T0),
    # Closed-book QA.
    T0Dataset('ai2_arc', 'ARC-Challenge', T0_PLUS),
    T0Dataset('ai2_arc', 'ARC-Easy', T0_PLUS),
    T0Dataset('kilt_tasks', 'hotpotqa', T0),
    T0Dataset('trivia_qa', 'unfiltered', T0_PLUS),
    T0Dataset('web_questions', None, T0_PLUS),
    T0Dataset('wiki_qa', None, T0),
    # Extractive QA.
    T0Dataset('adversarial_qa', 'dbidaf', T0),
    T0Dataset('adversarial_qa', 'dbert', T0),
    T0Dataset('adversarial_qa', 'droberta', T0),
    T0Dataset('duorc', 'SelfRC', T0),
    T0Dataset('duorc', 'ParaphraseRC', T0),
    T0Dataset('ropes', None, T0),
    T0Dataset('squad_v2', None, T0_PLUS),
    T0Dataset('super_glue', 'record', T0_PLUS_PLUS),
    T0Dataset('quoref', None, T0),
    # Multiple-choice QA.
    T0Dataset('cos_e', 'v1.11', T0),
    T0Dataset('cosmos_qa', None, T0),
    T0Dataset('dream', None, T0),
    T0Dataset('openbookqa', 'main', T0_PLUS),
    T0Dataset('qasc', None, T0),
    T0Dataset('quail', None, T0),
    T0Dataset('quarel', None, T0),
    T0Dataset('quartz', None, T0),
    T0Dataset('race', 'high', T0_PLUS),
    T0Dataset('race', 'middle', T0_PLUS),
    T0Dataset('sciq', None, T0),
    T0Dataset('social_i_qa', None, T0),
    T0Dataset('super_glue', 'boolq', T0_PLUS_PLUS),
    T0Dataset('super_glue', 'multirc', T0_PLUS_PLUS),
    T0Dataset('wiki_hop', 'original', T0),
    T0Dataset('wiqa', None, T0),
    T0Dataset('piqa', None, T0_PLUS),
    # Sentiment.
    T0Dataset('amazon_polarity', None, T0),
    T0Dataset('app_reviews', None, T0),
    T0Dataset('imdb', None, T0),
    T0Dataset('rotten_tomatoes', None, T0),
    T0Dataset('yelp_review_full', None, T0),
    # Structure to text.
    T0Dataset('common_gen', None, T0),
    T0Dataset('wiki_bio', None, T0),
    # Summarization.
    T0Dataset('cnn_dailymail', '3.0.0', T0),
    T0Dataset('gigaword', None, T0),
    T0Dataset('multi_news', None, T0),
    T0Dataset('samsum', None, T0),
    T0Dataset('xsum', None, T0),
    # Topic classification.
    T0Dataset('ag_news', None, T0),
    T0Dataset('dbpedia_14', None, T0),
    T0Dataset('trec', None, T0),
    # Bias and fairness evaluation (in P3, in no mixture here).
    T0Dataset('crows_pairs'),
    T0Dataset('jigsaw_toxicity_pred'),
    T0Dataset('super_glue', 'axg'),
    T0Dataset('wino_bias', 'type1_anti'),
    T0Dataset('wino_bias', 'type2_anti'),
    T0Dataset('wino_bias', 'type1_pro'),
    T0Dataset('wino_bias', 'type2_pro'),
)


class P3ConfigError(sources.DataNotFoundError):
  """P3 or promptsource is not where the settings say; the message says why."""


def p3_name(*parts: Optional[str]) -> str:
  """T0's task-name form of `_`-joined parts (None parts are skipped).

  Args:
    *parts: e.g. ('super_glue', 'wsc.fixed', 'GPT-3 Style').

  Returns:
    The parts joined by `_`, every run of characters other than letters,
    digits, `.` and `_` replaced by `_`: 'super_glue_wsc.fixed_GPT_3_Style'.
  """
  return re.sub(r'[^\w.]+', '_', '_'.join(p for p in parts if p is not None))


def name_part(text: str) -> str:
  """A folder's name part as a task-name part: no `__`, no edge `_`."""
  return re.sub(r'_+', '_', text).strip('_')
