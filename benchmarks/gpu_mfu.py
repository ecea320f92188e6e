r"""Model FLOPs utilisation of a T5-base SPT training step in bfloat16 on a GPU.

Times `trainer.make_train_step` (full fine-tuning, Adafactor, dropout 0.1,
bfloat16 activations with float32 parameters, as T5X trains) for the plain
T5, prompt tuning and SPT side by side, and reports

  MFU = model FLOPs per step / median step time / peak dense bf16 FLOP/s

Model FLOPs are analytic (`common.t5_train_flops`: every matmul of the
forward pass, times 3 for forward + backward, prompt positions included;
retrieval's [B, H] x [H, M] scoring adds < 0.01% and is left out). XLA's own
count (`compiled.cost_analysis()['flops']`, which also counts elementwise and
optimizer work) is reported beside it. Peak: 989 TFLOP/s dense bf16 for H100
SXM and H200 (the same tensor cores), 312 for A100; override with
--peak_tflops.

    python -m benchmarks.gpu_mfu --batch=64 --inputs=512 --targets=64

Without a GPU it says so and exits with status 0. `--allow_cpu` runs the same
code on the CPU as a smoke test (the MFU figure is then meaningless).
"""

import argparse
import dataclasses
import os
import sys

if __package__ in (None, ''):
  sys.path.insert(
      0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  )

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from benchmarks import step_time  # pylint: disable=g-import-not-at-top
from spt_jax.local import trainer  # pylint: disable=g-import-not-at-top
from spt_jax.model import config  # pylint: disable=g-import-not-at-top

# Dense bfloat16 tensor-core peaks, FLOP/s, by device-kind substring.
PEAK_BF16_FLOPS = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12}


def peak_flops(device_kind: str, override_tflops=None) -> float:
  if override_tflops:
    return override_tflops * 1e12
  for name, peak in PEAK_BF16_FLOPS.items():
    if name in device_kind:
      return peak
  raise ValueError(
      f'No known bf16 peak for {device_kind!r}; pass --peak_tflops.'
  )


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
      '--size', choices=sorted(config.T5_1_1_SIZES), default='base'
  )
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--inputs', type=int, default=512)
  parser.add_argument('--targets', type=int, default=64)
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--peak_tflops', type=float, default=None)
  parser.add_argument('--allow_cpu', action='store_true')
  parser.add_argument(
      '--variants',
      default=','.join(step_time.VARIANTS),
      help='Comma-separated subset of the variants (one compile each: on a '
      'short lease, --variants=spt).',
  )
  args = parser.parse_args()
  unknown = sorted(set(args.variants.split(',')) - set(step_time.VARIANTS))
  if unknown:
    parser.error(
        f'unknown variants {unknown}; choose from {list(step_time.VARIANTS)}'
    )
  return args


def main() -> None:
  args = _parse_args()
  variants = args.variants.split(',')

  try:
    devices = jax.devices('gpu')
  except RuntimeError:
    devices = []
  if not devices and not args.allow_cpu:
    print(
        'No GPU visible to JAX (jax.devices() = '
        f'{[str(d) for d in jax.devices()]}); the MFU benchmark needs one. '
        'Nothing was measured.'
    )
    return
  device = devices[0] if devices else jax.devices()[0]
  peak = peak_flops(device.device_kind, args.peak_tflops)

  shapes = common.Shapes(args.size, args.batch, args.inputs, args.targets)
  cfg = config.t5_1_1_config(args.size, dtype=jnp.bfloat16)
  batch = step_time.random_batch(shapes, cfg.vocab_size)
  backbone = step_time.backbone_params(cfg, shapes, seed=0)
  optimizer = trainer.adafactor()
  steps, flops = {}, {}
  for name in variants:
    spt = step_time.VARIANTS[name]
    common.log(f'compiling {name}')
    compiled, steps[name] = step_time.variant_step(
        cfg, spt, backbone, optimizer, batch, seed=1
    )
    flops[name] = step_time.compiled_info(compiled, cfg, spt, shapes, 'all')

  times = common.time_interleaved(
      steps, args.repeats, jax.block_until_ready, warmup=2
  )
  rows = []
  for name, timing in times.items():
    summary = common.summarize(timing)
    rows.append(
        {
            'variant': name,
            **flops[name],
            **summary,
            'mfu': flops[name]['analytic_flops'] / summary['median_s'] / peak,
            'xla_flops_utilisation': flops[name]['xla_flops']
            / summary['median_s']
            / peak,
            'tokens_per_s': shapes.batch
            * (shapes.inputs + shapes.targets)
            / summary['median_s'],
        }
    )
  common.print_table(
      rows,
      [
          'variant',
          'median_s',
          'tokens_per_s',
          'analytic_flops',
          'mfu',
          'xla_flops_utilisation',
      ],
  )
  path = common.write_results(
      f'gpu_mfu_{args.size}' + ('_cpu_smoke' if not devices else ''),
      {
          'machine': common.machine(),
          'device_kind': device.device_kind,
          'peak_flops': peak,
          'shapes': dataclasses.asdict(shapes),
          'dtype': 'bfloat16 activations, float32 parameters',
          'rows': rows,
      },
  )
  print(f'\nWrote {path}')


if __name__ == '__main__':
  main()
