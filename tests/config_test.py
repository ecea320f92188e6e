"""T5 sizes and SptConfig: validation at the boundary, prefix lengths."""

import numpy as np
import pytest

from spt_jax import gin_utils
from spt_jax.model import config
from spt_jax.model import retrieval


def test_t5_1_1_config_takes_the_named_size_and_overrides():
  cfg = config.t5_1_1_config('base', dropout_rate=0.0)
  assert (cfg.emb_dim, cfg.num_heads, cfg.num_encoder_layers) == (768, 12, 12)
  assert cfg.dropout_rate == 0.0 and cfg.vocab_size == config.T5_VOCAB_SIZE
  with pytest.raises(ValueError, match="Unknown T5 1.1 size 'huge'"):
    config.t5_1_1_config('huge')


@pytest.mark.parametrize(
    'fields, memory_positions',
    [
        (dict(num_memories=0, soft_prompt_length=3), 0),
        (dict(num_memories=8, top_k=3, memory_length=5), 15),
        (
            dict(
                num_memories=8, top_k=3, memory_length=5, combine='weighted_sum'
            ),
            5,
        ),
    ],
)
def test_prefix_length_counts_soft_and_memory_prompts(fields, memory_positions):
  spt = config.SptConfig(**fields)
  assert spt.memory_positions == memory_positions
  assert spt.prefix_length == spt.soft_prompt_length + memory_positions
  assert config.NO_SPT.prefix_length == 0


def test_strategy_names_are_the_implemented_ones():
  assert sorted(retrieval.STRATEGIES) == sorted(config.RETRIEVAL_STRATEGIES)
  for name in config.RETRIEVAL_STRATEGIES:  # Every choice builds a config.
    assert config.SptConfig(retrieval=name).retrieval == name


@pytest.mark.parametrize('strategy', ['softmax_topk', 'straight_through'])
def test_top_k_of_one_warns_that_keys_get_no_task_gradient(strategy, caplog):
  with caplog.at_level('WARNING'):
    config.SptConfig(num_memories=4, top_k=1, retrieval=strategy)
  assert 'keys get no gradient from the task loss' in caplog.text
  caplog.clear()
  with caplog.at_level('WARNING'):
    config.SptConfig(num_memories=4, top_k=1, retrieval='perturbed_topk')
  assert not caplog.text


@pytest.mark.parametrize(
    'fields, message',
    [
        (dict(num_memories=4, top_k=5), 'top_k must be in'),
        (dict(retrieval='gumbel'), 'Unknown SptConfig.retrieval'),
        (dict(similarity='l2'), 'Unknown SptConfig.similarity'),
        (dict(combine='mean'), 'Unknown SptConfig.combine'),
        (dict(query_pooling='cls'), 'Unknown SptConfig.query_pooling'),
        (dict(prompt_span='before_separator'), 'needs prompt_separator_id'),
        (dict(num_memories=10, top_k=4, top_k_chunks=3), 'must divide'),
        (dict(num_memories=12, top_k=5, top_k_chunks=3), 'must divide'),
        (dict(memory_init='zeros'), 'Unknown SptConfig.memory_init'),
        (dict(query_source='cls'), 'Unknown SptConfig.query_source'),
        (dict(prompt_span='middle'), 'Unknown SptConfig.prompt_span'),
        (dict(soft_prompt_length=-1), 'soft_prompt_length must be >= 0'),
        (dict(memory_length=0), 'memory_length must be >= 1'),
        (dict(temperature=0.0), 'temperature must be positive'),
        # Every other field is range- and type-checked too.
        (dict(num_memories=-1), 'num_memories must be >= 0'),
        (dict(prompt_length=-2), 'prompt_length must be >= 0'),
        (
            dict(num_memories=4, top_k=0),
            r'top_k must be in \[1, num_memories=4\]',
        ),
        (dict(top_k_chunks=0), 'top_k_chunks=0 must divide'),
        (dict(key_dim=0), 'key_dim must be >= 1 or None'),
        (dict(memory_init_scale=0.0), 'memory_init_scale must be positive'),
        (
            dict(approx_recall_target=0.0),
            r'approx_recall_target must be in \(0, 1\]',
        ),
        (
            dict(approx_recall_target=1.5),
            r'approx_recall_target must be in \(0, 1\]',
        ),
        (dict(perturbed_samples=0), 'perturbed_samples must be >= 1'),
        (
            dict(retrieval='perturbed_topk', perturbed_sigma=0.0),
            'perturbed_sigma must be positive',
        ),
        (
            dict(prompt_span='before_separator', prompt_separator_id=-1),
            r'prompt_separator_id must be a token id \(>= 0\) or None',
        ),
        (dict(top_k='2'), "top_k must be an integer, got '2' .*without quotes"),
        (dict(top_k=2.0), 'top_k must be an integer, got 2.0'),
        (
            dict(memory_length=True),
            'memory_length must be an integer, got True',
        ),
        (dict(temperature='0.1'), 'temperature must be a number'),
        (
            dict(temperature=float('nan')),
            'temperature must be a number, got nan',
        ),
        (dict(approx_top_k='yes'), 'approx_top_k must be True or False'),
        (
            dict(query_stop_gradient=1),
            'query_stop_gradient must be True or False',
        ),
        (dict(key_dim='16'), 'key_dim must be an integer or None'),
    ],
)
def test_bad_spt_config_is_named(fields, message):
  with pytest.raises(gin_utils.ConfigError, match=message):
    config.SptConfig(**fields)


def test_spt_config_takes_ints_for_floats_and_numpy_numbers():
  spt = config.SptConfig(
      temperature=1,
      num_memories=np.int64(8),
      top_k=2,
      key_dim=None,
      approx_top_k=np.bool_(True),
  )
  assert spt.temperature == 1 and spt.num_memories == 8
