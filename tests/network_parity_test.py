"""Parity of the network (SPT disabled) with `transformers`' T5 1.1 in fp32."""

import numpy as np
import pytest

pytest.importorskip('torch')
pytest.importorskip('transformers')

from spt_jax.model import network  # pylint: disable=g-import-not-at-top
from tests import params_test_utils  # pylint: disable=g-import-not-at-top
from tests import t5_reference  # pylint: disable=g-import-not-at-top

ATOL = 1e-4


@pytest.fixture(scope='module')
def reference():
  model = t5_reference.tiny_hf_t5()
  cfg, params = t5_reference.converted(model)
  return model, network.SptTransformer(cfg), params


def _batch():
  rng = np.random.default_rng(0)
  encoder = rng.integers(2, 96, size=(3, 11))
  encoder[1, 7:] = 0  # Padded rows exercise the masks.
  encoder[2, 4:] = 0
  targets = rng.integers(2, 96, size=(3, 6))
  decoder_inputs = np.concatenate([np.zeros((3, 1), int), targets[:, :-1]], 1)
  return encoder, decoder_inputs, targets


def test_forward_logits_match(reference):
  model, net, params = reference
  encoder, decoder_inputs, targets = _batch()
  ours = net.apply(
      {'params': params}, encoder, decoder_inputs, targets, enable_dropout=False
  )
  theirs = t5_reference.hf_logits(model, encoder, decoder_inputs)
  assert ours.shape == theirs.shape == (3, 6, 96)
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=ATOL, rtol=0)


def test_cached_decoding_matches_step_by_step(reference):
  model, net, params = reference
  encoder, decoder_inputs, targets = _batch()
  theirs = t5_reference.hf_logits(model, encoder, decoder_inputs)
  length = decoder_inputs.shape[1]
  encoded = net.apply(
      {'params': params}, encoder, enable_dropout=False, method=net.encode
  )
  cached = params_test_utils.cached_decode_logits(
      net, params, encoded, encoder, decoder_inputs
  )
  for step in range(length):
    np.testing.assert_allclose(
        cached[:, step],
        theirs[:, step],
        atol=ATOL,
        rtol=0,
        err_msg=f'decode step {step}',
    )
