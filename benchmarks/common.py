"""Shared pieces of the benchmarks: shapes, side-by-side timing, results.

Every benchmark times its variants side by side in one run, interleaved round
by round in a shuffled order (A C B, B A C, ...) after a warm-up call each,
so that drift of the machine (frequency, other load) hits all variants alike
and none always runs right after the same neighbour; it reports the median.
"""

import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
)

import jax
import numpy as np

RESULTS_DIR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), 'results'
)
# Load averages when the benchmark started: other processes on a shared
# machine disturb wall times.
_LOAD_AT_START = os.getloadavg()


@dataclasses.dataclass(frozen=True)
class Shapes:
  """A T5 1.1 size and the batch it is benchmarked on."""

  t5_size: str
  batch: int
  inputs: int
  targets: int


# Batch and lengths that fit a 2-core CPU in minutes; `base` is T5-base with
# T0's input/target ratio at a quarter of its lengths (512 / 64).
SHAPES = {
    'tiny': Shapes('tiny', batch=4, inputs=64, targets=16),
    'small': Shapes('small', batch=4, inputs=512, targets=64),
    'base': Shapes('base', batch=4, inputs=512, targets=64),
}
# SPT at the method note's defaults: 256 memories x 10 vectors, top-4,
# concatenated: 40 prepended positions. Prompt tuning gets the same 40.
NUM_MEMORIES = 256
MEMORY_LENGTH = 10
TOP_K = 4
PREFIX_LENGTH = TOP_K * MEMORY_LENGTH


class Measured(NamedTuple):
  """Times measured elsewhere (e.g. in a child process), used as given."""

  wall_s: float
  cpu_s: float


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    repeats: int,
    block: Callable[[Any], Any],
    warmup: int = 1,
    pause_s: float = 0.0,
    seed: int = 0,
) -> Dict[str, Dict[str, List[float]]]:
  """Wall and CPU seconds per call of each function, interleaved after warm-up.

  CPU time is the process's (all threads, `time.process_time`): on a shared
  machine it is far less disturbed by other processes than wall time. A
  function that returns `Measured` times (work done in another process)
  supplies its own.

  Args:
    fns: name -> zero-argument callable doing one unit of work.
    repeats: timed calls per function.
    block: waits for a result (`jax.block_until_ready`).
    warmup: untimed calls per function first (compilation, caches).
    pause_s: untimed sleep before each timed call, for the memory a large
      step freed to be settled before the next one starts.
    seed: seeds the order of each round.

  Returns:
    name -> {'wall_s': [...], 'cpu_s': [...]}, `repeats` values each.
  """
  for name, fn in fns.items():
    for _ in range(warmup):
      block(fn())
    log(f'warmed up {name}')
  times = {name: {'wall_s': [], 'cpu_s': []} for name in fns}
  order = np.random.default_rng(seed)
  for i in range(repeats):
    # A fresh order each round, so that no variant always follows the same one.
    names = [list(fns)[j] for j in order.permutation(len(fns))]
    for name in names:
      time.sleep(pause_s)
      wall, cpu = time.perf_counter(), time.process_time()
      result = block(fns[name]())
      if isinstance(result, Measured):
        wall, cpu = result
      else:
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
      del result  # Outputs (gigabytes of gradients) must not outlive the call.
      times[name]['wall_s'].append(wall)
      times[name]['cpu_s'].append(cpu)
    log(
        f'round {i + 1}/{repeats}: '
        + ', '.join(f'{n} {times[n]["wall_s"][-1]:.3g}s' for n in names)
    )
  return times


def stepper(compiled, state, batch) -> Callable[[], Any]:
  """A zero-argument callable: `compiled` stepped on its own (donated) state."""
  holder = {'state': state}

  def run():
    holder['state'], _ = compiled(holder['state'], batch, jax.random.PRNGKey(1))
    return holder['state']

  return run


def xla_cost(compiled) -> Dict[str, float]:
  """XLA's cost analysis of a compiled function (one dict on every backend)."""
  cost = compiled.cost_analysis()
  return cost[0] if isinstance(cost, (list, tuple)) else cost


def summarize(timing: Mapping[str, Sequence[float]]) -> Dict[str, Any]:
  """Median, min and max of wall time; median and min of CPU time."""
  wall, cpu = timing['wall_s'], timing['cpu_s']
  return {
      'median_s': statistics.median(wall),
      'min_s': min(wall),
      'max_s': max(wall),
      'cpu_median_s': statistics.median(cpu),
      'cpu_min_s': min(cpu),
      'repeats': len(wall),
      'wall_s': list(wall),
      'cpu_s': list(cpu),
  }


