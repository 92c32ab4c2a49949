"""LoRA variants against peft: targets by role (key and value apart, 'key_value' still both),
lora_dropout (active in training steps only) and DoRA (magnitude from the base's column norms,
forward, gradients and merge as peft's), each exported in the PEFT format and imported back."""

import functools
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import models
from models import lora
from models.config import ModelConfig
from train import step, validation

CFG = ModelConfig(
  vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=16, dtype='float32'
)


def _adapted(cfg):
  flat = traverse_util.flatten_dict(models.param_shapes(cfg))
  return {'/'.join(k)[: -len('_lora_a')] for k in flat if k[-1].endswith('_lora_a')}


def _config(model: ModelConfig):
  from configs import base

  c = base.get_config()
  c.model.update(dict(model.__dict__))
  c.data.seq_len = model.max_len
  return c


def test_targets_by_role_key_and_value_apart():
  """'key' and 'value' are targets of their own (their kernels' logical axes differ in the head
  width's name); 'key_value' is both; DoRA adds an m [layers, 1, fan_out...] per adapted kernel,
  trained with B's lr; the schema names a bad target, dropout or DoRA setting in one line."""
  one = lambda *t: _adapted(CFG.replace(lora_rank=2, lora_targets=t))
  assert one('value') == {'layers/attn/value'}
  assert one('key') == {'layers/attn/key'}
  assert one('key_value') == one('key', 'value') == {'layers/attn/key', 'layers/attn/value'}
  cfg = CFG.replace(lora_rank=2, lora_targets=('value', 'mlp_out'), lora_dora=True)
  shapes = traverse_util.flatten_dict(models.param_shapes(cfg))
  axes = traverse_util.flatten_dict(models.logical_axes(cfg))
  m = ('layers', 'attn', 'value_lora_m')
  assert shapes[m].shape == (2, 1, 4, 8)
  assert tuple(axes[m]) == ('layers', 'dora', 'kv_heads', 'v_head_dim')
  trainable = traverse_util.flatten_dict(models.trainable(cfg))
  assert {k[-1] for k, t in trainable.items() if t} == {
    f'{k}_lora_{x}' for k in ('value', 'wo') for x in 'abm'
  }
  lr = traverse_util.flatten_dict(models.param_scales(cfg.replace(lora_lr_ratio=4.0), 'lr'))
  assert lr[m] == lr[('layers', 'attn', 'value_lora_b')] == 4.0  # LoRA+ as peft's loraplus.
  for overrides, needle in [
    ({'lora_rank': 2, 'lora_targets': ('key', 'v')}, "choose from ('query', 'key', 'value'"),
    ({'lora_rank': 2, 'lora_dropout': 1.0}, 'config.model.lora_dropout must be in [0, 1)'),
    ({'lora_dropout': 0.1}, 'config.model.lora_dropout: applies to LoRA adapters'),
    ({'lora_dora': True}, 'config.model.lora_dora: applies to LoRA adapters'),
  ]:
    with pytest.raises(ValueError, match=re.escape(needle)) as e:
      validation.derive(_config(CFG.replace(**overrides)), jax.device_count())
    assert '\n' not in str(e.value)


def test_lora_dropout_only_in_training_steps():
  """With model.lora_dropout the loss of a batch carrying a training step's dropout keys differs
  from the dropout-free one (another step's keys: another loss); without keys
  (evaluation) it equals the dropout-free loss. DoRA adapters (their path drops out x·W as well
  as the adapter's input; plain LoRA's is the same code without that)."""
  batch = {'tokens': jnp.arange(34).reshape(2, 17) % 64}
  cfg = CFG.replace(n_layers=1, lora_rank=2, lora_dropout=0.3, lora_dora=True)
  params = models.init(cfg, jax.random.key(0))
  params = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(1), x.shape), params)
  evaluated, plain, *train = (float(x) for x in _dropout_losses(cfg, batch, params))
  assert evaluated == pytest.approx(plain, rel=1e-6)
  assert train[0] != train[1]
  assert abs(train[0] - plain) > 1e-3 * plain  # (summed over 32 tokens: ~1e3 float32 ulps)


@functools.partial(jax.jit, static_argnums=0)
def _dropout_losses(cfg, batch, params):
  """(eval loss, dropout-free loss, train losses with step 0's and step 1's keys)."""
  loss, plain = step.lm_loss(cfg), step.lm_loss(cfg.replace(lora_dropout=0.0))
  keys = lambda s: {**batch, step.DROPOUT_KEYS: step.dropout_keys(0, jnp.asarray(s), 2)}
  train = [loss(params, keys(s))[0] for s in (0, 1)]
  return loss(params, batch)[0], plain(params, batch)[0], *train


# --- peft ------------------------------------------------------------------------------------

CASES = {  # family, targets, DoRA
  'llama_value': ('llama', ('value',), False),
  'gpt2_value': ('gpt2', ('value',), False),  # one part of the fused c_attn.
  'llama_dora': ('llama', ('query', 'value', 'attn_out', 'mlp_in'), True),
  'gpt2_dora': ('gpt2', ('query', 'value', 'mlp_out'), True),  # c_attn's key part: no adapter.
}


