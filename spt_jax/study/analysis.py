r"""Which memories each task and template retrieves: counts, entropy, overlap.

    python -m spt_jax.study.analysis --gin_file=gin_configs/local/synthetic.gin \
      --gin.MODEL_DIR=\"runs/default/spt\" \
      [--mixtures=spt_synthetic_train,spt_synthetic_heldout_gen] \
      [--group_by=template|dataset] [--output_dir=DIR]

runs a trained model (built from the run's own gin files) over the tasks of
the given mixtures and writes, for each task/template: how many examples,
how many distinct memories, the entropy of their usage and the most used
memories (TSV and markdown), the overlap matrices between names, the raw
counts, and a heatmap PNG. The library functions:

    indices = {name: collect_retrievals(model, params, batches_of(name))
               for name in task_or_template_names}
    write_report(indices, num_memories, output_dir)

`group_indices` folds template-level names into task-level ones;
`retrieval_consistency` says whether the training templates of one family
retrieve the same memories, and whether held-out templates retrieve their
own family's (the study's retrieval rows, `spt_jax.study.compare`).

Shape letters: N examples, k memories retrieved per example, M memories,
G names (tasks or templates).
"""

import math
import os
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from absl import flags
import gin
import jax
import numpy as np
import seqio

from spt_jax import eval_protocol
from spt_jax import gin_utils
from spt_jax.local import train_checkpoints
from spt_jax.model import models

Array = jax.Array
Counts = Mapping[str, np.ndarray]
OVERLAP_KINDS = ('jaccard', 'cosine')
TABLE_COLUMNS = (
    'name', 'examples', 'distinct_memories', 'entropy_bits',
    'normalized_entropy', 'top_memories',
)


def _retrieval_indices_fn(model: models.SptModel) -> Callable[..., Array]:
  """A jitted (params, encoder tokens) -> indices [B, k]."""
  module = model.module
  if not module.spt.num_memories:
    raise ValueError('The model has no memory bank (SptConfig.num_memories=0).')

  def indices(params, tokens):
    _, state = module.apply(
        {'params': params},
        tokens,
        enable_dropout=False,
        method=module.encode,
        mutable=['intermediates'],
    )
    return state['intermediates']['retrieval_indices'][0]

  return jax.jit(indices)


def collect_retrievals(
    model: models.SptModel,
    params: Any,
    batches: Iterable[Mapping[str, Any]],
    indices_fn: Optional[Callable[..., Array]] = None,
) -> np.ndarray:
  """Indices of the memories retrieved for every example, best first.

  Runs the network's `encode` (dropout off) and reads the
  `retrieval_indices` it sows into `intermediates`. Padding rows (no
  non-zero encoder token, as batch padding at the end of an evaluation set
  leaves) are dropped.

  Args:
    model: the trained model; its network must have a memory bank.
    params: its parameters.
    batches: dicts with `encoder_input_tokens` [B, T + T_p] (the input and
      the discrete prompt, as the model's feature converter lays them out);
      other features are ignored.
    indices_fn: `_retrieval_indices_fn(model)`, when the caller runs several
      sets of batches (one compilation for all).

  Returns:
    int32 [N, k], N the number of non-padding examples.
  """
  indices_fn = indices_fn or _retrieval_indices_fn(model)
  collected = []
  for batch in batches:
    tokens = np.asarray(batch['encoder_input_tokens'], np.int32)
    indices = np.asarray(indices_fn(params, tokens))
    collected.append(indices[np.any(tokens > 0, axis=-1)])
  if not collected:
    raise ValueError('No batches to collect retrievals from.')
  return np.concatenate(collected).astype(np.int32)


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
    rows.append({
        'name': name,
        'examples': total // top_k,
        'distinct_memories': int(np.count_nonzero(c)),
        'entropy_bits': entropy,
        'normalized_entropy': entropy / max_entropy,
        'top_memories': ' '.join(f'{m}:{c[m] / total:.2f}' for m in top),
    })
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


def _format(value: Any) -> str:
  return f'{value:.3f}' if isinstance(value, float) else str(value)


def write_table(rows: Sequence[Mapping[str, Any]], path: str) -> str:
  """Writes rows as TSV (`.tsv`) or a markdown table (`.md`); returns `path`."""
  columns = list(rows[0]) if rows else list(TABLE_COLUMNS)
  lines = [[_format(row[c]) for c in columns] for row in rows]
  if path.endswith('.tsv'):
    text = '\n'.join('\t'.join(line) for line in [columns] + lines)
  elif path.endswith('.md'):
    text = '\n'.join(
        ['| ' + ' | '.join(columns) + ' |',
         '|' + '|'.join('---' for _ in columns) + '|']
        + ['| ' + ' | '.join(line) + ' |' for line in lines]
    )
  else:
    raise ValueError(f'Expected a .tsv or .md path, got {path!r}.')
  with open(path, 'w') as f:
    f.write(text + '\n')
  return path


