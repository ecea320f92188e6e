"""Postprocessors and metric functions of the SPT tasks (seqio conventions).

Seqio calls a postprocessor as `fn(text, example=ex, is_target=...)` on every
decoded target (`is_target=True`, `ex` is the task's example) and prediction,
then metric functions with `(targets, predictions)` or, for scoring,
`(targets, scores)` where `scores` holds one log-likelihood per row. All
scores are in percent, as T5 and T0 report them.
Rank classification's accuracy and the summary over templates are
`spt_jax.eval_protocol`'s, which the runners read too.
"""

import collections
import re
import string
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from tasks import preprocessors

# ----------------------------- Postprocessors ------------------------------


def rank_classification_postprocessor(
    output: Any,
    example: Optional[Mapping[str, Any]] = None,
    is_target: bool = False,
) -> Any:
  """Targets -> (example index, choice index, is_correct); scores unchanged."""
  if not is_target:
    return output
  example_idx, choice_idx = (int(i) for i in example[preprocessors.IDX])
  return example_idx, choice_idx, bool(example[preprocessors.IS_CORRECT])


def _normalize(text: str) -> str:
  return ' '.join(text.strip().lower().split())


def choice_index(
    output: str,
    answer_choices: Sequence[str],
    example: Optional[Mapping[str, Any]] = None,
    is_target: bool = False,
) -> int:
  """The index of the (normalised) text in `answer_choices`, -1 if absent."""
  del example, is_target  # Unused.
  normalized = [_normalize(c) for c in answer_choices]
  text = _normalize(output)
  return normalized.index(text) if text in normalized else -1


def string_to_float(
    output: str,
    example: Optional[Mapping[str, Any]] = None,
    is_target: bool = False,
) -> float:
  """The float written in the text, NaN if there is none."""
  del example, is_target  # Unused.
  try:
    return float(output.strip())
  except ValueError:
    return float('nan')


def normalized_text(
    output: str,
    example: Optional[Mapping[str, Any]] = None,
    is_target: bool = False,
) -> str:
  """Lower-cased text with collapsed whitespace."""
  del example, is_target  # Unused.
  return _normalize(output)


def multirc_postprocessor(
    output: str,
    answer_choices: Sequence[str],
    example: Optional[Mapping[str, Any]] = None,
    is_target: bool = False,
) -> Any:
  """Targets -> (question group, label index); predictions -> label index."""
  label = choice_index(output, answer_choices)
  if not is_target:
    return label
  group = (int(example['paragraph_idx']), int(example['question_idx']))
  return group, label


def record_postprocessor(
    output: str,
    example: Optional[Mapping[str, Any]] = None,
    is_target: bool = False,
) -> Any:
  """Targets -> every gold answer (example['answers']); predictions -> text."""
  if not is_target:
    return output
  return [
      a.decode('utf-8') if isinstance(a, bytes) else str(a)
      for a in example['answers']
  ]


# --------------------------------- Metrics ---------------------------------


def accuracy(
    targets: Sequence[Any], predictions: Sequence[Any]
) -> dict[str, float]:
  """Percent of predictions equal to their target."""
  return {
      'accuracy': 100
      * float(np.mean([t == p for t, p in zip(targets, predictions)]))
  }


def _binary_f1(targets: Sequence[int], predictions: Sequence[int]) -> float:
  t = np.asarray(targets) == 1
  p = np.asarray(predictions) == 1
  tp = float(np.sum(t & p))
  denominator = float(np.sum(t) + np.sum(p))
  return 2 * tp / denominator if denominator else 0.0


def f1(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
  """Binary F1 of label 1 (predictions outside the choices count as wrong)."""
  return {'f1': 100 * _binary_f1(targets, predictions)}


def macro_f1(num_classes: int):
  """The mean over classes of each class's one-vs-rest F1 (CB's metric)."""

  def metric_fn(
      targets: Sequence[int], predictions: Sequence[int]
  ) -> dict[str, float]:
    t, p = np.asarray(targets), np.asarray(predictions)
    scores = [_binary_f1(t == c, p == c) for c in range(num_classes)]
    return {'macro_f1': 100 * float(np.mean(scores))}

  return metric_fn


def matthews_corrcoef(
    targets: Sequence[int], predictions: Sequence[int]
) -> dict[str, float]:
  """Matthews correlation of binary labels (CoLA's metric)."""
  t = np.asarray(targets) == 1
  p = np.asarray(predictions) == 1
  tp, tn = float(np.sum(t & p)), float(np.sum(~t & ~p))
  fp, fn = float(np.sum(~t & p)), float(np.sum(t & ~p))
  denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
  mcc = (tp * tn - fp * fn) / denominator if denominator else 0.0
  return {'mcc': 100 * float(mcc)}


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
  x, y = x - x.mean(), y - y.mean()
  denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
  return float(np.sum(x * y) / denominator) if denominator else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
  """Ranks with ties given their mean rank."""
  order = np.argsort(x, kind='stable')
  ranks = np.empty(len(x))
  ranks[order] = np.arange(len(x))
  for value in np.unique(x):
    tied = x == value
    ranks[tied] = ranks[tied].mean()
  return ranks


def correlations(
    targets: Sequence[float], predictions: Sequence[float]
) -> dict[str, float]:
  """Pearson and Spearman correlations (STS-B); NaN predictions count as 0."""
  t = np.asarray(targets, dtype=np.float64)
  p = np.nan_to_num(np.asarray(predictions, dtype=np.float64))
  return {
      'pearson_corrcoef': 100 * _pearson(t, p),
      'spearman_corrcoef': 100 * _pearson(_ranks(t), _ranks(p)),
  }


def multirc(
    targets: Sequence[tuple[Any, int]], predictions: Sequence[int]
) -> dict[str, float]:
  """MultiRC: F1 over all answers and exact match over questions."""
  labels = [label for _, label in targets]
  by_question = collections.defaultdict(list)
  for (group, label), prediction in zip(targets, predictions):
    by_question[group].append(label == prediction)
  return {
      'f1a': 100 * _binary_f1(labels, predictions),
      'exact_match': 100
      * float(np.mean([all(v) for v in by_question.values()])),
  }


def _squad_normalize(text: str) -> str:
  text = ''.join(c for c in text.lower() if c not in set(string.punctuation))
  text = re.sub(r'\b(a|an|the)\b', ' ', text)
  return ' '.join(text.split())


def _token_f1(gold: str, prediction: str) -> float:
  gold_tokens = _squad_normalize(gold).split()
  predicted_tokens = _squad_normalize(prediction).split()
  common = collections.Counter(gold_tokens) & collections.Counter(
      predicted_tokens
  )
  overlap = sum(common.values())
  if not overlap:
    return 0.0
  precision = overlap / len(predicted_tokens)
  recall = overlap / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def squad(
    targets: Sequence[Sequence[str]], predictions: Sequence[str]
) -> dict[str, float]:
  """SQuAD-style exact match and token F1, maximised over gold answers."""
  em = [
      max(_squad_normalize(g) == _squad_normalize(p) for g in golds)
      for golds, p in zip(targets, predictions)
  ]
  f1s = [
      max(_token_f1(g, p) for g in golds)
      for golds, p in zip(targets, predictions)
  ]
  return {
      'exact_match': 100 * float(np.mean(em)),
      'f1': 100 * float(np.mean(f1s)),
  }


# ------------------------- Aggregation over templates ----------------------