def _hf_base(family, tmp_path):
  import transformers
  from helpers import HF_GPT2, HF_LLAMA, make_hf, save

  cls, kw = (
    (transformers.GPT2Config, dict(HF_GPT2, vocab_size=101))
    if family == 'gpt2'
    else (transformers.LlamaConfig, dict(HF_LLAMA, vocab_size=97, intermediate_size=48))
  )
  return save(make_hf(cls, kw), tmp_path / 'base'), kw['vocab_size']


def _torch(model, tokens):
  import torch

  return model(torch.from_numpy(tokens).long()).logits.float()


LLAMA_DORA_MODULES = [
  'mlp.gate_proj',
  'mlp.up_proj',
  'self_attn.o_proj',
  'self_attn.q_proj',
  'self_attn.v_proj',
]


def _perturbed(adapters):
  """A and B + 0.1·noise; m × (1 + 0.1·noise) (away from the base's norms, still positive)."""
  flat = traverse_util.flatten_dict(adapters)
  out = {}
  for i, (k, x) in enumerate(sorted(flat.items())):
    noise = 0.1 * jax.random.normal(jax.random.key(i), x.shape)
    out[k] = x * (1 + noise) if k[-1].endswith('_lora_m') else x + noise
  return traverse_util.unflatten_dict(out)


# LLaMA's DoRA case (value apart from key among its targets) runs by default; the others are slow
# (the fused c_attn is covered by default in test_lora.py's gpt2_query_mlp_out).
@pytest.mark.parametrize(
  'case', [c if c == 'llama_dora' else pytest.param(c, marks=pytest.mark.slow) for c in CASES]
)
def test_peft_parity(case, tmp_path):
  """Our adapters on an imported random HF base, exported: peft loads them onto the HF base with
  our logits (1e-4; after A, B and m are moved off their init), the merged HF checkpoint gives
  them too, and importing the adapter back gives them (1e-5). A value-only adapter targets
  v_proj alone (LLaMA) or c_attn's value block (GPT-2). DoRA: a fresh m (set from the base by
  lora.init_magnitudes) is peft's own fresh lora_magnitude_vector, and the gradients of the
  loss in A, B and m are peft's (its norm detached). lora_dropout is exported, inactive in eval."""
  import peft
  import torch
  import transformers

  from models import hf, peft_adapter

  family, targets, dora = CASES[case]
  base_dir, vocab = _hf_base(family, tmp_path)
  base_cfg, base_params = hf.import_checkpoint(base_dir)
  cfg = base_cfg.replace(
    lora_rank=3, lora_alpha=6.0, lora_targets=targets, lora_dora=dora, lora_dropout=0.1
  )
  fresh = lora.combine(base_params, lora.split(models.init(cfg, jax.random.key(0)))[1])
  fresh = lora.init_magnitudes(cfg, fresh)
  params = lora.combine(base_params, _perturbed(lora.split(fresh)[1]))
  tokens = np.random.RandomState(0).randint(0, vocab, (2, 12)).astype(np.int32)
  ours = np.asarray(models.logits(cfg, params, tokens))
  assert np.abs(ours - np.asarray(models.logits(base_cfg, base_params, tokens))).max() > 1e-2

  out = str(tmp_path / 'adapter')
  peft_adapter.export_adapter(cfg, params, out, base_model=base_dir)
  config = json.load(open(f'{out}/adapter_config.json'))
  assert config['use_dora'] == dora and config['lora_dropout'] == 0.1
  if family == 'llama':  # key and value apart: v_proj without k_proj.
    want = {'llama_value': ['self_attn.v_proj'], 'llama_dora': LLAMA_DORA_MODULES}[case]
    assert config['target_modules'] == want
  model = peft.PeftModel.from_pretrained(
    transformers.AutoModelForCausalLM.from_pretrained(base_dir), out, is_trainable=dora
  ).eval()
  with torch.no_grad():
    np.testing.assert_allclose(ours, _torch(model, tokens).numpy(), atol=1e-4)
  hf.export_checkpoint(lora.base_config(cfg), lora.merge(cfg, params), str(tmp_path / 'merged'))
  merged = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / 'merged')).eval()
  with torch.no_grad():
    np.testing.assert_allclose(ours, _torch(merged, tokens).numpy(), atol=1e-4)
  back = peft_adapter.import_adapter(out, cfg)
  np.testing.assert_allclose(
    models.logits(cfg, lora.combine(base_params, back), tokens), ours, atol=1e-5
  )
  if dora:
    _check_dora_init(cfg, fresh, base_dir, tmp_path, config['target_modules'])
  if dora and family == 'llama':
    _check_dora_grads(cfg, params, model, tokens, tmp_path)