def write_matrix(names: Sequence[str], matrix: np.ndarray, path: str) -> str:
  """Writes a [G, G] matrix as TSV with the names as row and column headers."""
  lines = ['\t'.join([''] + list(names))]
  for name, row in zip(names, matrix):
    lines.append('\t'.join([name] + [f'{v:.4f}' for v in row]))
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return path


def plot_heatmap(
    counts: Counts, path: str, max_memories: int = 64, row_inches: float = 0.25
) -> str:
  """A PNG of each name's usage share over memories, above the Jaccard overlap.

  The usage panel shows the `max_memories` memories retrieved most over all
  names (a bank of 1e5 has too many columns to show), ordered by that total.
  Both panels give every name a row (and the overlap a column) of
  `row_inches`, so labels stay legible however many names there are (44
  templates: a figure about 15 x 27 inches at 100 dpi).
  """
  # The object-oriented API draws off-screen without touching pyplot's
  # global backend.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  names = list(counts)
  matrix = np.stack([np.asarray(c, np.float64) for c in counts.values()])
  shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1.0)
  order = np.argsort(-matrix.sum(0), kind='stable')[:max_memories]
  overlap = overlap_matrix(counts, 'jaccard')

  side = max(3.0, row_inches * len(names))
  label_inches = 0.075 * max(len(n) for n in names) + 0.5
  width = label_inches + max(side, row_inches * len(order)) + 1.5
  figure = Figure(figsize=(width, 2 * side + label_inches + 2.0))
  FigureCanvasAgg(figure)
  usage_axes, overlap_axes = figure.subplots(
      2, 1, gridspec_kw={'height_ratios': [1, 1]}
  )
  image = usage_axes.imshow(shares[:, order], aspect='auto', cmap='viridis')
  usage_axes.set_yticks(range(len(names)), names, fontsize=8)
  usage_axes.set_xticks(
      range(len(order)), [str(m) for m in order], fontsize=8, rotation=90
  )
  usage_axes.set_xlabel(f'memory id (the {len(order)} most retrieved)')
  usage_axes.set_title('share of retrievals')
  figure.colorbar(image, ax=usage_axes, fraction=0.03)
  image = overlap_axes.imshow(overlap, vmin=0, vmax=1, cmap='magma')
  overlap_axes.set_xticks(range(len(names)), names, fontsize=8, rotation=90)
  overlap_axes.set_yticks(range(len(names)), names, fontsize=8)
  overlap_axes.set_title('Jaccard overlap of used memories')
  figure.colorbar(image, ax=overlap_axes, fraction=0.03)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  return path


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
          jaccard[i, j])
  families = {}
  for name in trained:
    families[_family(name)] = families.get(_family(name), 0) + np.asarray(
        counts[name])
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


def write_report(
    indices_by_name: Mapping[str, np.ndarray],
    num_memories: int,
    output_dir: str,
    num_top: int = 5,
) -> Dict[str, str]:
  """Writes the retrieval table, overlaps, counts and heatmap; returns paths.

  Args:
    indices_by_name: name -> retrieved indices [N, k] (`collect_retrievals`).
    num_memories: size of the bank, M.
    output_dir: created if missing.
    num_top: memories listed per name in the table.

  Returns:
    {'table_tsv', 'table_md', 'jaccard', 'cosine', 'counts', 'heatmap'} ->
    path. `counts` is an npz of `names` [G] and `counts` [G, M].
  """
  if not indices_by_name:
    raise ValueError('No retrievals to report.')
  top_k = {np.shape(v)[-1] for v in indices_by_name.values()}
  if len(top_k) != 1:
    raise ValueError(
        f'Every name must retrieve the same k; got {sorted(top_k)}.'
    )
  os.makedirs(output_dir, exist_ok=True)
  counts = usage_counts(indices_by_name, num_memories)
  names = list(counts)
  rows = retrieval_table(counts, top_k.pop(), num_top)

  def out(name):
    return os.path.join(output_dir, name)

  paths = {
      'table_tsv': write_table(rows, out('retrieval_table.tsv')),
      'table_md': write_table(rows, out('retrieval_table.md')),
  }
  for kind in OVERLAP_KINDS:
    paths[kind] = write_matrix(
        names, overlap_matrix(counts, kind),
        out(f'retrieval_overlap_{kind}.tsv'),
    )
  paths['counts'] = out('retrieval_counts.npz')
  np.savez(
      paths['counts'],
      names=np.array(names),
      counts=np.stack(list(counts.values())),
  )
  paths['heatmap'] = plot_heatmap(counts, out('retrieval_heatmap.png'))
  return paths


