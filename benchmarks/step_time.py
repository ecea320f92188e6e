r"""Train-step time of SPT vs the plain T5 and vs prompt tuning, side by side.

Three networks of one T5 1.1 size, trained on the same random batch:

  t5              no prompt (SptConfig.num_memories = soft_prompt_length = 0)
  prompt_tuning   a 40-position soft prompt
  spt             256 memories x 10 vectors, top-4 concatenated: 40 positions

so prompt tuning and SPT encode the same number of positions, and SPT's
difference from prompt tuning is retrieval itself (query pooling, scoring the
bank, top-k, gather). Each step is `trainer.make_train_step` under `jax.jit`
(donated state, Adafactor as in T0, dropout 0.1), timed after a warm-up step,
interleaved, median of `--repeats`. With `--trainable=spt_only` (frozen
backbone) the plain T5 has nothing to train and is left out.

    python -m benchmarks.step_time --size=base --repeats=4
    python -m benchmarks.step_time --size=base --batch=2 --inputs=1024
    python -m benchmarks.step_time --size=tiny --repeats=3   # quick check

Writes benchmarks/results/step_time_<size>_<trainable>[_<overrides>].json.
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
import numpy as np  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from spt_jax.checkpoints import spt_params  # pylint: disable=g-import-not-at-top
from spt_jax.local import trainer  # pylint: disable=g-import-not-at-top
from spt_jax.model import config  # pylint: disable=g-import-not-at-top
from spt_jax.model import models  # pylint: disable=g-import-not-at-top
from spt_jax.model import network  # pylint: disable=g-import-not-at-top
from spt_jax.optim import adafactor  # pylint: disable=g-import-not-at-top

VARIANTS = {
    't5': config.NO_SPT,
    'prompt_tuning': config.SptConfig(
        num_memories=0, soft_prompt_length=common.PREFIX_LENGTH
    ),
    'spt': config.SptConfig(
        num_memories=common.NUM_MEMORIES,
        memory_length=common.MEMORY_LENGTH,
        top_k=common.TOP_K,
    ),
}


def random_batch(shapes: common.Shapes, vocab_size: int, seed: int = 0):
  """Full-length random inputs and targets (no padding)."""
  rng = np.random.default_rng(seed)
  targets = rng.integers(2, vocab_size, size=(shapes.batch, shapes.targets))
  return {
      'encoder_input_tokens': jnp.asarray(
          rng.integers(2, vocab_size, size=(shapes.batch, shapes.inputs)),
          jnp.int32,
      ),
      'decoder_input_tokens': jnp.asarray(
          np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], 1),
          jnp.int32,
      ),
      'decoder_target_tokens': jnp.asarray(targets, jnp.int32),
      'decoder_loss_weights': jnp.ones(targets.shape, jnp.float32),
  }


def backbone_params(cfg: config.T5Config, shapes: common.Shapes, seed: int):
  """Random T5 parameters, initialised once and shared by every variant."""
  model = models.SptModel(network.SptTransformer(cfg))
  input_shapes = {
      'encoder_input_tokens': (shapes.batch, shapes.inputs),
      'decoder_input_tokens': (shapes.batch, shapes.targets),
      'decoder_target_tokens': (shapes.batch, shapes.targets),
  }
  init = jax.jit(
      lambda r: model.get_initial_variables(r, input_shapes)['params']
  )
  return init(jax.random.PRNGKey(seed))


def compiled_step(model, optimizer, params, batch, trainable='all'):
  """(compiled step, initial state) of one variant."""
  optimizer = adafactor.with_param_axes(optimizer, trainer.params_axes(model))
  state = jax.jit(lambda p: trainer.TrainState.create(p, optimizer, trainable))(
      params
  )
  step = jax.jit(
      trainer.make_train_step(model, optimizer, trainable), donate_argnums=(0,)
  )
  compiled = step.lower(state, batch, jax.random.PRNGKey(0)).compile()
  return compiled, state


def variant_step(cfg, spt, backbone, optimizer, batch, seed, trainable='all'):
  """(compiled step, its `common.stepper`) of the backbone with `spt`.

  The SPT parameters (if `spt` has any) are initialised from `seed` onto
  the shared backbone, so that every variant starts from the same T5.
  """
  params = backbone
  if spt.prefix_length:
    params = spt_params.initialize_spt_params(
        backbone, jax.random.PRNGKey(seed), spt
    )
  model = models.SptModel(network.SptTransformer(cfg, spt))
  compiled, state = compiled_step(model, optimizer, params, batch, trainable)
  return compiled, common.stepper(compiled, state, batch)


def compiled_info(compiled, cfg, spt, shapes, trainable) -> dict:
  """Positions, FLOPs (XLA's and analytic) and XLA memory of one variant."""
  cost = common.xla_cost(compiled)
  memory = compiled.memory_analysis()
  return {
      'prefix_positions': spt.prefix_length,
      'encoder_positions': shapes.inputs + spt.prefix_length,
      'xla_flops': float(cost.get('flops', float('nan'))),
      'analytic_flops': common.t5_train_flops(
          cfg,
          shapes.batch,
          shapes.inputs + spt.prefix_length,
          shapes.targets,
          weight_gradients=trainable == 'all',
      ),
      'xla_temp_bytes': int(memory.temp_size_in_bytes),
      'xla_argument_bytes': int(memory.argument_size_in_bytes),
  }


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--size', choices=sorted(common.SHAPES), default='base')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument(
      '--trainable',
      choices=trainer.TRAINABLE_CHOICES,
      default='all',
      help='all: full fine-tuning (T0); spt_only: frozen backbone.',
  )
  parser.add_argument('--batch', type=int, help="Overrides the size's batch.")
  parser.add_argument('--inputs', type=int, help='Overrides the input length.')
  parser.add_argument('--seed', type=int, default=0)
  return parser.parse_args()


