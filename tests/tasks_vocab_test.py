"""Vocabulary paths, a missing vocabulary named, and the output features."""

import pytest
import seqio

from spt_jax.model import vocabularies
from tasks import vocab


def test_t5_vocab_path_follows_the_environment(monkeypatch):
  monkeypatch.delenv(vocabularies.VOCAB_PATH_ENV, raising=False)
  assert vocab.t5_vocab_path() == vocab.DEFAULT_T5_VOCAB_PATH
  monkeypatch.setenv(vocabularies.VOCAB_PATH_ENV, '/data/spiece.model')
  assert vocab.t5_vocab_path() == '/data/spiece.model'
  assert vocab.t5_vocabulary().extra_ids == vocab.T5_EXTRA_IDS


def test_a_missing_vocabulary_is_named(tmp_path):
  missing = seqio.SentencePieceVocabulary(str(tmp_path / 'none.model'))
  with pytest.raises(
      vocabularies.VocabularyNotFoundError, match=r'none\.model.*SPT_VOCAB_PATH'
  ):
    vocabularies.vocabulary_size(missing)


def test_synthetic_vocabulary_and_output_features():
  vocabulary = vocab.synthetic_vocabulary()
  size = vocabularies.vocabulary_size(vocabulary)
  assert size > 3
  ids = vocabulary.encode('the cat')
  assert vocabulary.decode(ids) == 'the cat'
  features = vocab.output_features(vocabulary)
  assert set(features) == {vocab.INPUTS, vocab.TARGETS, vocab.PROMPT}
  assert all(
      f.add_eos and f.vocabulary is vocabulary for f in features.values()
  )
