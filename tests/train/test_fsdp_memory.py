"""FSDP on 8 simulated devices: each device holds 1/8 of the params and Adam moments (within 5 %),
measured from the shards the arrays actually place on each device."""

import collections

import jax
import ml_collections
import numpy as np
import pytest
from helpers import LLAMA_BLOCK

import models
from configs import base
from train import optimizer as optim
from train import sharding
from train import state as state_lib


def per_device_bytes(tree) -> dict:
  """device -> bytes of the shards of `tree`'s arrays stored on it."""
  out = collections.Counter()
  for x in jax.tree.leaves(tree):
    for shard in x.addressable_shards:
      out[shard.device] += shard.data.nbytes
  return out


@pytest.mark.parametrize('family', [pytest.param('gpt2', marks=pytest.mark.slow), 'llama'])
def test_fsdp_state_bytes_per_device_are_an_eighth(family):
  m = base.get_model_config()
  m.update(vocab_size=512, d_model=256, n_layers=2, n_heads=8, d_ff=1024, max_len=64)
  if family == 'llama':
    m.update(LLAMA_BLOCK, n_kv_heads=4, tie_embeddings=False)
  model = models.ModelConfig.make(m)
  mesh = sharding.make_mesh(ml_collections.ConfigDict({'data': 1, 'fsdp': 8, 'tensor': 1}))
  assert mesh.devices.size == 8
  tx = optim.make_optimizer(base.get_config().optimizer, 100, model)
  state = state_lib.init_state(model, tx, state_lib.state_shardings(model, tx, mesh))
  total = sum(x.nbytes for x in jax.tree.leaves((state.params, state.opt_state)))
  per_device = per_device_bytes((state.params, state.opt_state))
  assert len(per_device) == 8
  ratios = np.array(list(per_device.values())) / (total / 8)
  print(f'{family}: total {total / 2**20:.2f} MiB, per device / (total / 8) = {ratios.round(4)}')
  np.testing.assert_allclose(ratios, 1.0, atol=0.05)
