"""The study results: a run's `result.json`, the table and plot of mean +- SE
over seeds, and the paired differences between variants with t intervals."""

import dataclasses
import json
import math
import os
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
from scipy import stats

# Rows of the table after the accuracies: (label, RunResult field, key).
RETRIEVAL_ROWS = (
    ('retrieval: same-family overlap', 'same_family_jaccard'),
    ('retrieval: other-family overlap', 'other_family_jaccard'),
    ('retrieval: held-out tpl -> own family %', 'heldout_own_family'),
    ('  (chance %)', 'heldout_chance'),
)


AVERAGE = 'average'

# (variant, baseline) pairs whose per-seed differences the study reports.
COMPARISONS = (
    ('spt', 'no_memory'),
    ('spt', 'prompt_tuning'),
)


@dataclasses.dataclass
class RunResult:
  """What one (variant, seed) run measured; stored as `result.json`.

  Attributes:
    variant: the variant's name.
    seed: RANDOM_SEED of the run.
    step: the last training step.
    train_loss: the token cross entropy over the last logged period.
    datasets: accuracy (%) per dataset, the mean over its templates.
    tasks: accuracy (%) per evaluated task.
    retrieval: `retrieval_stats.retrieval_consistency` (runs with a memory bank).
    seconds: wall time of training and evaluation.
  """

  variant: str
  seed: int
  step: int
  train_loss: float
  datasets: Dict[str, float]
  tasks: Dict[str, float]
  retrieval: Dict[str, float] = dataclasses.field(default_factory=dict)
  seconds: float = 0.0

  @property
  def average(self) -> float:
    """The mean accuracy over datasets (each dataset counts once)."""
    return float(np.mean(list(self.datasets.values())))

  def save(self, path: str) -> None:
    with open(path + '.tmp', 'w') as f:
      json.dump(dataclasses.asdict(self), f, indent=2, sort_keys=True)
    os.replace(path + '.tmp', path)

  @classmethod
  def load(cls, path: str) -> 'RunResult':
    with open(path) as f:
      return cls(**json.load(f))


def mean_and_se(values: Sequence[float]) -> Tuple[float, float]:
  """Mean and standard error (sample sd / sqrt(n); nan for one value)."""
  values = [v for v in values if not math.isnan(v)]
  if not values:
    return float('nan'), float('nan')
  if len(values) == 1:
    return float(values[0]), float('nan')
  return float(np.mean(values)), float(
      np.std(values, ddof=1) / math.sqrt(len(values))
  )


def paired_difference(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95
) -> Tuple[float, float, float]:
  """Mean of a - b over paired seeds and its Student t interval.

  Args:
    a: one value per seed of the variant.
    b: the baseline's values for the same seeds, in the same order.
    confidence: the interval's coverage.

  Returns:
    (mean difference, low, high); the bounds are nan with one pair.
  """
  if len(a) != len(b) or not a:
    raise ValueError(
        f'Paired differences need equal, non-empty seed lists; '
        f'got {len(a)} and {len(b)} values.'
    )
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  mean = float(d.mean())
  if len(d) < 2:
    return mean, float('nan'), float('nan')
  half = (
      stats.t.ppf(0.5 + confidence / 2, len(d) - 1)
      * d.std(ddof=1)
      / math.sqrt(len(d))
  )
  return mean, mean - float(half), mean + float(half)


def _paired(
    runs: Mapping[str, Sequence[RunResult]], variant: str, baseline: str
) -> Tuple[List[RunResult], List[RunResult]]:
  """The two variants' runs of the seeds both have, in seed order."""
  by_seed = {r.seed: r for r in runs[baseline]}
  pairs = [
      (r, by_seed[r.seed])
      for r in sorted(runs[variant], key=lambda r: r.seed)
      if r.seed in by_seed
  ]
  return [p[0] for p in pairs], [p[1] for p in pairs]


