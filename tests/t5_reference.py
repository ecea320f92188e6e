"""A tiny random T5 1.1 from `transformers`, the oracle for parity tests.

Imported only by tests; `torch` and `transformers` come from
requirements-test.txt, and tests that need them skip when they are absent.
"""

import numpy as np

from spt_jax.checkpoints import hf_checkpoints

TINY_HF_CONFIG = dict(
    vocab_size=96,
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_layers=2,
    num_decoder_layers=3,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
    feed_forward_proj='gated-gelu',
    tie_word_embeddings=False,
    dropout_rate=0.0,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
)


def tiny_hf_t5(seed: int = 0, **config_overrides):
  """A T5ForConditionalGeneration with every weight drawn at random.

  Args:
    seed: torch's seed.
    **config_overrides: `transformers.T5Config` fields that replace
      `TINY_HF_CONFIG`'s.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(
      transformers.T5Config(**{**TINY_HF_CONFIG, **config_overrides})
  )
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith('layer_norm.weight'):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif 'shared' in name or 'relative_attention_bias' in name:
        p.copy_(torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) / np.sqrt(p.shape[-1]))
  return model.eval()


def state_dict_numpy(model):
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def converted(model):
  """(T5Config, params) of our network holding the model's weights."""
  cfg = hf_checkpoints.t5_config_from_hf(model.config.to_dict())
  return cfg, hf_checkpoints.params_from_hf_state_dict(
      state_dict_numpy(model), cfg
  )


def hf_logits(model, encoder_tokens, decoder_input_tokens):
  """Teacher-forced logits [B, L, V] of the torch model, as numpy."""
  import torch  # pylint: disable=g-import-not-at-top

  encoder_tokens = torch.tensor(np.asarray(encoder_tokens), dtype=torch.long)
  with torch.no_grad():
    out = model(
        input_ids=encoder_tokens,
        attention_mask=(encoder_tokens > 0).long(),
        decoder_input_ids=torch.tensor(
            np.asarray(decoder_input_tokens), dtype=torch.long
        ),
    )
  return out.logits.numpy()
