"""Vocabularies and output features shared by every SPT task.

Real tasks (T0, GLUE, SuperGLUE) use the T5 SentencePiece vocabulary. Its path
is `DEFAULT_T5_VOCAB_PATH` (on Google Cloud Storage, so it needs the network)
unless the environment variable `SPT_VOCAB_PATH` names another model file, e.g.
a local copy of that file or the `spiece.model` of any Hugging Face T5 1.1
folder (the same vocabulary); the variable is read when the task modules
register their tasks (set it before `import tasks`). Nothing here reads the
model file: `seqio.SentencePieceVocabulary` loads it on first use, and
`spt_jax.model.vocabularies.vocabulary_size` loads it up front with a
short error when it cannot.

The offline synthetic mixture uses the small SentencePiece model committed at
`SYNTHETIC_VOCAB_PATH` (built by `python -m tasks.build_vocab`).
"""

import os
from typing import Mapping

import seqio

from spt_jax.model import feature_converters
from spt_jax.model import vocabularies

DEFAULT_T5_VOCAB_PATH = 'gs://t5-data/vocabs/cc_all.32000/sentencepiece.model'
T5_EXTRA_IDS = 100

SYNTHETIC_VOCAB_PATH = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), 'data', 'synthetic_spm.model'
)


# Feature names of the task/model contract, which the model's feature
# converter defines.
INPUTS = feature_converters.INPUTS
TARGETS = feature_converters.TARGETS
PROMPT = feature_converters.PROMPT


def t5_vocab_path() -> str:
  """The T5 vocabulary path: `$SPT_VOCAB_PATH` or the public T5 model."""
  return os.environ.get(vocabularies.VOCAB_PATH_ENV) or DEFAULT_T5_VOCAB_PATH


def t5_vocabulary() -> seqio.SentencePieceVocabulary:
  """The T5 SentencePiece vocabulary with its 100 sentinel ids (lazy)."""
  return seqio.SentencePieceVocabulary(t5_vocab_path(), extra_ids=T5_EXTRA_IDS)


def synthetic_vocabulary() -> seqio.SentencePieceVocabulary:
  """The committed offline vocabulary of the synthetic mixture (lazy)."""
  return seqio.SentencePieceVocabulary(SYNTHETIC_VOCAB_PATH)


def output_features(
    vocabulary: seqio.Vocabulary,
) -> Mapping[str, seqio.Feature]:
  """The output features of every SPT task.

  Args:
    vocabulary: the vocabulary of all three features.

  Returns:
    `inputs` (the rendered prompt), `targets` (the answer) and `prompt` (the
    template's instruction, the model's retrieval query): each int32 [length]
    token ids with EOS appended.
  """
  return {
      INPUTS: seqio.Feature(vocabulary, add_eos=True),
      TARGETS: seqio.Feature(vocabulary, add_eos=True),
      PROMPT: seqio.Feature(vocabulary, add_eos=True),
  }