def ratios(rows, pairs) -> Dict[str, Dict[str, float]]:
  """Time ratios numerator/denominator of variants, by wall and CPU time.

  Args:
    rows: result rows with `variant` and the `summarize` fields.
    pairs: (numerator, denominator) variant names.

  Returns:
    '<a>_over_<b>' -> {'wall_median', 'wall_min', 'cpu_median'}.
  """
  by_name = {r['variant']: r for r in rows}
  fields = {
      'wall_median': 'median_s',
      'wall_min': 'min_s',
      'cpu_median': 'cpu_median_s',
  }
  return {
      f'{a}_over_{b}': {
          k: by_name[a][f] / by_name[b][f] for k, f in fields.items()
      }
      for a, b in pairs
  }


def print_ratios(table: Mapping[str, Mapping[str, float]]) -> None:
  print_table([{'ratio': name, **values} for name, values in table.items()])


def log(message: str) -> None:
  """Progress on stderr, so that stdout holds only the result table."""
  print(f'[{time.strftime("%H:%M:%S")}] {message}', file=sys.stderr, flush=True)


def t5_train_flops(
    cfg: Any,
    batch: int,
    encoder_length: int,
    decoder_length: int,
    weight_gradients: bool = True,
) -> float:
  """Matmul FLOPs of one T5 1.1 training step.

  Counts 2*m*n*k for every matmul of the forward pass: attention projections,
  attention scores and values, the gated MLP, and the output logits; norms,
  softmax and elementwise work are left out (as in the usual 6*N*tokens
  estimate). The backward pass costs the forward once for the activation
  gradients and once more for the weight gradients, which a frozen backbone
  skips (`weight_gradients=False`). `encoder_length` includes any prepended
  prompt positions; `cfg` is a `config.T5Config`.
  """
  emb_dim, mlp_dim, vocab_size = cfg.emb_dim, cfg.mlp_dim, cfg.vocab_size
  num_mlp_inputs = len(cfg.mlp_activations)
  num_encoder_layers = cfg.num_encoder_layers
  num_decoder_layers = cfg.num_decoder_layers
  inner = cfg.num_heads * cfg.head_dim
  t_enc, t_dec = encoder_length, decoder_length
  mlp = 2 * emb_dim * mlp_dim * (num_mlp_inputs + 1)
  attention = 2 * 4 * emb_dim * inner  # q, k, v, o projections per token.
  encoder_layer = t_enc * (attention + 2 * 2 * t_enc * inner + mlp)
  decoder_layer = (
      t_dec * (attention + 2 * 2 * t_dec * inner)  # self-attention
      + t_dec * 2 * 2 * emb_dim * inner  # cross-attention q, o
      + t_enc * 2 * 2 * emb_dim * inner  # cross-attention k, v
      + t_dec * 2 * 2 * t_enc * inner  # cross scores and values
      + t_dec * mlp
  )
  logits = t_dec * 2 * emb_dim * vocab_size
  forward = batch * (
      num_encoder_layers * encoder_layer
      + num_decoder_layers * decoder_layer
      + logits
  )
  return forward * (3 if weight_gradients else 2)


def machine() -> Dict[str, Any]:
  """What the numbers were measured on."""
  import jax  # pylint: disable=g-import-not-at-top

  return {
      'platform': platform.platform(),
      'processor': platform.processor() or platform.machine(),
      'cpu_count': os.cpu_count(),
      'python': platform.python_version(),
      'jax': jax.__version__,
      'jax_devices': [str(d) for d in jax.devices()],
      'jax_device_kind': jax.devices()[0].device_kind,
      'memory_gb': round(
          os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1e9, 1
      ),
      'load_average_1_5_15_min_at_start': _LOAD_AT_START,
      'load_average_1_5_15_min_at_end': os.getloadavg(),
  }


def write_results(name: str, payload: Mapping[str, Any]) -> str:
  """Writes `benchmarks/results/<name>.json`; returns its path."""
  os.makedirs(RESULTS_DIR, exist_ok=True)
  path = os.path.join(RESULTS_DIR, f'{name}.json')
  spec = getattr(sys.modules['__main__'], '__spec__', None)
  program = ['-m', spec.name] if spec else [sys.argv[0]]
  record = {
      'benchmark': name,
      'command': ' '.join(['python'] + program + sys.argv[1:]),
      'timestamp': time.strftime('%Y-%m-%d %H:%M:%S'),
      **payload,
  }
  with open(path, 'w') as f:
    json.dump(record, f, indent=2, default=_json_default)
  return path


def _json_default(value):
  if isinstance(value, (np.integer, np.floating)):
    return value.item()
  raise TypeError(f'Not JSON serialisable: {value!r}')


def print_table(
    rows: Sequence[Mapping[str, Any]], columns: Optional[Sequence[str]] = None
) -> None:
  """Prints rows as an aligned plain-text table."""
  columns = list(columns or rows[0])

  def cell(value):
    if isinstance(value, float):
      return f'{value:.4g}'
    return str(value)

  table = [columns] + [[cell(r.get(c, '')) for c in columns] for r in rows]
  widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
  for i, line in enumerate(table):
    print('  '.join(v.rjust(w) for v, w in zip(line, widths)))
    if i == 0:
      print('  '.join('-' * w for w in widths))
