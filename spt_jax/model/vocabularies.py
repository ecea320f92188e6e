"""A seqio vocabulary's size, read up front with a one-line error.

The runners check, before training, that the model's vocabulary holds every id
a task's vocabulary can produce; the tasks read the T5 vocabulary's path from
`$SPT_VOCAB_PATH` (`VOCAB_PATH_ENV`), which the error names.
"""

import seqio

from spt_jax import gin_utils

VOCAB_PATH_ENV = 'SPT_VOCAB_PATH'


class VocabularyNotFoundError(gin_utils.InputError, FileNotFoundError):
  """A vocabulary's model file cannot be read; the message says what to do."""


def vocabulary_size(vocabulary: seqio.Vocabulary) -> int:
  """The vocabulary's size, loading its model file now.

  Args:
    vocabulary: any seqio vocabulary.

  Returns:
    The number of ids, sentinels included.

  Raises:
    VocabularyNotFoundError: the model file cannot be read (e.g. the default
      `gs://` path without network access); the message names the file and
      `SPT_VOCAB_PATH`.
  """
  try:
    return vocabulary.vocab_size
  except Exception as e:  # pylint: disable=broad-except
    path = getattr(vocabulary, 'sentencepiece_model_file', None)
    lines = str(e).strip().splitlines()
    cause = lines[0][:200] if lines else type(e).__name__
    raise VocabularyNotFoundError(
        f'Cannot read the vocabulary {path or vocabulary!r} ({cause}). '
        f'Offline, set ${VOCAB_PATH_ENV} to a local copy of the T5 '
        'SentencePiece model (the `spiece.model` of any Hugging Face T5 1.1 '
        f'folder is the same file) before the tasks are registered.'
    ) from None
