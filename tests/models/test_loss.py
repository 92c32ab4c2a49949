"""The one token NLL: chunked cross-entropy equals the plain one (value and gradients), holds far
less temporary memory, and compute-only vocabulary padding changes neither counts nor export."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models import hf, loss
from scaling import budget
from train.step import lm_loss

BASE = models.ModelConfig(vocab_size=301, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=32)


def loss_and_grads(cfg, params, tokens):
  return jax.jit(jax.value_and_grad(lambda p: lm_loss(cfg)(p, {'tokens': tokens})[0]))(params)


@pytest.mark.parametrize('tie', [True, pytest.param(False, marks=pytest.mark.slow)])
def test_chunked_and_padded_loss_equal_plain(tie):
  cfg = BASE.replace(tie_embeddings=tie)
  params = models.init(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (4, 33), 0, cfg.vocab_size)
  tokens = tokens.at[0, 5:9].set(-1)  # masked targets stay masked.
  want, want_grads = loss_and_grads(cfg, params, tokens)
  for variant in (
    cfg.replace(loss_chunk=8),
    cfg.replace(vocab_multiple=128),
    cfg.replace(loss_chunk=4, vocab_multiple=128),
  ):
    got, grads = loss_and_grads(variant, params, tokens)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
      np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)
  nll_BxL, mask_BxL = loss.token_nll(
    cfg.replace(loss_chunk=8), params, tokens[:, :-1], tokens[:, 1:]
  )
  assert nll_BxL.shape == (4, 32) and float(mask_BxL.sum()) == 4 * 32 - 4


def test_chunked_loss_never_holds_full_logits():
  """Compiled temporaries of loss+grad at L=256: growing the vocabulary from 256 to 8192 adds at
  least the whole-row float32 logits (32 MiB) to the plain loss, almost nothing to the chunked."""
  tokens = jax.ShapeDtypeStruct((4, 257), jnp.int32)

  def temp_bytes(vocab_size, loss_chunk):
    cfg = BASE.replace(
      vocab_size=vocab_size, max_len=256, tie_embeddings=False, loss_chunk=loss_chunk
    )
    params = jax.eval_shape(lambda: models.init(cfg, jax.random.key(0)))
    fn = jax.jit(jax.grad(lambda p, t: lm_loss(cfg)(p, {'tokens': t})[0]))
    return fn.lower(params, tokens).compile().memory_analysis().temp_size_in_bytes

  logits_bytes = 4 * 256 * 8192 * 4
  small, plain, chunked = temp_bytes(256, 0), temp_bytes(8192, 0), temp_bytes(8192, 32)
  print(
    f'temp MiB: vocab 256 {small / 2**20:.1f}; vocab 8192 plain {plain / 2**20:.1f}, '
    f'chunked {chunked / 2**20:.1f}'
  )
  assert plain - small >= logits_bytes
  assert chunked - small < logits_bytes / 4


def test_vocab_padding_is_compute_only(tmp_path):
  cfg = BASE.replace(tie_embeddings=False)
  padded = cfg.replace(vocab_multiple=128)
  assert jax.tree.map(lambda s: s.shape, models.param_shapes(padded)) == jax.tree.map(
    lambda s: s.shape, models.param_shapes(cfg)
  )
  assert budget.param_counts(padded) == budget.param_counts(cfg)
  params = models.init(cfg, jax.random.key(0))
  tokens = np.arange(16, dtype=np.int32)[None] % cfg.vocab_size
  logits = models.logits(padded, params, tokens)
  assert logits.shape[-1] == cfg.vocab_size
  np.testing.assert_allclose(logits, models.logits(cfg, params, tokens), atol=1e-5)
  hf.export_checkpoint(padded, params, str(tmp_path))
  back_cfg, back = hf.import_checkpoint(str(tmp_path))
  assert back_cfg.vocab_size == cfg.vocab_size
  jax.tree.map(np.testing.assert_array_equal, back, params)
