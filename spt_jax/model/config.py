"""Configuration of the T5 backbone and of SPT's memory bank and prompts.

Both are frozen dataclasses so that gin can build them (`@config.T5Config()`)
and Flax modules can hold them as static attributes.
"""

import dataclasses
import math
import numbers
from typing import Any, Optional, Sequence

from absl import logging
import jax.numpy as jnp
import numpy as np

from spt_jax import gin_utils

# Shapes of the T5 1.1 and T5-LM-adapt checkpoints (vocabulary 32128): the one
# source of sizes; gin_configs/sizes/<size>.gin only names one (T5_SIZE) for
# `t5_1_1_config`.
T5_1_1_SIZES = {
    'tiny': dict(
        emb_dim=64,
        num_heads=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        head_dim=16,
        mlp_dim=128,
    ),
    'small': dict(
        emb_dim=512,
        num_heads=6,
        num_encoder_layers=8,
        num_decoder_layers=8,
        head_dim=64,
        mlp_dim=1024,
    ),
    'base': dict(
        emb_dim=768,
        num_heads=12,
        num_encoder_layers=12,
        num_decoder_layers=12,
        head_dim=64,
        mlp_dim=2048,
    ),
    'large': dict(
        emb_dim=1024,
        num_heads=16,
        num_encoder_layers=24,
        num_decoder_layers=24,
        head_dim=64,
        mlp_dim=2816,
    ),
    'xl': dict(
        emb_dim=2048,
        num_heads=32,
        num_encoder_layers=24,
        num_decoder_layers=24,
        head_dim=64,
        mlp_dim=5120,
    ),
    'xxl': dict(
        emb_dim=4096,
        num_heads=64,
        num_encoder_layers=24,
        num_decoder_layers=24,
        head_dim=64,
        mlp_dim=10240,
    ),
}
T5_VOCAB_SIZE = 32128

# The choices of SptConfig's named settings. SptConfig validates them once;
# the modules that implement them (memory_bank.py, retrieval.py, prompts.py)
# take them as given.
MEMORY_INITS = ('uniform', 'vocab_sample')
RETRIEVAL_STRATEGIES = ('softmax_topk', 'straight_through', 'perturbed_topk')
COMBINATIONS = ('concat', 'weighted_sum')
SIMILARITIES = ('cosine', 'dot')
QUERY_POOLINGS = ('mean', 'max')
QUERY_SOURCES = ('embeddings', 'first_layer')
PROMPT_SPANS = ('all_tokens', 'before_separator')
# How the keys get their gradient (see memory_bank.py).
KEY_GRADIENTS = ('dense', 'sampled')

# Retrieval strategies whose weights are a softmax over the k retrieved
# scores: with k = 1 the weight is 1 whatever the score.
_CONSTANT_WEIGHT_STRATEGIES = ('softmax_topk', 'straight_through')
# Retrieval strategies whose weights depend on the k selected scores alone.
_SELECTED_SCORE_STRATEGIES = ('softmax_topk', 'straight_through')
_CHOICES = {
    'memory_init': MEMORY_INITS,
    'retrieval': RETRIEVAL_STRATEGIES,
    'combine': COMBINATIONS,
    'similarity': SIMILARITIES,
    'query_pooling': QUERY_POOLINGS,
    'query_source': QUERY_SOURCES,
    'prompt_span': PROMPT_SPANS,
    'key_gradient': KEY_GRADIENTS,
}
# The type of each SptConfig field that is not one of the _CHOICES, as gin
# may bind it (`2`, `2.0`, `True`; an int where a float is expected).
_INT, _FLOAT, _BOOL = 'an integer', 'a number', 'True or False'
_FIELD_TYPES = {
    'num_memories': _INT,
    'memory_length': _INT,
    'key_dim': _INT,
    'memory_init_scale': _FLOAT,
    'top_k': _INT,
    'temperature': _FLOAT,
    'approx_top_k': _BOOL,
    'approx_recall_target': _FLOAT,
    'top_k_chunks': _INT,
    'perturbed_samples': _INT,
    'perturbed_sigma': _FLOAT,
    'query_stop_gradient': _BOOL,
    'prompt_length': _INT,
    'prompt_separator_id': _INT,
    'soft_prompt_length': _INT,
    'key_samples': _INT,
}
_OPTIONAL = ('key_dim', 'prompt_separator_id')
_EXAMPLES = {_INT: '4', _FLOAT: '0.1', _BOOL: 'True'}


def _invalid(message: str) -> None:
  raise gin_utils.ConfigError(message)


