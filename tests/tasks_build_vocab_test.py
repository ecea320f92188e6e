"""The committed synthetic vocabulary is what build_vocab rebuilds, byte for byte."""

import os

import sentencepiece as spm

from tasks import build_vocab
from tasks import synthetic
from tasks import vocab


def test_committed_vocabulary_is_what_the_script_builds():
  sentencepiece = spm.SentencePieceProcessor(
      model_file=vocab.SYNTHETIC_VOCAB_PATH
  )
  with open(vocab.SYNTHETIC_VOCAB_PATH, 'rb') as f:
    committed = f.read()
  assert len(committed) < 500_000
  assert build_vocab.build_model() == committed
  assert sentencepiece.get_piece_size() == build_vocab.VOCAB_SIZE
  assert (
      sentencepiece.pad_id(),
      sentencepiece.eos_id(),
      sentencepiece.unk_id(),
      sentencepiece.bos_id(),
  ) == (0, 1, 2, -1)
  answer_words = (
      list(synthetic.WORDS)
      + list(synthetic.LEXICON)
      + list(synthetic.NUMBERS)
      + ['yes', 'no']
  )
  for word in answer_words:
    assert len(sentencepiece.encode(word)) == 1, word
  text = 'What is the first word in this list? cat red apple'
  assert sentencepiece.decode(sentencepiece.encode(text)) == text
  assert os.path.dirname(vocab.SYNTHETIC_VOCAB_PATH).endswith('tasks/data')
