"""Statistics of which memories tasks retrieve.

Usage counts, entropy, overlap between tasks and the consistency of a
family's templates, from the indices `analysis.collect_retrievals` gathers.
"""

import math
from typing import Any, Callable, Dict, Iterable, List, Mapping

import numpy as np

Counts = Mapping[str, np.ndarray]
OVERLAP_KINDS = ('jaccard', 'cosine')
TABLE_COLUMNS = (
    'name',
    'examples',
    'distinct_memories',
    'entropy_bits',
    'normalized_entropy',
    'top_memories',
)


def group_indices(
    indices_by_name: Mapping[str, np.ndarray], group_fn: Callable[[str], str]
) -> Dict[str, np.ndarray]:
  """Concatenates the indices of names in one group (e.g. template -> task)."""
  grouped: Dict[str, List[np.ndarray]] = {}
  for name, indices in indices_by_name.items():
    grouped.setdefault(group_fn(name), []).append(np.asarray(indices))
  return {group: np.concatenate(parts) for group, parts in grouped.items()}


def usage_counts(
    indices_by_name: Mapping[str, np.ndarray], num_memories: int
) -> Dict[str, np.ndarray]:
  """How often each name retrieved each memory: name -> int64 [M].

  Each of an example's k selections counts once, so a name's counts sum to
  N * k.
  """
  counts = {}
  for name, indices in indices_by_name.items():
    flat = np.asarray(indices).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= num_memories):
      raise ValueError(
          f'{name!r} has memory ids in [{flat.min()}, {flat.max()}], outside '
          f'a bank of {num_memories}.'
      )
    counts[name] = np.bincount(flat, minlength=num_memories).astype(np.int64)
  return counts


def entropy_bits(counts: np.ndarray) -> float:
  """Shannon entropy (bits) of the usage distribution counts / sum(counts)."""
  counts = np.asarray(counts, np.float64)
  total = counts.sum()
  if total <= 0:
    return 0.0
  p = counts[counts > 0] / total
  return max(0.0, float(-np.sum(p * np.log2(p))))


def retrieval_table(
    counts: Counts, top_k: int, num_top: int = 5
) -> List[Dict[str, Any]]:
  """One row per name: how many memories it uses and how evenly.

  Args:
    counts: name -> usage counts [M] (see `usage_counts`).
    top_k: memories retrieved per example, to count examples.
    num_top: memories listed in `top_memories`.

  Returns:
    Rows with the `TABLE_COLUMNS`: examples; distinct memories used; entropy
    of the usage distribution in bits and divided by log2(M) (1 is uniform
    over the whole bank, 0 a single memory); the most used memories as
    "id:share" strings.
  """
  rows = []
  for name, c in counts.items():
    c = np.asarray(c)
    total = int(c.sum())
    top = np.argsort(-c, kind='stable')[:num_top]
    top = [m for m in top if c[m] > 0]
    max_entropy = math.log2(c.size) if c.size > 1 else 1.0
    entropy = entropy_bits(c)
    rows.append(
        {
            'name': name,
            'examples': total // top_k,
            'distinct_memories': int(np.count_nonzero(c)),
            'entropy_bits': entropy,
            'normalized_entropy': entropy / max_entropy,
            'top_memories': ' '.join(f'{m}:{c[m] / total:.2f}' for m in top),
        }
    )
  return rows


def overlap_matrix(counts: Counts, kind: str = 'jaccard') -> np.ndarray:
  """Pairwise overlap [G, G] of the names' memory usage, in `counts` order.

  `jaccard`: |used_a & used_b| / |used_a | used_b| over the sets of memories
  retrieved at least once. `cosine`: cosine similarity of the count vectors.
  Both are symmetric, in [0, 1], with ones on the diagonal.
  """
  if kind not in OVERLAP_KINDS:
    raise ValueError(
        f'Unknown overlap {kind!r}; expected one of {OVERLAP_KINDS}.'
    )
  matrix = np.stack([np.asarray(c, np.float64) for c in counts.values()])
  if kind == 'jaccard':
    used = (matrix > 0).astype(np.float64)
    intersection = used @ used.T
    union = used.sum(1)[:, None] + used.sum(1)[None, :] - intersection
    overlap = np.divide(
        intersection, union, out=np.zeros_like(intersection), where=union > 0
    )
  else:
    norms = np.linalg.norm(matrix, axis=1)
    outer = norms[:, None] * norms[None, :]
    overlap = np.divide(
        matrix @ matrix.T, outer, out=np.zeros_like(outer), where=outer > 0
    )
  np.fill_diagonal(overlap, 1.0)
  return np.clip(overlap, 0.0, 1.0)


def _family(name: str) -> str:
  """'family/template' -> 'family'."""
  return name.split('/')[0]


def nearest_family(
    counts: np.ndarray, family_counts: Mapping[str, np.ndarray]
) -> Dict[str, float]:
  """Credit per family for being nearest (cosine) to one name's usage.

  Args:
    counts: a name's usage counts [M].
    family_counts: family -> pooled usage counts [M] of its templates.

  Returns:
    family -> 1/t for the t families tied for the highest cosine similarity,
    0 for the others (so a tie among all families gives chance credit).
  """
  families = list(family_counts)
  overlap = overlap_matrix(
      {'': counts, **{f'family:{f}': family_counts[f] for f in families}},
      'cosine',
  )[0, 1:]
  best = np.isclose(overlap, overlap.max())
  return {f: float(b) / best.sum() for f, b in zip(families, best)}


def retrieval_consistency(
    counts: Counts, trained: Iterable[str]
) -> Dict[str, float]:
  """Whether a family's templates retrieve the same memories, and new ones too.

  Names are 'family/template'.

  Args:
    counts: name -> usage counts [M] (`usage_counts`).
    trained: the names of the training templates; the other names of their
      families are held-out templates.

  Returns:
    `same_family_jaccard`: the mean Jaccard overlap of the memories used by
    two training templates of one family; `other_family_jaccard`: the same
    for two of different families (what sharing by chance looks like);
    `heldout_own_family`: the share (%) of held-out templates whose usage is
    nearest (cosine) to their own family's pooled training templates, among
    the trained families (ties share the credit); `heldout_chance`: that
    share when retrieval ignores the family, 100 / trained families.
  """
  trained = [n for n in counts if n in set(trained)]
  same, other = [], []
  jaccard = overlap_matrix({n: counts[n] for n in trained}, 'jaccard')
  for i, a in enumerate(trained):
    for j in range(i + 1, len(trained)):
      (same if _family(a) == _family(trained[j]) else other).append(
          jaccard[i, j]
      )
  families = {}
  for name in trained:
    families[_family(name)] = families.get(_family(name), 0) + np.asarray(
        counts[name]
    )
  heldout = [n for n in counts if n not in trained and _family(n) in families]
  hits = [nearest_family(counts[n], families)[_family(n)] for n in heldout]

  def mean(values):
    return float(np.mean(values)) if values else float('nan')

  return {
      'same_family_jaccard': mean(same),
      'other_family_jaccard': mean(other),
      'heldout_own_family': 100 * mean(hits),
      'heldout_chance': 100 / len(families) if families else float('nan'),
  }
