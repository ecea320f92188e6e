"""T5 sizes and SptConfig: validation at the boundary, prefix lengths."""

import pytest

from spt_jax import config
from spt_jax import retrieval


def test_t5_1_1_config_takes_the_named_size_and_overrides():
  cfg = config.t5_1_1_config('base', dropout_rate=0.0)
  assert (cfg.emb_dim, cfg.num_heads, cfg.num_encoder_layers) == (768, 12, 12)
  assert cfg.dropout_rate == 0.0 and cfg.vocab_size == config.T5_VOCAB_SIZE
  with pytest.raises(ValueError, match="Unknown T5 1.1 size 'huge'"):
    config.t5_1_1_config('huge')


@pytest.mark.parametrize('fields, memory_positions', [
    (dict(num_memories=0, soft_prompt_length=3), 0),
    (dict(num_memories=8, top_k=3, memory_length=5), 15),
    (dict(num_memories=8, top_k=3, memory_length=5, combine='weighted_sum'), 5),
])
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


@pytest.mark.parametrize('fields, message', [
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
])
def test_bad_spt_config_is_named(fields, message):
  with pytest.raises(ValueError, match=message):
    config.SptConfig(**fields)
