r"""A peer, side by side: prompt tuning in PyTorch (transformers, peft) vs ours.

The same T5 1.1 shapes (random weights, gated-GELU, untied output layer,
dropout 0.1), the same batch, and a 40-position prompt in every variant, with
a frozen backbone as prompt tuning trains it and AdamW (lr 1e-3) on the
trained parameters:

  torch_peft_prompt_tuning   T5ForConditionalGeneration + peft PromptTuning;
                             one step = forward, backward, AdamW, zero_grad
  jax_prompt_tuning          trainer.make_train_step(trainable='spt_only'),
                             which differentiates the prompt alone, as torch
                             skips the gradients of frozen weights; a
                             40-position soft prompt
  jax_spt                    the same with SPT (256 memories x 10, top-4)

PyTorch runs in a child process with torch.set_num_threads(os.cpu_count()),
which is also the size of XLA's CPU thread pool (one thread per core). The
parent interleaves its steps with the JAX steps in a shuffled order, each
timed where it runs (a torch step is timed inside the child), with an untimed
pause before each (`--pause_s`). Without them the measurements disturbed each
other: in one process the JAX step right after a torch step ran 20-35% slower
than its twin elsewhere in the round, and with torch in a child process but
no pause the step right after it was still about 10% slower.

peft gives a seq2seq model 80 prompt vectors (`num_transformer_submodules=2`)
but, with `decoder_input_ids` given, prepends only the first 40 to the encoder
input, as the JAX variants do; the other 40 get no gradient.

    python -m benchmarks.peft_peer --size=base --repeats=5
"""

import argparse
import dataclasses
import multiprocessing
import os
import sys
import time
from typing import Dict

if __package__ in (None, ''):
  sys.path.insert(
      0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  )

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import optax  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from benchmarks import step_time  # pylint: disable=g-import-not-at-top
from spt_jax.checkpoints import spt_params  # pylint: disable=g-import-not-at-top
from spt_jax.model import config  # pylint: disable=g-import-not-at-top
from spt_jax.model import models  # pylint: disable=g-import-not-at-top
from spt_jax.model import network  # pylint: disable=g-import-not-at-top

LEARNING_RATE = 1e-3


def _torch_worker(conn, dims: Dict[str, int], batch, threads: int) -> None:
  """Child process: builds the peft model, then times one step per request."""
  import peft  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(
      transformers.T5Config(
          **dims,
          feed_forward_proj='gated-gelu',
          tie_word_embeddings=False,
          decoder_start_token_id=0,
          pad_token_id=0,
          eos_token_id=1,
      )
  )
  model = peft.get_peft_model(
      model,
      peft.PromptTuningConfig(
          task_type=peft.TaskType.SEQ_2_SEQ_LM,
          num_virtual_tokens=common.PREFIX_LENGTH,
          prompt_tuning_init=peft.PromptTuningInit.RANDOM,
      ),
  )
  model.train()
  trained = [p for p in model.parameters() if p.requires_grad]
  optimizer = torch.optim.AdamW(trained, lr=LEARNING_RATE)
  tensors = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
  conn.send(
      {
          'torch': torch.__version__,
          'torch_threads': torch.get_num_threads(),
          'torch_trained_parameters': sum(p.numel() for p in trained),
      }
  )
  while conn.recv() == 'step':
    wall, cpu = time.perf_counter(), time.process_time()
    loss = model(
        input_ids=tensors['encoder_input_tokens'],
        attention_mask=(tensors['encoder_input_tokens'] > 0).long(),
        decoder_input_ids=tensors['decoder_input_tokens'],
        labels=tensors['decoder_target_tokens'],
    ).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # PyTorch on CPU is synchronous.
    conn.send(
        common.Measured(time.perf_counter() - wall, time.process_time() - cpu)
    )