@dataclasses.dataclass(frozen=True)
class Difference:
  """One comparison's paired differences (accuracy points) over seeds.

  Attributes:
    variant, baseline: the compared variants.
    seeds: how many seeds both ran.
    datasets: dataset (and `AVERAGE`) -> (mean, 95% low, 95% high).
  """

  variant: str
  baseline: str
  seeds: int
  datasets: Dict[str, Tuple[float, float, float]]


def paired_differences(
    runs: Mapping[str, Sequence[RunResult]],
) -> List[Difference]:
  """Per dataset and on average, variant - baseline over paired seeds with a
  95% Student t interval over seeds (n - 1 degrees of freedom), for each of
  `COMPARISONS` whose two variants have runs."""
  differences = []
  for variant, baseline in COMPARISONS:
    if not (runs.get(variant) and runs.get(baseline)):
      continue
    a, b = _paired(runs, variant, baseline)
    datasets = {
        d: paired_difference(
            [r.datasets[d] for r in a], [r.datasets[d] for r in b]
        )
        for d in sorted(a[0].datasets)
        if d in b[0].datasets
    }
    datasets[AVERAGE] = paired_difference(
        [r.average for r in a], [r.average for r in b]
    )
    differences.append(Difference(variant, baseline, len(a), datasets))
  return differences


def _difference_cell(mean: float, low: float, high: float) -> str:
  if math.isnan(low):
    return f'{mean:+.1f}'
  return f'{mean:+.1f} [{low:+.1f}, {high:+.1f}]'


def differences_table(runs: Mapping[str, Sequence[RunResult]]) -> str:
  """`paired_differences` as a table: mean [95% t interval] per dataset."""
  differences = paired_differences(runs)
  if not differences:
    return ''
  header = ['dataset'] + [
      f'{d.variant} - {d.baseline} ({d.seeds} seeds)' for d in differences
  ]
  datasets = sorted({k for d in differences for k in d.datasets} - {AVERAGE})
  rows = [
      [k]
      + [
          _difference_cell(*d.datasets[k]) if k in d.datasets else ''
          for d in differences
      ]
      for k in datasets + [AVERAGE]
  ]
  return _format_table(header, rows)


def _cell(values: Sequence[float], digits: int = 1) -> str:
  mean, se = mean_and_se(values)
  if math.isnan(mean):
    return '-'
  if math.isnan(se):
    return f'{mean:.{digits}f}'
  return f'{mean:.{digits}f} ± {se:.{digits}f}'


def _groups(
    runs: Mapping[str, Sequence[RunResult]],
) -> List[Tuple[Tuple[str, ...], List[str]]]:
  """Variants grouped by the datasets they are evaluated on, in order."""
  groups: Dict[Tuple[str, ...], List[str]] = {}
  for name, results in runs.items():
    if results:
      datasets = tuple(sorted(results[0].datasets))
      groups.setdefault(datasets, []).append(name)
  return list(groups.items())


def _format_table(header: List[str], rows: List[List[str]]) -> str:
  widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

  def fmt(row):
    return ' | '.join(c.ljust(w) for c, w in zip(row, widths)).rstrip()

  return '\n'.join(
      [fmt(header), '-+-'.join('-' * w for w in widths)]
      + [fmt(r) for r in rows]
  )


def results_table(runs: Mapping[str, Sequence[RunResult]]) -> str:
  """Mean ± standard error over seeds per dataset, on average and of retrieval.

  One table per set of evaluated datasets (variants given other evaluation
  mixtures are tabled apart). The average is taken per seed over the
  datasets, then over seeds.
  """
  tables = []
  for datasets, names in _groups(runs):
    seeds = sorted({len(runs[n]) for n in names})
    header = ['dataset'] + names
    rows = [
        [d] + [_cell([r.datasets[d] for r in runs[n]]) for n in names]
        for d in datasets
    ]
    rows.append(
        [AVERAGE] + [_cell([r.average for r in runs[n]]) for n in names]
    )
    rows.append(
        ['train loss (last)']
        + [_cell([r.train_loss for r in runs[n]], 3) for n in names]
    )
    if any(runs[n][0].retrieval for n in names):
      for label, key in RETRIEVAL_ROWS:
        digits = 2 if 'overlap' in label else 1
        rows.append(
            [label]
            + [
                _cell(
                    [r.retrieval[key] for r in runs[n] if r.retrieval], digits
                )
                for n in names
            ]
        )
    tables.append(
        f'seeds per variant: {"/".join(map(str, seeds))}\n'
        + _format_table(header, rows)
    )
  return '\n\n'.join(tables)