TABLE_COLUMNS = (
    'variant',
    'encoder_positions',
    'median_s',
    'min_s',
    'max_s',
    'cpu_median_s',
    'tokens_per_s',
    'xla_flops',
    'analytic_flops',
    'analytic_gflops_per_s',
)


def main() -> None:
  args = _parse_args()

  shapes = common.SHAPES[args.size]
  overrides = {
      k: getattr(args, k) for k in ('batch', 'inputs') if getattr(args, k)
  }
  shapes = dataclasses.replace(shapes, **overrides)
  result_name = f'step_time_{args.size}_{args.trainable}' + ''.join(
      f'_{k}{v}' for k, v in sorted(overrides.items())
  )
  cfg = config.t5_1_1_config(shapes.t5_size)
  batch = random_batch(shapes, cfg.vocab_size, args.seed)
  backbone = backbone_params(cfg, shapes, args.seed)
  optimizer = trainer.adafactor()

  # With a frozen backbone the plain T5 has nothing to train (no backward
  # pass at all), so it is no baseline there.
  variants = {
      name: spt
      for name, spt in VARIANTS.items()
      if args.trainable == 'all' or spt.prefix_length
  }
  steps, info = {}, {}
  for name, spt in variants.items():
    common.log(f'compiling {name}')
    compiled, steps[name] = variant_step(
        cfg, spt, backbone, optimizer, batch, args.seed + 1, args.trainable
    )
    info[name] = compiled_info(compiled, cfg, spt, shapes, args.trainable)

  times = common.time_interleaved(steps, args.repeats, jax.block_until_ready)
  tokens = shapes.batch * (shapes.inputs + shapes.targets)
  rows = []
  for name in variants:
    summary = common.summarize(times[name])
    rows.append(
        {
            'variant': name,
            **info[name],
            **summary,
            'tokens_per_s': tokens / summary['median_s'],
            'analytic_gflops_per_s': info[name]['analytic_flops']
            / summary['median_s']
            / 1e9,
        }
    )
  pairs = [('spt', 'prompt_tuning'), ('spt', 't5'), ('prompt_tuning', 't5')]
  pairs = [(a, b) for a, b in pairs if b in variants]
  ratios = common.ratios(rows, pairs)
  flops = {r['variant']: r['xla_flops'] for r in rows}
  flops_ratios = {
      f'xla_flops_{a}_over_{b}': flops[a] / flops[b] for a, b in pairs
  }
  common.print_table(rows, TABLE_COLUMNS)
  print()
  common.print_ratios(ratios)
  for key, value in flops_ratios.items():
    print(f'{key}: {value:.4f}')
  path = common.write_results(
      result_name,
      {
          'machine': common.machine(),
          'shapes': dataclasses.asdict(shapes),
          't5_config': {k: str(v) for k, v in vars(cfg).items()},
          'trainable': args.trainable,
          'optimizer': 'adafactor (trainer.adafactor defaults)',
          'tokens_per_step': tokens,
          'rows': rows,
          'ratios': ratios,
          'flops_ratios': flops_ratios,
      },
  )
  print(f'\nWrote {path}')


if __name__ == '__main__':
  main()
