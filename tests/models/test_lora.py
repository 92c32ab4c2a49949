"""LoRA through the parameter table: adapters on the kernels LORA_TARGETS names by logical axes,
stacked over layers like their kernels; at init the base's logits; merged = unmerged; a LoRA run
from a pretrained workdir changes only the adapters and keeps no optimizer state for the frozen
base; sharded like their kernels; bad settings named in one line."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import models
from models import lora, parametrization
from models.config import ModelConfig
from train import init_from, loop, validation
from train import optimizer as optim

CFG = ModelConfig(
  vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=16, dtype='float32'
)
TOKENS = jnp.arange(32).reshape(2, 16) % 64


def _flat(tree):
  return {'/'.join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


@pytest.mark.parametrize('mlp', ['gelu', pytest.param('swiglu', marks=pytest.mark.slow)])
def test_adapters_by_logical_axes_and_zero_update_at_init(mlp):
  """rank 4 on every target: A [layers, fan_in..., 4], B [layers, 4, fan_out...] beside each
  target kernel, axes ending / starting with 'lora'; B = 0, so the logits are the base's."""
  cfg = CFG.replace(lora_rank=4, mlp=mlp, positions='rope' if mlp == 'swiglu' else 'learned')
  params = models.init(cfg, jax.random.key(0))
  flat, axes = _flat(params), _flat(models.logical_axes(cfg))
  kernels = {k[: -len('_lora_a')] for k in flat if k.endswith('_lora_a')}
  names = {'query', 'key', 'value', 'out', 'wi', 'wo'} | ({'wg'} if mlp == 'swiglu' else set())
  assert {k.split('/')[-1] for k in kernels} == names
  for k in kernels:
    a, b, w = flat[k + '_lora_a'], flat[k + '_lora_b'], flat[k]
    assert a.shape[0] == b.shape[0] == w.shape[0] == 2 and a.shape[-1] == b.shape[1] == 4
    assert tuple(axes[k + '_lora_a'])[-1] == 'lora' and tuple(axes[k + '_lora_b'])[1] == 'lora'
    assert np.all(b == 0) and float(jnp.std(a)) > 0
  base, adapters = lora.split(params)
  assert (
    _flat(base).keys()
    == _flat(
      models.init(CFG.replace(mlp=cfg.mlp, positions=cfg.positions), jax.random.key(0))
    ).keys()
  )
  np.testing.assert_allclose(
    models.logits(cfg, params, TOKENS),
    models.logits(lora.base_config(cfg), base, TOKENS),
    atol=1e-6,
  )
  trainable = _flat(models.trainable(cfg))
  assert all(trainable[k] == lora.is_adapter((k,)) for k in trainable)


def test_targets_rank_scale_and_merge():
  """Only the chosen targets get adapters; after training-like changes the merged base gives the
  same logits as the adapters (alpha / r, and rsLoRA's alpha / √r)."""
  cfg = CFG.replace(lora_rank=2, lora_targets=('query', 'mlp_out'), lora_alpha=8.0)
  params = models.init(cfg, jax.random.key(1))
  adapters = {k for k in _flat(params) if lora.is_adapter((k,))}
  assert {k.split('/')[-1] for k in adapters} == {
    'query_lora_a',
    'query_lora_b',
    'wo_lora_a',
    'wo_lora_b',
  }
  assert parametrization.lora_scale(cfg) == 4.0
  assert parametrization.lora_scale(cfg.replace(lora_rslora=True)) == pytest.approx(8 / 2**0.5)
  for c in (cfg, cfg.replace(lora_rslora=True)):
    noisy = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape), params)
    merged = lora.merge(c, noisy)
    assert _flat(merged).keys() == _flat(lora.split(noisy)[0]).keys()
    got, want = models.logits(c, noisy, TOKENS), models.logits(lora.base_config(c), merged, TOKENS)
    assert (
      float(jnp.abs(got - models.logits(lora.base_config(c), lora.split(noisy)[0], TOKENS)).max())
      > 1e-2
    )
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_frozen_params_have_no_optimizer_state():
  """The optimizer keeps Adam moments for the adapters only; frozen params get a zero update
  whatever their gradient; the adapters' lr follows the table (LoRA+: B × lora_lr_ratio)."""
  cfg = CFG.replace(lora_rank=2, lora_lr_ratio=4.0)
  params = models.init(cfg, jax.random.key(0))
  opt = validation.derive(_config(cfg, **{'optimizer.warmup_steps': 0}), 8).config.optimizer
  tx = optim.make_optimizer(opt, 10, cfg)
  state = jax.jit(tx.init)(params)  # jitted: one compile, not one per leaf and op.
  adapter_size = sum(v.size for k, v in _flat(params).items() if lora.is_adapter((k,)))
  moments = sum(x.size for x in jax.tree.leaves(state) if x.ndim)
  assert moments == 2 * adapter_size
  grads = jax.tree.map(np.ones_like, params)
  updates, _ = jax.device_get(jax.jit(tx.update)(grads, state, params))
  for k, u in _flat(updates).items():
    assert bool(np.any(u != 0)) == lora.is_adapter((k,)), k
  lr = _flat(models.param_scales(cfg, 'lr'))
  assert {v for k, v in lr.items() if k.endswith('_lora_b')} == {4.0}
  assert {v for k, v in lr.items() if k.endswith('_lora_a')} == {1.0}


