"""Vocabularies and output features shared by every SPT task.

Real tasks (T0, GLUE, SuperGLUE) use the T5 SentencePiece vocabulary. Its path
is `DEFAULT_T5_VOCAB_PATH` unless the environment variable `SPT_VOCAB_PATH`
names another model file; the variable is read when the task modules register
their tasks (set it before `import tasks`). Nothing here reads the model file:
`seqio.SentencePieceVocabulary` loads it on first use.

The offline synthetic mixture uses the small SentencePiece model committed at
`SYNTHETIC_VOCAB_PATH` (built by `python -m tasks.build_vocab`).
"""
import os
from typing import Mapping

import seqio

DEFAULT_T5_VOCAB_PATH = 'gs://t5-data/vocabs/cc_all.32000/sentencepiece.model'
T5_EXTRA_IDS = 100
VOCAB_PATH_ENV = 'SPT_VOCAB_PATH'

SYNTHETIC_VOCAB_PATH = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), 'data', 'synthetic_spm.model')

# Feature names of the task/model contract.
INPUTS = 'inputs'
TARGETS = 'targets'
PROMPT = 'prompt'


def t5_vocab_path() -> str:
  """The T5 vocabulary path: `$SPT_VOCAB_PATH` or the public T5 model."""
  return os.environ.get(VOCAB_PATH_ENV) or DEFAULT_T5_VOCAB_PATH


def t5_vocabulary() -> seqio.SentencePieceVocabulary:
  """The T5 SentencePiece vocabulary with its 100 sentinel ids (lazy)."""
  return seqio.SentencePieceVocabulary(t5_vocab_path(), extra_ids=T5_EXTRA_IDS)


def synthetic_vocabulary() -> seqio.SentencePieceVocabulary:
  """The committed offline vocabulary of the synthetic mixture (lazy)."""
  return seqio.SentencePieceVocabulary(SYNTHETIC_VOCAB_PATH)


def output_features(
    vocabulary: seqio.Vocabulary) -> Mapping[str, seqio.Feature]:
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
