"""config.init_from: runs start from a HuggingFace directory or one of our workdirs."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers
from helpers import HF_LLAMA, LLAMA_BLOCK

from models import hf
from train import context, init_from, loop


def _tiny_llama_dir(tmp_path, vocab_size=257):
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(
    **HF_LLAMA, vocab_size=vocab_size, intermediate_size=64, tie_word_embeddings=False
  )
  path = str(tmp_path / 'hf')
  transformers.LlamaForCausalLM(cfg).save_pretrained(path)
  return path


def _llama_overrides(path):
  return {
    'init_from': f'hf:{path}',
    **{f'model.{k}': v for k, v in LLAMA_BLOCK.items()},
    'model.norm_eps': 1e-6,
    'model.tie_embeddings': False,
    'model.n_kv_heads': 2,
  }


def test_training_starts_from_hf_checkpoint(tiny_config, tmp_path):
  path = _tiny_llama_dir(tmp_path)
  config = tiny_config(_llama_overrides(path))
  r = context.setup(config)
  params = init_from.params_fn(config)(r)
  _, ref = hf.import_checkpoint(path)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), ref)
  assert params['layers']['mlp']['wi'].sharding == r.state_shardings.params['layers']['mlp']['wi']
  result = loop.run(config, str(tmp_path / 'w'), init_params_fn=init_from.params_fn(config))
  assert np.isfinite(result['eval/loss'])


def test_shape_mismatch_names_the_tensor(tiny_config, tmp_path):
  path = _tiny_llama_dir(tmp_path)
  config = tiny_config({**_llama_overrides(path), 'model.d_ff': 96})
  with pytest.raises(ValueError, match='mlp.up_proj.weight'):
    init_from.params_fn(config)(context.setup(config))


def test_start_from_our_workdir(tiny_config, trained_workdir, tmp_path):
  first = trained_workdir
  config = tiny_config({'init_from': first})
  r = context.setup(config)
  _, trained = init_from.load_params(first)
  jax.tree.map(
    np.testing.assert_array_equal,
    jax.device_get(init_from.params_fn(config)(r)),
    jax.device_get(trained),
  )
  bad = tiny_config({'init_from': first, 'model.d_model': 64})
  with pytest.raises(ValueError, match=r"\['embed'\]"):
    init_from.params_fn(bad)(context.setup(bad))
  other = tiny_config(
    {'init_from': first, 'model.parametrization': 'mup', 'model.base_d_model': 16}
  )
  with pytest.raises(ValueError, match='parametrization/base shape'):
    init_from.params_fn(other)(context.setup(other))
  # A μP workdir (same shapes; its config.json says mup) refuses a changed forward multiplier.
  mup_dir = str(tmp_path / 'mup')
  shutil.copytree(first, mup_dir)
  with open(os.path.join(mup_dir, 'config.json')) as f:
    saved = json.load(f)
  saved['model']['parametrization'] = 'mup'
  with open(os.path.join(mup_dir, 'config.json'), 'w') as f:
    json.dump(saved, f)
  kw = {'init_from': mup_dir, 'model.parametrization': 'mup'}
  jax.device_get(init_from.params_fn(tiny_config(kw))(context.setup(tiny_config(kw))))
  mult = tiny_config({**kw, 'model.mup_attn_mult': 2.0})
  with pytest.raises(ValueError, match="'mup_attn_mult': 2.0"):
    init_from.params_fn(mult)(context.setup(mult))