def _config(model: ModelConfig, **overrides):
  from configs import base

  c = base.get_config()
  c.model.update({k: v for k, v in model.__dict__.items()})
  c.data.seq_len = model.max_len
  for key, value in overrides.items():
    section, name = key.split('.')
    c[section][name] = value
  return c


def test_lora_run_from_a_pretrained_workdir_trains_only_adapters(tiny_config, tmp_path):
  """A 1-step pre-training run, then LoRA (init_from it) for 4 steps on the 8-device test mesh:
  the base params of the LoRA checkpoint equal the pretrained ones bit for bit, every adapter B
  moved off zero; train.tools.export's merged model and adapter give its logits in transformers /
  peft."""
  shape = {'model.n_layers': 1}
  pre = str(tmp_path / 'pre')
  loop.run(validation.derive(tiny_config(shape)), pre, stop_after=1)
  config = tiny_config({**shape, 'init_from': pre, 'model.lora_rank': 4, 'optimizer.lr': 1e-2})
  out = loop.run(
    validation.derive(config), str(tmp_path / 'lora'), init_params_fn=init_from.params_fn(config)
  )
  assert np.isfinite(out['train/loss']) and np.isfinite(out['eval/loss'])
  _, pre_params = _load(pre)
  _, lora_params = _load(str(tmp_path / 'lora'))
  base, adapters = lora.split(lora_params)
  for k, v in _flat(pre_params).items():
    np.testing.assert_array_equal(_flat(base)[k], v, err_msg=k)
  assert all(float(jnp.abs(v).max()) > 0 for k, v in _flat(adapters).items() if k.endswith('_b'))
  # Exported (train.tools.export): the merged model, and the adapter on the exported base, in
  # transformers / peft give the LoRA run's logits.
  import peft
  import torch
  import transformers

  from train.tools import export

  cfg = init_from.workdir_model_config(str(tmp_path / 'lora'))
  tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 16)).astype(np.int32)
  ours = np.asarray(models.logits(cfg, lora_params, tokens))
  export.export(str(tmp_path / 'lora'), str(tmp_path / 'merged'))
  export.export(pre, str(tmp_path / 'base_hf'))
  export.export(str(tmp_path / 'lora'), str(tmp_path / 'adapter'), what='adapter')
  merged = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / 'merged'))
  base = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / 'base_hf'))
  adapted = peft.PeftModel.from_pretrained(base, str(tmp_path / 'adapter'))
  for model in (merged, adapted):
    with torch.no_grad():
      theirs = model.eval()(torch.from_numpy(tokens).long()).logits.float().numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def _load(workdir):
  cfg = init_from.workdir_model_config(workdir)
  return init_from.load_params(workdir, cfg)


@pytest.mark.parametrize(
  'overrides,needle',
  [
    ({'lora_rank': -1}, 'config.model.lora_rank must be >= 0'),
    ({'lora_rank': 2, 'lora_targets': ('query', 'ffn')}, 'config.model.lora_targets'),
    ({'lora_rank': 2, 'lora_lr_ratio': 0.0}, 'config.model.lora_lr_ratio must be > 0'),
  ],
)
def test_bad_lora_settings_are_one_line(overrides, needle):
  c = _config(CFG.replace(**overrides))
  with pytest.raises(ValueError, match=needle.replace('.', r'\.')) as e:
    validation.derive(c, jax.device_count())
  assert '\n' not in str(e.value)


# --- HuggingFace / PEFT ------------------------------------------------------------------------