def torch_prompt_tuning_step(cfg: config.T5Config, batch, threads: int):
  """(step callable, info, stop callable) of the peft model in a child process.

  The callable returns the step's `common.Measured` times from the child.
  """
  dims = dict(
      vocab_size=cfg.vocab_size,
      d_model=cfg.emb_dim,
      d_kv=cfg.head_dim,
      d_ff=cfg.mlp_dim,
      num_layers=cfg.num_encoder_layers,
      num_decoder_layers=cfg.num_decoder_layers,
      num_heads=cfg.num_heads,
      relative_attention_num_buckets=cfg.relative_attention_num_buckets,
      relative_attention_max_distance=cfg.relative_attention_max_distance,
      dropout_rate=cfg.dropout_rate,
  )
  context = multiprocessing.get_context('spawn')
  conn, child_conn = context.Pipe()
  worker = context.Process(
      target=_torch_worker,
      args=(
          child_conn,
          dims,
          {
              k: np.asarray(v)
              for k, v in batch.items()
              if k != 'decoder_loss_weights'
          },
          threads,
      ),
      daemon=True,
  )
  worker.start()
  info = conn.recv()

  def step():
    conn.send('step')
    return conn.recv()

  def stop():
    conn.send('stop')
    worker.join()

  return step, info, stop


def jax_step(cfg, spt, backbone, batch, seed):
  """A zero-argument callable: one jitted JAX step with a frozen backbone."""
  params = spt_params.initialize_spt_params(
      backbone, jax.random.PRNGKey(seed), spt
  )
  model = models.SptModel(network.SptTransformer(cfg, spt))
  optimizer = optax.adamw(LEARNING_RATE)
  compiled, state = step_time.compiled_step(
      model, optimizer, params, batch, trainable='spt_only'
  )
  return common.stepper(compiled, state, batch)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--size', choices=sorted(common.SHAPES), default='base')
  parser.add_argument('--repeats', type=int, default=4)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument(
      '--pause_s',
      type=float,
      default=2.0,
      help='Untimed pause before each timed step (see module docstring).',
  )
  args = parser.parse_args()

  shapes = common.SHAPES[args.size]
  cfg = config.t5_1_1_config(shapes.t5_size)
  batch = step_time.random_batch(shapes, cfg.vocab_size, args.seed)
  backbone = step_time.backbone_params(cfg, shapes, args.seed)
  prompt_tuning = step_time.VARIANTS['prompt_tuning']
  threads = os.cpu_count()
  common.log('building the PyTorch model and compiling the JAX steps')
  torch_step, torch_info, stop_torch = torch_prompt_tuning_step(
      cfg, batch, threads
  )
  steps = {
      'torch_peft_prompt_tuning': torch_step,
      'jax_prompt_tuning': jax_step(
          cfg, prompt_tuning, backbone, batch, args.seed
      ),
      'jax_spt': jax_step(
          cfg, step_time.VARIANTS['spt'], backbone, batch, args.seed
      ),
  }

  times = common.time_interleaved(
      steps, args.repeats, jax.block_until_ready, pause_s=args.pause_s
  )
  stop_torch()
  tokens = shapes.batch * (shapes.inputs + shapes.targets)
  rows = []
  for name, timing in times.items():
    summary = common.summarize(timing)
    rows.append(
        {
            'variant': name,
            **summary,
            'tokens_per_s': tokens / summary['median_s'],
        }
    )
  torch_name = 'torch_peft_prompt_tuning'
  ratios = common.ratios(
      rows,
      [(name, torch_name) for name in steps if name != torch_name]
      + [('jax_spt', 'jax_prompt_tuning')],
  )
  common.print_table(
      rows,
      ['variant', 'median_s', 'min_s', 'max_s', 'cpu_median_s', 'tokens_per_s'],
  )
  print()
  common.print_ratios(ratios)
  path = common.write_results(
      f'peft_peer_{args.size}',
      {
          'machine': {**common.machine(), **torch_info},
          'shapes': dataclasses.asdict(shapes),
          'prefix_length': common.PREFIX_LENGTH,
          'optimizer': f'AdamW lr {LEARNING_RATE} on the prompt (and bank)',
          'pause_s': args.pause_s,
          'rows': rows,
          'ratios': ratios,
      },
  )
  print(f'\nWrote {path}')


if __name__ == '__main__':
  main()
