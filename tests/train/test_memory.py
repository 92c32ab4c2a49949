"""The memory estimate (train/memory.py) against XLA's compiled memory analysis of the real train
step, and the one-line refusal of a step that cannot fit."""

import jax
import pytest

import models
from models.config import ModelConfig
from train import memory

TOLERANCE = 0.15  # |estimate / compiled - 1|; 21 shapes measured on XLA:CPU were within 0.13.
ONE_DEVICE = {'data': 1, 'fsdp': 1, 'tensor': 1}


def _compiled_bytes(m: ModelConfig, batch: int, seq_len: int, k: int) -> int:
  from configs import base

  return memory.compiled_bytes(m, base.get_config().optimizer, batch, seq_len, k)


@pytest.mark.parametrize(
  'overrides,batch,k',
  [
    ({}, 16, 1),
    ({'remat': 'full'}, 16, 1),
    ({'mlp': 'swiglu', 'n_kv_heads': 2, 'tie_embeddings': False, 'vocab_size': 1024}, 16, 2),
    ({'lora_rank': 8}, 16, 1),  # Adam moments and gradients of the adapters only.
    ({'lora_rank': 1024}, 16, 1),  # x @ A of every adapter: the largest activations here.
  ],
)
def test_estimate_is_within_tolerance_of_the_compiled_step(overrides, batch, k):
  m = ModelConfig(d_model=128, n_layers=3, n_heads=4, d_ff=512, max_len=128, **overrides)
  est = memory.estimate(m, ONE_DEVICE, batch // k, 128, k)
  compiled = _compiled_bytes(m, batch, 128, k)
  assert abs(est.total / compiled - 1) < TOLERANCE, (est, compiled)


def test_params_are_counted_per_device_under_the_sharding_table():
  m = ModelConfig(d_model=128, n_layers=2, n_heads=4, d_ff=512)
  whole = memory.param_bytes(m, ONE_DEVICE)
  assert whole == 4 * sum(x.size for x in jax.tree.leaves(models.param_shapes(m)))
  # fsdp=8 splits every 'embed' dim (all matrices); norms, biases and positions stay whole.
  split = memory.param_bytes(m, {'data': 1, 'fsdp': 8, 'tensor': 1})
  assert whole / 8 < split < whole / 4


def test_a_step_that_cannot_fit_is_refused_in_one_line():
  m = ModelConfig(d_model=16384, d_ff=65536, n_heads=128)
  est = memory.estimate(m, ONE_DEVICE, 32, 256, limit=24 * memory.GIB)
  with pytest.raises(ValueError) as e:
    memory.check(est)
  msg = str(e.value)
  assert '\n' not in msg and 'of 24.00 GiB available' in msg and 'config.mesh.fsdp' in msg
  memory.check(memory.estimate(ModelConfig(), ONE_DEVICE, 32, 256, limit=24 * memory.GIB))


def test_an_eval_batch_that_cannot_fit_is_refused_naming_it():
  """The eval forward counts too (issue 35: an eval batch of 2M rows passed and ran out of memory)."""
  m = ModelConfig(d_model=64, n_layers=2, n_heads=4, d_ff=256)
  fits = memory.estimate(m, ONE_DEVICE, 8, 256, limit=memory.GIB, eval_batch=8)
  memory.check(fits)
  assert fits.eval and fits.total == fits.params + fits.optimizer + fits.grads + fits.activations
  est = memory.estimate(m, ONE_DEVICE, 8, 256, limit=memory.GIB, eval_batch=2_000_000)
  with pytest.raises(
    ValueError, match=r'eval \d+\.\d+; .*use a smaller config.train.eval_batch_size'
  ):
    memory.check(est)
