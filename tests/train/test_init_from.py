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

import models
from models import hf
from train import context, init_from, loop, validation


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
  r = context.setup(validation.derive(config))
  params = init_from.params_fn(config)(r)
  _, ref = hf.import_checkpoint(path)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), ref)
  assert params['layers']['mlp']['wi'].sharding == r.state_shardings.params['layers']['mlp']['wi']
  result = loop.run(
    validation.derive(config), str(tmp_path / 'w'), init_params_fn=init_from.params_fn(config)
  )
  assert np.isfinite(result['eval/loss'])


def test_shape_mismatch_names_the_tensor(tiny_config, tmp_path):
  path = _tiny_llama_dir(tmp_path)
  config = tiny_config({**_llama_overrides(path), 'model.d_ff': 96})
  with pytest.raises(ValueError, match='mlp.up_proj.weight'):
    init_from.params_fn(config)(context.setup(validation.derive(config)))


def test_start_from_our_workdir(tiny_config, trained_workdir, tmp_path):
  first = trained_workdir
  config = tiny_config({'init_from': first})
  r = context.setup(validation.derive(config))
  _, trained = init_from.load_params(first)
  jax.tree.map(
    np.testing.assert_array_equal,
    jax.device_get(init_from.params_fn(config)(r)),
    jax.device_get(trained),
  )
  bad = tiny_config({'init_from': first, 'model.d_model': 64})
  with pytest.raises(ValueError, match=r"\['embed'\]"):
    init_from.params_fn(bad)(context.setup(validation.derive(bad)))
  other = tiny_config(
    {'init_from': first, 'model.parametrization': 'mup', 'model.base_d_model': 16}
  )
  with pytest.raises(ValueError, match='parametrization/base shape'):
    init_from.params_fn(other)(context.setup(validation.derive(other)))
  # A μP workdir (same shapes; its config.json says mup) refuses a changed forward multiplier.
  mup_dir = str(tmp_path / 'mup')
  shutil.copytree(first, mup_dir)
  with open(os.path.join(mup_dir, 'config.json')) as f:
    saved = json.load(f)
  saved['model']['parametrization'] = 'mup'
  with open(os.path.join(mup_dir, 'config.json'), 'w') as f:
    json.dump(saved, f)
  kw = {'init_from': mup_dir, 'model.parametrization': 'mup'}
  jax.device_get(
    init_from.params_fn(tiny_config(kw))(context.setup(validation.derive(tiny_config(kw))))
  )
  mult = tiny_config({**kw, 'model.mup_attn_mult': 2.0})
  with pytest.raises(ValueError, match="'mup_attn_mult': 2.0"):
    init_from.params_fn(mult)(context.setup(validation.derive(mult)))


def test_peft_adapter_directory_as_a_source(tiny_config, tmp_path):
  """'peft:DIR' (a PEFT adapter on the HF base its adapter_config.json names): its LoRA settings
  read from the files, its params base + adapters (merged for a config without LoRA), the run's
  LoRA settings checked against it in one line naming the field; a missing base is one line."""
  from models import lora, peft_adapter

  path = _tiny_llama_dir(tmp_path)
  over = {
    **_llama_overrides(path),
    'model.lora_rank': 3,
    'model.lora_alpha': 6.0,
    'model.lora_targets': ('query', 'mlp_out'),
  }
  config = tiny_config(over)
  cfg = context.setup(validation.derive(config), with_data=False).derived.model
  base_cfg, base = hf.import_checkpoint(path, lora.base_config(cfg))
  rng = np.random.RandomState(0)
  shapes = lora.split(models.param_shapes(cfg))[1]
  adapters = jax.tree.map(lambda s: 0.1 * rng.standard_normal(s.shape).astype(np.float32), shapes)
  adapter_dir = str(tmp_path / 'adapter')
  peft_adapter.export_adapter(cfg, lora.combine(base, adapters), adapter_dir, base_model=path)
  src = f'peft:{adapter_dir}'
  got = init_from.source_model_config(src)
  assert (got.lora_rank, got.lora_alpha, set(got.lora_targets)) == (3, 6.0, {'query', 'mlp_out'})
  over['init_from'] = src
  peft_config = tiny_config(over)
  params = init_from.params_fn(peft_config)(
    context.setup(validation.derive(peft_config), with_data=False)
  )
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  jax.tree.map(close, jax.device_get(params), lora.combine(base, adapters))
  _, merged = init_from.load_params(src, base_cfg)
  jax.tree.map(close, jax.device_get(merged), lora.merge(cfg, lora.combine(base, adapters)))
  bad = tiny_config({**over, 'model.lora_rank': 2})
  with pytest.raises(ValueError, match='lora_rank=2, but .* has 3: set config.model.lora_rank=3'):
    init_from.params_fn(bad)(context.setup(validation.derive(bad), with_data=False))
  for key, value, needle in (
    ('lora_targets', ('query',), r'config.model.lora_targets=\(.query.,\), but the modules'),
    ('lora_alpha', 3.0, 'config.model.lora_alpha=3.0, .* set config.model.lora_alpha=6.0'),
  ):
    with pytest.raises(ValueError, match=needle) as e:
      init_from.check_peft_config(src, cfg.replace(**{key: value}))
    assert '\n' not in str(e.value)
  config_file = os.path.join(adapter_dir, 'adapter_config.json')
  with open(config_file) as f:
    saved = json.load(f)
  for name, needle in (('', 'base_model_name_or_path is empty'), ('gpt2', 'is no directory here')):
    with open(config_file, 'w') as f:
      json.dump({**saved, 'base_model_name_or_path': name}, f)
    with pytest.raises(ValueError, match=needle):
      init_from.source_model_config(src)
