"""The discrete prompt added to P3's examples, and the tasks' output features.

Part of `tasks.p3` (see its docstring).
"""

from typing import Mapping

import seqio
import tensorflow as tf

from spt_jax.model import vocabularies
from tasks import vocab


def add_prompt(
    dataset: tf.data.Dataset,
    output_features: Mapping[str, seqio.Feature],
    instruction: str,
) -> tf.data.Dataset:
  """Adds the template's instruction to every example, tokenized once.

  Args:
    dataset: P3 examples.
    output_features: the task's features (seqio passes them); `prompt`'s
      vocabulary tokenizes the instruction.
    instruction: the template's instruction.

  Returns:
    The examples with `prompt` int32 [P] (no EOS yet) and
    `prompt_pretokenized` string [] (the instruction).
  """
  vocabulary = output_features[vocab.PROMPT].vocabulary
  vocabularies.vocabulary_size(
      vocabulary
  )  # A clear error if it cannot be read.
  tokens = tf.constant(vocabulary.encode(instruction), tf.int32)
  text = tf.constant(instruction)
  return dataset.map(
      lambda ex: {
          **ex,
          vocab.PROMPT: tokens,
          f'{vocab.PROMPT}_pretokenized': text,
      },
      num_parallel_calls=tf.data.AUTOTUNE,
  )


def add_prompt_from_inputs(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Gives every example its own input as `prompt` (no instruction).

  The task of a template whose instruction is empty (its input is nothing
  but fields) would send an empty retrieval query; its `prompt` is instead
  the start of the example's input (cut to the prompt length by
  `append_eos_after_trim` and the feature converter), so that SPT pools its
  query over the input, as it does without a discrete prompt.

  Args:
    dataset: P3 examples.

  Returns:
    The examples with `prompt` = `inputs` and `prompt_pretokenized` =
    `inputs_pretokenized` ('' when absent).
  """

  def add(ex):
    text = ex.get(f'{vocab.INPUTS}_pretokenized', tf.constant(''))
    return {
        **ex,
        vocab.PROMPT: ex[vocab.INPUTS],
        f'{vocab.PROMPT}_pretokenized': text,
    }

  return dataset.map(add, num_parallel_calls=tf.data.AUTOTUNE)


def output_features(
    vocabulary: seqio.Vocabulary, with_prompt: bool
) -> Mapping[str, seqio.Feature]:
  """The features of P3 tasks.

  Args:
    vocabulary: T5's vocabulary (P3's token ids are T5's).
    with_prompt: whether the tasks output the instruction as `prompt`.

  Returns:
    `inputs` and `targets`, used as P3 stores them (`add_eos=False`: inputs
    have no EOS, as T0 trained; targets end in EOS), and `prompt` (tokenized
    here, EOS appended) when `with_prompt`.
  """
  features = {
      vocab.INPUTS: seqio.Feature(vocabulary, add_eos=False),
      vocab.TARGETS: seqio.Feature(vocabulary, add_eos=False),
  }
  if with_prompt:
    features[vocab.PROMPT] = seqio.Feature(vocabulary, add_eos=True)
  return features