def _check_type(name: str, value: Any) -> None:
  """Fails unless an SptConfig field has its type (see _FIELD_TYPES)."""
  kind = _FIELD_TYPES.get(name)
  if kind is None or (value is None and name in _OPTIONAL):
    return
  if kind == _BOOL:
    ok = isinstance(value, (bool, np.bool_))
  elif isinstance(value, (bool, np.bool_)):
    ok = False  # True is an int to Python, not a count.
  elif kind == _INT:
    ok = isinstance(value, numbers.Integral)
  else:
    ok = isinstance(value, numbers.Real) and math.isfinite(value)
  if not ok:
    optional = ' or None' if name in _OPTIONAL else ''
    how = 'without quotes, ' if isinstance(value, str) else ''
    _invalid(
        f'SptConfig.{name} must be {kind}{optional}, got {value!r} (a '
        f'{type(value).__name__}); bind it {how}e.g. '
        f'--gin.SptConfig.{name}={_EXAMPLES[kind]}.'
    )


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyper-parameters of a T5 1.1 encoder-decoder."""

  vocab_size: int = T5_VOCAB_SIZE
  dtype: Any = jnp.float32  # Activation dtype; parameters stay float32.
  emb_dim: int = 512
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  head_dim: int = 64
  mlp_dim: int = 2048
  mlp_activations: Sequence[str] = ('gelu', 'linear')
  dropout_rate: float = 0.1
  logits_via_embedding: bool = False
  float32_attention_logits: bool = False
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  # Recompute each layer's activations in the backward pass ('none', 'full',
  # 'dots': keep matmul outputs, recompute the rest).
  remat_policy: str = 'none'


def t5_1_1_config(size: str, **overrides) -> T5Config:
  """The T5 1.1 config of a named size ('tiny', 'small', ..., 'xxl')."""
  if size not in T5_1_1_SIZES:
    raise ValueError(
        f'Unknown T5 1.1 size {size!r}; expected one of {list(T5_1_1_SIZES)}.'
    )
  return T5Config(**{**T5_1_1_SIZES[size], **overrides})


@dataclasses.dataclass(frozen=True)
class SptConfig:
  """SPT's memory bank, retrieval and prompt settings.

  `num_memories=0` with `soft_prompt_length=0` is the plain backbone; with only
  `soft_prompt_length > 0` it is prompt tuning.

  These defaults are the one source of SPT's settings: gin files and flags bind
  only what they change (`config.SptConfig.top_k = 2`,
  `--gin.SptConfig.top_k=2`).
  """

  # Memory bank: `num_memories` prompts of `memory_length` vectors, with keys.
  # The paper's bank size, memory length and k are not public; these follow
  # L2P's setting (256 memories x 10 vectors, k = 4) and are meant to be swept.
  num_memories: int = 256
  memory_length: int = 10
  key_dim: Optional[int] = None  # Defaults to the model width.
  memory_init: str = 'uniform'  # One of MEMORY_INITS.
  memory_init_scale: float = 0.5
  # Retrieval (see retrieval.py).
  top_k: int = 4
  retrieval: str = 'softmax_topk'
  combine: str = 'concat'
  similarity: str = 'cosine'
  temperature: float = 0.1
  approx_top_k: bool = False  # jax.lax.approx_max_k, for 1e5-1e6 on TPU.
  approx_recall_target: float = 0.95
  top_k_chunks: int = 1
  perturbed_samples: int = 16
  perturbed_sigma: float = 0.1
  # 'dense': every key is scored with gradient, the balance loss's softmax
  # spans all M, and the keys' gradient is [M, D]. 'sampled': the keys' cost
  # is O(B*k + key_samples) rows: selection on scores without gradient, the
  # selected scores recomputed from their gathered keys, and the balance
  # loss's partition gradient estimated from `key_samples` uniform draws
  # (`retrieval.sampled_balance_loss`); with gin_configs/*/sparse_bank.gin the
  # touched keys are updated lazily, as the values are.
  key_gradient: str = 'dense'
  key_samples: int = 64
  # Query from the discrete prompt (see prompts.py).
  query_pooling: str = 'mean'  # One of QUERY_POOLINGS.
  query_source: str = 'embeddings'  # One of QUERY_SOURCES.
  query_stop_gradient: bool = True
  # The discrete prompt rides in the last `prompt_length` positions of
  # `encoder_input_tokens` (spt_jax.model.feature_converters puts it there), so that
  # every T5X code path, which passes encoder tokens alone, sees it. With 0,
  # the query is pooled over `prompt_span` of the input itself: 'all_tokens',
  # or 'before_separator' with `prompt_separator_id`.
  prompt_length: int = 0
  prompt_span: str = 'all_tokens'
  prompt_separator_id: Optional[int] = None
  # Parametric soft prompt, prepended before the memory prompt.
  soft_prompt_length: int = 0

  def __post_init__(self):
    """Validates every setting, once: the SPT modules take them as given.

    Raises:
      gin_utils.ConfigError: naming the first unusable field, its value and
        what it may be (a ValueError; the local runner prints it alone).
    """
    self._check_choices_and_types()
    if self.num_memories:
      self._check_bank()
    self._check_scales()
    if self.key_gradient == 'sampled':
      self._check_sampled_keys()
    self._check_prompt()

  def _check_choices_and_types(self):
    """Choices, types and counts that may not be negative."""
    for name, allowed in _CHOICES.items():
      if getattr(self, name) not in allowed:
        _invalid(
            f'Unknown SptConfig.{name} {getattr(self, name)!r}; expected one '
            f'of {allowed}.'
        )
    for field in dataclasses.fields(self):
      _check_type(field.name, getattr(self, field.name))
    for name in ('num_memories', 'soft_prompt_length', 'prompt_length'):
      if getattr(self, name) < 0:
        _invalid(f'SptConfig.{name} must be >= 0, got {getattr(self, name)}.')

  def _check_bank(self):
    """top_k, memory_length and top_k_chunks of a bank with memories."""
    if not 0 < self.top_k <= self.num_memories:
      _invalid(
          f'SptConfig.top_k must be in [1, num_memories={self.num_memories}], '
          f'got {self.top_k}: it is the number of memories each example '
          'retrieves.'
      )
    if self.memory_length < 1:
      _invalid(
          f'SptConfig.memory_length must be >= 1, got {self.memory_length}.'
      )
    if (
        self.top_k_chunks < 1
        or self.num_memories % self.top_k_chunks
        or (self.num_memories // self.top_k_chunks < self.top_k)
    ):
      _invalid(
          f'SptConfig.top_k_chunks={self.top_k_chunks} must divide '
          f'num_memories={self.num_memories} into chunks of at least '
          f'top_k={self.top_k} memories (1: a single top-k).'
      )
    if self.top_k == 1 and self.retrieval in _CONSTANT_WEIGHT_STRATEGIES:
      logging.warning(
          'SptConfig: top_k=1 with retrieval=%r weights the one retrieved '
          'memory by a softmax over a single score, which is constant: the '
          'keys get no gradient from the task loss, only from the pull '
          "loss. Use top_k >= 2 or retrieval='perturbed_topk' to train "
          'them through the task.',
          self.retrieval,
      )

  def _check_scales(self):
    """Widths, scales and sample counts."""
    if self.key_dim is not None and self.key_dim < 1:
      _invalid(
          f'SptConfig.key_dim must be >= 1 or None (the model width), got '
          f'{self.key_dim}.'
      )
    if self.memory_init == 'uniform' and not self.memory_init_scale > 0:
      _invalid(
          'SptConfig.memory_init_scale must be positive with '
          f"memory_init='uniform' (values are drawn from [-scale, scale]), "
          f'got {self.memory_init_scale}.'
      )
    if not self.temperature > 0:
      _invalid(
          f'SptConfig.temperature must be positive, got {self.temperature}.'
      )
    if not 0 < self.approx_recall_target <= 1:
      _invalid(
          'SptConfig.approx_recall_target must be in (0, 1], got '
          f'{self.approx_recall_target}.'
      )
    if self.perturbed_samples < 1:
      _invalid(
          'SptConfig.perturbed_samples must be >= 1, got '
          f'{self.perturbed_samples}.'
      )

  def _check_sampled_keys(self):
    """The settings `key_gradient='sampled'` needs."""
    if self.retrieval not in _SELECTED_SCORE_STRATEGIES:
      _invalid(
          f"SptConfig.key_gradient='sampled' needs retrieval in "
          f'{_SELECTED_SCORE_STRATEGIES} (weights of the selected scores '
          f'alone), got {self.retrieval!r}.'
      )
    if self.key_samples < 1:
      _invalid(
          f'SptConfig.key_samples must be >= 1 (keys drawn per step for the '
          f"balance loss of key_gradient='sampled'), got {self.key_samples}."
      )

  def _check_prompt(self):
    """Perturbed top-k's noise and the discrete prompt's span."""
    # Perturbed top-k averages top-k over noise of this scale: with none it
    # is a hard top-k whose gradient is 0 / 0.
    if not self.perturbed_sigma > 0:
      _invalid(
          'SptConfig.perturbed_sigma must be positive (the scale of the '
          f'noise of perturbed top-k), got {self.perturbed_sigma}.'
      )
    if (
        self.prompt_span == 'before_separator'
        and self.prompt_separator_id is None
    ):
      _invalid(
          "SptConfig.prompt_span='before_separator' needs prompt_separator_id."
      )
    if self.prompt_separator_id is not None and self.prompt_separator_id < 0:
      _invalid(
          'SptConfig.prompt_separator_id must be a token id (>= 0) or None, '
          f'got {self.prompt_separator_id}.'
      )

  @property
  def memory_positions(self) -> int:
    """Encoder positions the retrieved memory prompt occupies."""
    if self.num_memories == 0:
      return 0
    k = self.top_k if self.combine == 'concat' else 1
    return k * self.memory_length

  @property
  def prefix_length(self) -> int:
    """Encoder positions prepended to every example."""
    return self.soft_prompt_length + self.memory_positions


NO_SPT = SptConfig(num_memories=0, soft_prompt_length=0)
