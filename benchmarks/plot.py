r"""Plots the benchmark results in benchmarks/results/*.json.

    python -m benchmarks.plot

Writes benchmarks/step_time.png (train-step time of T5, prompt tuning and SPT,
and the PyTorch peer) and benchmarks/retrieval_scaling.png (retrieval time
and memory against the bank size), from whichever results exist.
"""

import glob
import json
import os
import sys

if __package__ in (None, ''):
  sys.path.insert(
      0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  )

from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top

OUT_DIR = os.path.dirname(os.path.abspath(__file__))


def _load(pattern):
  results = []
  for path in sorted(glob.glob(os.path.join(common.RESULTS_DIR, pattern))):
    with open(path) as f:
      results.append(json.load(f))
  return results


def _bars(axes, rows, title):
  """Median step times with min-max bars, labelled with ratios to the first."""
  names = [r['variant'] for r in rows]
  medians = [r['median_s'] for r in rows]
  errors = [
      [m - r['min_s'] for m, r in zip(medians, rows)],
      [r['max_s'] - m for m, r in zip(medians, rows)],
  ]
  bars = axes.bar(
      range(len(rows)), medians, yerr=errors, capsize=3, color='tab:blue'
  )
  base = medians[0]
  for bar, median in zip(bars, medians):
    axes.annotate(
        f'{median:.2f}s\n{median / base:.3f}x',
        (bar.get_x() + bar.get_width() / 2, median),
        ha='center',
        va='bottom',
        fontsize=7,
    )
  axes.set_xticks(
      range(len(rows)), [n.replace('_', '\n') for n in names], fontsize=7
  )
  axes.set_ylabel('train step, s (median; bars min-max)')
  axes.set_title(title, fontsize=9)
  axes.margins(y=0.25)


def plot_step_times(path):
  panels = [
      (
          r,
          f'{r["shapes"]["t5_size"]} T5 1.1, batch {r["shapes"]["batch"]}, '
          f'{r["shapes"]["inputs"]}/{r["shapes"]["targets"]} tokens, '
          f'trainable={r["trainable"]}\n(ratios vs {r["rows"][0]["variant"]})',
      )
      for r in _load('step_time_*.json')
  ] + [
      (
          r,
          f'PyTorch peer, {r["shapes"]["t5_size"]}, frozen backbone, AdamW\n'
          f'(ratios vs torch + peft)',
      )
      for r in _load('peft_peer_*.json')
  ]
  if not panels:
    return None
  columns = min(len(panels), 2)
  rows = -(-len(panels) // columns)
  figure = Figure(figsize=(6.5 * columns, 4.5 * rows))
  FigureCanvasAgg(figure)
  axes = figure.subplots(rows, columns, squeeze=False).reshape(-1)
  for ax in axes[len(panels) :]:
    ax.set_visible(False)
  for ax, (result, title) in zip(axes, panels):
    _bars(ax, result['rows'], title)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  return path


def plot_retrieval(path):
  results = _load('retrieval_scaling.json')
  if not results:
    return None
  rows = results[0]['rows']
  figure = Figure(figsize=(13, 4.5))
  FigureCanvasAgg(figure)
  time_axes, memory_axes = figure.subplots(1, 2)
  series = sorted({(r['setting'], r['method'], r['mode']) for r in rows})
  for setting, method, mode in series:
    points = sorted(
        (r['num_memories'], r['median_s'], r['xla_total_bytes'])
        for r in rows
        if (r['setting'], r['method'], r['mode']) == (setting, method, mode)
    )
    sizes = [p[0] for p in points]
    style = '-' if mode == 'forward' else '--'
    marker = {'one device': 'o', 'one device of 8': 's'}.get(setting, '^')
    label = f'{setting}: {method}, {mode}'
    time_axes.plot(
        sizes, [p[1] for p in points], style, marker=marker, label=label
    )
    memory_axes.plot(
        sizes, [p[2] / 2**20 for p in points], style, marker=marker, label=label
    )
  for ax, ylabel in (
      (time_axes, 'median time, s'),
      (memory_axes, 'XLA memory per device, MiB'),
  ):
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('memories in the bank (1e6: memory length 1, else 10)')
    ax.set_ylabel(ylabel)
    ax.grid(True, which='both', alpha=0.3)
  time_axes.set_title(
      f'retrieval: batch {results[0]["batch"]}, width {results[0]["width"]}, '
      f'top-{results[0]["top_k"]}',
      fontsize=9,
  )
  memory_axes.set_title('arguments + outputs + temporaries', fontsize=9)
  memory_axes.legend(fontsize=6, loc='upper left')
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  return path


def main() -> None:
  for path in (
      plot_step_times(os.path.join(OUT_DIR, 'step_time.png')),
      plot_retrieval(os.path.join(OUT_DIR, 'retrieval_scaling.png')),
  ):
    if path:
      print(f'Wrote {path}')


if __name__ == '__main__':
  main()