PEFT_CASES = {
  'llama_all': ('llama', ('query', 'key_value', 'attn_out', 'mlp_in', 'mlp_out'), False),
  'llama_q_rslora': ('llama', ('query',), True),
  'gpt2_all': ('gpt2', ('query', 'key_value', 'attn_out', 'mlp_in', 'mlp_out'), False),
  'gpt2_query_mlp_out': ('gpt2', ('query', 'mlp_out'), False),  # c_attn in part; one c_proj.
}


# gpt2_all adds nothing gpt2_query_mlp_out (the fused c_attn in part) and llama_all do not test.
@pytest.mark.parametrize(
  'case', [pytest.param(c, marks=pytest.mark.slow) if c == 'gpt2_all' else c for c in PEFT_CASES]
)
def test_peft_adapter_and_merged_export_match_transformers(case, tmp_path):
  """A random HF base, our adapters on it (B nonzero), exported: `peft` loads the adapter onto
  the HF base with our logits (1e-4), the merged HF checkpoint gives them too, and importing the
  adapter back gives the same adapters."""
  import peft
  import torch
  import transformers
  from helpers import HF_GPT2, HF_LLAMA, make_hf, save

  from models import hf, peft_adapter

  family, targets, rslora = PEFT_CASES[case]
  cls, kw = (
    (transformers.GPT2Config, dict(HF_GPT2, vocab_size=101))
    if family == 'gpt2'
    else (transformers.LlamaConfig, dict(HF_LLAMA, vocab_size=97, intermediate_size=48))
  )
  base_dir = save(make_hf(cls, kw), tmp_path / 'base')
  base_cfg, base_params = hf.import_checkpoint(base_dir)
  cfg = base_cfg.replace(lora_rank=3, lora_alpha=6.0, lora_targets=targets, lora_rslora=rslora)
  fresh = lora.split(models.init(cfg, jax.random.key(0)))[1]
  adapters = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), fresh)
  params = lora.combine(base_params, adapters)
  tokens = np.random.RandomState(0).randint(0, kw['vocab_size'], (2, 12)).astype(np.int32)
  ours = np.asarray(models.logits(cfg, params, tokens))
  assert np.abs(ours - np.asarray(models.logits(base_cfg, base_params, tokens))).max() > 1e-2

  peft_adapter.export_adapter(cfg, params, str(tmp_path / 'adapter'), base_model=base_dir)
  model = peft.PeftModel.from_pretrained(
    transformers.AutoModelForCausalLM.from_pretrained(base_dir), str(tmp_path / 'adapter')
  ).eval()
  with torch.no_grad():
    theirs = model(torch.from_numpy(tokens).long()).logits.float().numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4)

  hf.export_checkpoint(lora.base_config(cfg), lora.merge(cfg, params), str(tmp_path / 'merged'))
  merged = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / 'merged')).eval()
  with torch.no_grad():
    theirs = merged(torch.from_numpy(tokens).long()).logits.float().numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4)

  back = peft_adapter.import_adapter(str(tmp_path / 'adapter'), cfg)
  np.testing.assert_allclose(
    models.logits(cfg, lora.combine(base_params, back), tokens), ours, atol=1e-5
  )


def test_peft_adapter_errors(tmp_path):
  """Exporting without adapters, or a μP model; importing a directory that is no adapter, or
  one that lacks a target: one line each."""
  import transformers
  from helpers import HF_LLAMA, make_hf, save

  from models import hf, peft_adapter

  base_dir = save(make_hf(transformers.LlamaConfig, dict(HF_LLAMA, vocab_size=97)), tmp_path / 'b')
  base_cfg, base_params = hf.import_checkpoint(base_dir)
  with pytest.raises(ValueError, match='lora_rank is 0'):
    peft_adapter.export_adapter(base_cfg, base_params, str(tmp_path / 'x'))
  with pytest.raises(ValueError, match='not a PEFT adapter directory'):
    peft_adapter.import_adapter(str(tmp_path), base_cfg.replace(lora_rank=2))
  cfg = base_cfg.replace(lora_rank=2, lora_targets=('query',))
  params = models.init(cfg, jax.random.key(0))
  peft_adapter.export_adapter(cfg, params, str(tmp_path / 'q'))
  with pytest.raises(ValueError, match=r'no adapter for model\.layers\.0\.mlp\.(up|gate)_proj'):
    peft_adapter.import_adapter(str(tmp_path / 'q'), cfg.replace(lora_targets=('query', 'mlp_in')))
