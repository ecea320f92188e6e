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
from spt_jax.study import retrieval_stats

Array = jax.Array


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


def _format(value: Any) -> str:
  return f'{value:.3f}' if isinstance(value, float) else str(value)


def write_table(rows: Sequence[Mapping[str, Any]], path: str) -> str:
  """Writes rows as TSV (`.tsv`) or a markdown table (`.md`); returns `path`."""
  columns = list(rows[0]) if rows else list(retrieval_stats.TABLE_COLUMNS)
  lines = [[_format(row[c]) for c in columns] for row in rows]
  if path.endswith('.tsv'):
    text = '\n'.join('\t'.join(line) for line in [columns] + lines)
  elif path.endswith('.md'):
    text = '\n'.join(
        [
            '| ' + ' | '.join(columns) + ' |',
            '|' + '|'.join('---' for _ in columns) + '|',
        ]
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
    counts: retrieval_stats.Counts,
    path: str,
    max_memories: int = 64,
    row_inches: float = 0.25,
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
  overlap = retrieval_stats.overlap_matrix(counts, 'jaccard')

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
  counts = retrieval_stats.usage_counts(indices_by_name, num_memories)
  names = list(counts)
  rows = retrieval_stats.retrieval_table(counts, top_k.pop(), num_top)

  def out(name):
    return os.path.join(output_dir, name)

  paths = {
      'table_tsv': write_table(rows, out('retrieval_table.tsv')),
      'table_md': write_table(rows, out('retrieval_table.md')),
  }
  for kind in retrieval_stats.OVERLAP_KINDS:
    paths[kind] = write_matrix(
        names,
        retrieval_stats.overlap_matrix(counts, kind),
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
  indices_by_name = collect_by_task(
      model,
      params,
      task_batches(
          model.FEATURE_CONVERTER_CLS(pack=False),
          mixture_or_task_names,
          task_feature_lengths,
          split,
          batch_size,
      ),
  )
  if group_by == 'dataset':
    indices_by_name = retrieval_stats.group_indices(
        indices_by_name, lambda n: n.split('/')[0]
    )
  elif group_by != 'template':
    raise ValueError(
        f"group_by must be 'template' or 'dataset', got {group_by!r}."
    )
  return write_report(
      indices_by_name, model.module.spt.num_memories, output_dir
  )


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
      'mixtures',
      ['spt_synthetic_train', 'spt_synthetic_heldout_gen'],
      'Mixtures or tasks to run over (generation tasks: one row per example).',
  )
  flags.DEFINE_string('output_dir', None, 'Default: MODEL_DIR/analysis.')
  flags.DEFINE_string('split', 'validation', 'Dataset split.')
  flags.DEFINE_enum(
      'group_by',
      'template',
      ['template', 'dataset'],
      'One row per template, or per dataset (task family).',
  )
  FLAGS = flags.FLAGS
  gin_utils.run(main)
