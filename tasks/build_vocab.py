r"""Builds the offline SentencePiece vocabulary of the synthetic mixture.

    python -m tasks.build_vocab [--output=tasks/data/synthetic_spm.model]

The corpus is every synthetic template rendered on `EXAMPLES_PER_TEMPLATE`
examples of each split, plus every instruction and answer choice. A BPE model
of `VOCAB_SIZE` pieces on it makes every answer word (lexicon words,
categories, numbers, yes/no) a single piece. Training is deterministic (one
thread, no sampling): rebuilding reproduces the committed model byte for byte.
Ids follow T5: pad 0, EOS 1, UNK 2, no BOS. Normalization is a single rule
(ideographic space -> space) rather than NFKC, which keeps the model a few KB;
an empty rule set would make SentencePiece log a line at every load.
"""

import io
import os
import tempfile
from typing import Iterator, Sequence

from absl import app
from absl import flags
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from tasks import synthetic
from tasks import vocab

VOCAB_SIZE = 512
EXAMPLES_PER_TEMPLATE = 64
_NORMALIZATION_RULES = '3000\t20\n'  # U+3000 (ideographic space) -> space.

_OUTPUT = flags.DEFINE_string(
    'output', vocab.SYNTHETIC_VOCAB_PATH, 'Where to write the model.'
)


def corpus() -> Iterator[str]:
  """The training sentences, in a fixed order."""
  for family in synthetic.FAMILIES:
    for template in family.templates.templates:
      yield template.instruction
      for split in ('train', 'validation'):
        for index in range(EXAMPLES_PER_TEMPLATE):
          example = synthetic.make_example(
              family.name, split, index, salt=template.name
          )
          rendered = template.render(example)
          yield rendered.inputs
          yield from rendered.answer_choices


def build_model() -> bytes:
  """Trains the SentencePiece model; returns its serialized proto."""
  model = io.BytesIO()
  with tempfile.TemporaryDirectory() as folder:
    rules = os.path.join(folder, 'rules.tsv')
    with open(rules, 'w') as f:
      f.write(_NORMALIZATION_RULES)
    spm.SentencePieceTrainer.train(
        sentence_iterator=corpus(),
        model_writer=model,
        model_type='bpe',
        vocab_size=VOCAB_SIZE,
        hard_vocab_limit=False,
        character_coverage=1.0,
        normalization_rule_tsv=rules,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        minloglevel=2,
    )
  proto = sentencepiece_model_pb2.ModelProto.FromString(model.getvalue())
  # The rules are compiled into the model; drop the temporary file's path.
  proto.normalizer_spec.ClearField('normalization_rule_tsv')
  return proto.SerializeToString()


def main(argv: Sequence[str]) -> None:
  del argv  # Unused.
  with open(_OUTPUT.value, 'wb') as f:
    f.write(build_model())


if __name__ == '__main__':
  app.run(main)