def _check_dora_init(cfg, fresh, base_dir, tmp_path, modules):
  """Our fresh DoRA adapter's exported magnitudes equal peft's fresh ones (its init: ||W||)."""
  import peft
  import safetensors.numpy
  import transformers

  from models import peft_adapter

  peft_adapter.export_adapter(cfg, fresh, str(tmp_path / 'fresh'))
  ours = safetensors.numpy.load_file(str(tmp_path / 'fresh' / 'adapter_model.safetensors'))
  base = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
  conf = peft.LoraConfig(
    r=3, lora_alpha=6.0, target_modules=modules, use_dora=True, fan_in_fan_out='c_attn' in modules
  )
  theirs = peft.get_peft_model_state_dict(peft.get_peft_model(base, conf))
  mags = {k: v for k, v in theirs.items() if 'magnitude' in k}
  assert mags and mags.keys() == {k for k in ours if 'magnitude' in k}
  for k, v in mags.items():
    np.testing.assert_allclose(ours[k], v.detach().numpy(), rtol=1e-5, err_msg=k)


def _check_dora_grads(cfg, params, model, tokens, tmp_path):
  """d(sum(logits · R))/d(A, B, m) equal peft's (to 1e-4 of each tensor's largest), compared in
  the PEFT layout by exporting our gradients as if they were an adapter."""
  import safetensors.numpy
  import torch

  from models import peft_adapter

  weights = np.random.RandomState(1).randn(*tokens.shape, cfg.vocab_size).astype(np.float32)
  base, adapters = lora.split(params)
  loss = lambda a: jnp.sum(models.logits(cfg, lora.combine(base, a), tokens) * weights)
  peft_adapter.export_adapter(
    cfg, lora.combine(base, jax.grad(loss)(adapters)), str(tmp_path / 'g')
  )
  ours = safetensors.numpy.load_file(str(tmp_path / 'g' / 'adapter_model.safetensors'))
  model.zero_grad()
  (_torch(model, tokens) * torch.from_numpy(weights)).sum().backward()
  theirs = {
    n.replace('.default', '').replace('vector.weight', 'vector'): p.grad.numpy()
    for n, p in model.named_parameters()
    if p.grad is not None
  }
  assert theirs.keys() == ours.keys() and any('magnitude' in k for k in ours)
  for k, g in ours.items():
    np.testing.assert_allclose(g, theirs[k], atol=1e-4 * np.abs(g).max(), err_msg=k)


# Slow (two LoRA runs, three exports): test_peft_parity covers DoRA and dropout by default.
@pytest.mark.slow
def test_dora_dropout_run_from_a_pretrained_workdir(tiny_config, tmp_path):
  """A DoRA run with dropout init_from a pretrained workdir starts at the base's function (m =
  its kernels' column norms, not a random init's); dropout acts in its training steps (the same
  run without it ends elsewhere); train.tools.export's adapter names the base workdir and gives the
  run's logits in peft on the exported base."""
  import peft
  import torch
  import transformers

  from train import context, init_from, loop
  from train.tools import export

  shape = {'model.n_layers': 1}
  pre = str(tmp_path / 'pre')
  loop.run(validation.derive(tiny_config(shape)), pre, stop_after=1)
  lora_keys = {'init_from': pre, 'model.lora_rank': 4, 'model.lora_dora': True}
  config = tiny_config({**shape, **lora_keys, 'model.lora_dropout': 0.3, 'optimizer.lr': 1e-2})
  cfg = validation.derive(config, jax.device_count()).model
  start = init_from.params_fn(config)(context.setup(validation.derive(config), with_data=False))
  tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 16)).astype(np.int32)
  _, pre_params = init_from.load_params(pre, lora.base_config(cfg))
  np.testing.assert_allclose(
    models.logits(cfg, start, tokens),
    models.logits(lora.base_config(cfg), pre_params, tokens),
    atol=1e-5,
  )
  runs = {}
  for p in (0.3, 0.0):
    c = tiny_config({**shape, **lora_keys, 'model.lora_dropout': p, 'optimizer.lr': 1e-2})
    runs[p] = loop.run(
      validation.derive(c), str(tmp_path / f'dora{p}'), init_params_fn=init_from.params_fn(c)
    )
  assert runs[0.3]['train/loss'] != runs[0.0]['train/loss']
  work = str(tmp_path / 'dora0.3')
  cfg, params = init_from.load_params(work)
  export.export(pre, str(tmp_path / 'base_hf'))
  export.export(work, str(tmp_path / 'adapter'), what='adapter')
  config = json.load(open(tmp_path / 'adapter' / 'adapter_config.json'))
  assert config['base_model_name_or_path'] == os.path.abspath(pre) and config['use_dora']
  base = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / 'base_hf'))
  adapted = peft.PeftModel.from_pretrained(base, str(tmp_path / 'adapter')).eval()
  with torch.no_grad():
    theirs = _torch(adapted, tokens).numpy()
  np.testing.assert_allclose(np.asarray(models.logits(cfg, params, tokens)), theirs, atol=1e-4)