def _plot_accuracies(ax, runs, datasets, names) -> None:
  """Bars of accuracy per dataset and on average, ± SE over seeds."""
  labels = list(datasets) + [AVERAGE]
  width = 0.8 / len(names)
  for i, name in enumerate(names):
    stats = [mean_and_se([r.datasets[d] for r in runs[name]]) for d in datasets]
    stats.append(mean_and_se([r.average for r in runs[name]]))
    errors = [0.0 if math.isnan(se) else se for _, se in stats]
    x = np.arange(len(labels)) + (i - (len(names) - 1) / 2) * width
    ax.bar(x, [m for m, _ in stats], width, yerr=errors, capsize=2, label=name)
  ax.set_xticks(range(len(labels)), labels, fontsize=9, rotation=20)
  ax.set_ylabel('accuracy (%)')
  ax.set_ylim(0, 115)  # Room for the legend above 100%.
  ax.set_yticks(range(0, 101, 20))
  ax.axvline(len(datasets) - 0.5, color='gray', linewidth=0.5)
  # Four choices for most tasks of the synthetic mixture.
  ax.axhline(25, color='gray', linewidth=0.5, linestyle=':')
  seeds = '/'.join(str(s) for s in sorted({len(runs[n]) for n in names}))
  ax.set_title(
      f'zero-shot accuracy on the held-out templates of {len(datasets)} '
      f'families, mean ± SE over {seeds} seed(s); dotted: 1 in 4',
      fontsize=10,
  )
  ax.legend(fontsize=8, ncol=len(names), loc='upper left')


def _plot_differences(ax, differences: Sequence[Difference]) -> None:
  """Paired differences per dataset and on average, with 95% t intervals."""
  labels = sorted({k for d in differences for k in d.datasets} - {AVERAGE})
  labels.append(AVERAGE)
  width = 0.8 / len(differences)
  for i, d in enumerate(differences):
    x = np.arange(len(labels)) + (i - (len(differences) - 1) / 2) * width
    cells = [d.datasets.get(k, (np.nan,) * 3) for k in labels]
    means = np.array([c[0] for c in cells])
    errors = np.array([[m - lo, hi - m] for m, lo, hi in cells]).T
    ax.errorbar(
        x,
        means,
        yerr=np.nan_to_num(errors),
        fmt='o',
        capsize=3,
        label=f'{d.variant} - {d.baseline} ({d.seeds} seeds)',
    )
  ax.set_xticks(range(len(labels)), labels, fontsize=9, rotation=20)
  ax.set_ylabel('difference (points)')
  ax.axhline(0, color='gray', linewidth=0.5)
  ax.axvline(len(labels) - 1.5, color='gray', linewidth=0.5)
  ax.set_title(
      'paired difference over seeds, mean and 95% t interval', fontsize=10
  )
  ax.legend(fontsize=8, ncol=len(differences), loc='upper right')


def plot_results(runs: Mapping[str, Sequence[RunResult]], path: str) -> str:
  """A PNG: accuracy per dataset (bars ± SE over seeds), then the paired
  differences with their 95% intervals (when a comparison has runs)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  groups = _groups(runs)
  differences = paired_differences(runs)
  panels = len(groups) + bool(differences)
  figure = Figure(figsize=(11, 3.6 * panels))
  FigureCanvasAgg(figure)
  axes = figure.subplots(panels, 1, squeeze=False)[:, 0]
  for ax, (datasets, names) in zip(axes, groups):
    _plot_accuracies(ax, runs, datasets, names)
  if differences:
    _plot_differences(axes[-1], differences)
  figure.tight_layout()
  figure.savefig(path, dpi=80)
  return path