def analyze(
    *,
    model: models.SptModel,
    model_dir: str,
    mixture_or_task_names: Sequence[str],
    task_feature_lengths: Mapping[str, int],
    output_dir: str,
    split: str = 'validation',
    batch_size: int = 64,
    group_by: str = 'template',
) -> Dict[str, str]:
  """Runs a trained model over tasks and writes its retrieval report.

  Args:
    model: the trained model (built from the run's gin files).
    model_dir: the run's MODEL_DIR; its latest checkpoint is analysed.
    mixture_or_task_names: mixtures or tasks to run over; every task of a
      mixture is one row (`__score` tasks repeat each example per choice, so
      prefer generation tasks).
    task_feature_lengths: feature lengths of the run.
    output_dir: where the table, overlaps and heatmap go.
    split: dataset split.
    batch_size: examples per forward pass.
    group_by: 'template' (one row per task) or 'dataset' (templates pooled).

  Returns:
    The written files (see `write_report`).
  """
  if not model.module.spt.num_memories:
    raise ValueError('The model has no memory bank to analyse.')
  params = train_checkpoints.TrainCheckpoints(model_dir).restore_params()
  indices_by_name = collect_by_task(model, params, task_batches(
      model.FEATURE_CONVERTER_CLS(pack=False), mixture_or_task_names,
      task_feature_lengths, split, batch_size,
  ))
  if group_by == 'dataset':
    indices_by_name = group_indices(indices_by_name, lambda n: n.split('/')[0])
  elif group_by != 'template':
    raise ValueError(f"group_by must be 'template' or 'dataset', got {group_by!r}.")
  return write_report(indices_by_name, model.module.spt.num_memories, output_dir)


def task_batches(
    feature_converter: seqio.FeatureConverter,
    mixture_or_task_names: Sequence[str],
    task_feature_lengths: Mapping[str, int],
    split: str = 'validation',
    batch_size: int = 64,
    max_batches: Optional[int] = None,
) -> Dict[str, List[Dict[str, np.ndarray]]]:
  """'dataset/template' -> the model's batches of every task of the names.

  Read into memory, so that several models can be run over them.
  `max_batches` caps the examples read per task: with the query pooled from
  the prompt alone, every example of a template retrieves the same memories.
  """
  batches = {}
  for name in mixture_or_task_names:
    for task in seqio.get_subtasks(seqio.get_mixture_or_task(name)):
      dataset = feature_converter(
          task.get_dataset(task_feature_lengths, split=split, shuffle=False),
          task_feature_lengths,
      ).batch(batch_size)
      if max_batches:
        dataset = dataset.take(max_batches)
      batches[_short_name(task.name)] = list(dataset.as_numpy_iterator())
  return batches


def collect_by_task(
    model: models.SptModel,
    params: Any,
    batches: Mapping[str, Iterable[Mapping[str, Any]]],
) -> Dict[str, np.ndarray]:
  """name -> retrieved indices [N, k] over its batches (see `task_batches`)."""
  indices_fn = _retrieval_indices_fn(model)
  return {
      name: collect_retrievals(model, params, name_batches, indices_fn)
      for name, name_batches in batches.items()
  }


def _short_name(task_name: str) -> str:
  """'dataset/template' for registry task names, the name itself otherwise."""
  try:
    return '/'.join(eval_protocol.template_info(task_name))
  except ValueError:
    return task_name


def main(argv: Sequence[str]) -> None:
  del argv
  # Gin binds the importable module's functions, not this `__main__` copy.
  from spt_jax.model import network  # pylint: disable=g-import-not-at-top
  from spt_jax.study import analysis as analysis_lib  # pylint: disable=g-import-not-at-top
  gin_utils.parse_gin_flags()
  model_dir = gin.query_parameter('%MODEL_DIR')
  paths = analysis_lib.analyze(
      model=models.SptModel(gin.get_configurable(network.SptTransformer)()),
      model_dir=model_dir,
      mixture_or_task_names=FLAGS.mixtures,
      task_feature_lengths=gin.query_parameter('%TASK_FEATURE_LENGTHS'),
      output_dir=FLAGS.output_dir or os.path.join(model_dir, 'analysis'),
      split=FLAGS.split,
      group_by=FLAGS.group_by,
  )
  for kind, path in sorted(paths.items()):
    print(f'{kind:10s} {path}')


if __name__ == '__main__':
  flags.DEFINE_list(
      'mixtures', ['spt_synthetic_train', 'spt_synthetic_heldout_gen'],
      'Mixtures or tasks to run over (generation tasks: one row per example).',
  )
  flags.DEFINE_string('output_dir', None, 'Default: MODEL_DIR/analysis.')
  flags.DEFINE_string('split', 'validation', 'Dataset split.')
  flags.DEFINE_enum('group_by', 'template', ['template', 'dataset'],
                    'One row per template, or per dataset (task family).')
  FLAGS = flags.FLAGS
  gin_utils.run(main)
