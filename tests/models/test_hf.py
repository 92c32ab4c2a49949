"""HF interop: logits parity with transformers (PyTorch) for tiny random GPT-2/LLaMA/Mistral/Qwen2/
Qwen3/Gemma models (Llama-3 / linear rope scaling too), export/import round trips, sharded
checkpoints and meshes, the README's continued pre-training path, and the refusal errors."""

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from helpers import HF_GPT2, HF_LLAMA, make_hf, save
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import models
from configs import base, llama
from models import hf
from train import init_from, validation
from train import sharding as sharding_lib

TOL = 1e-4
MAX_DIFFS = {}  # config name -> max |logit diff| vs transformers (printed with -s).

# The LLaMA-shaped configs below vary this one: 64 wide, 4 heads (2 kv), 2 layers, 64 positions.
LLAMA_64 = dict(
  HF_LLAMA, vocab_size=97, hidden_size=64, intermediate_size=96, max_position_embeddings=64
)
CONFIGS = {
  'gpt2_v101': (transformers.GPT2Config, dict(HF_GPT2, vocab_size=101)),
  'gpt2_v263_untied': (
    transformers.GPT2Config,
    dict(
      HF_GPT2,
      vocab_size=263,
      n_embd=48,
      n_head=3,
      n_positions=24,
      n_inner=80,
      layer_norm_epsilon=1e-6,
      tie_word_embeddings=False,
      bos_token_id=0,
      eos_token_id=0,
    ),
  ),
  'llama_gqa2_tied_theta1e4': (
    transformers.LlamaConfig,
    dict(LLAMA_64, rope_theta=10000.0, tie_word_embeddings=True),
  ),
  'llama_kv1_untied_theta5e5': (
    transformers.LlamaConfig,
    dict(
      LLAMA_64,
      vocab_size=131,
      num_key_value_heads=1,
      intermediate_size=80,
      rope_theta=500000.0,
      rms_norm_eps=1e-5,
      tie_word_embeddings=False,
    ),
  ),
  'llama_headdim8_biases': (
    transformers.LlamaConfig,
    dict(
      HF_LLAMA, vocab_size=64, head_dim=8, intermediate_size=48, attention_bias=True, mlp_bias=True
    ),
  ),
  'qwen2_gqa2': (
    transformers.Qwen2Config,
    dict(LLAMA_64, vocab_size=89, rope_theta=1000000.0, tie_word_embeddings=True),
  ),
  # Llama-3 rope: theta 100 and original length 32 put rope dims in all three bands
  # (kept / ramped / divided by the factor); sequences of 96 make the scaling matter.
  'llama3_rope_tied': (
    transformers.LlamaConfig,
    dict(
      LLAMA_64,
      max_position_embeddings=128,
      rms_norm_eps=1e-5,
      tie_word_embeddings=True,
      rope_parameters=dict(
        rope_type='llama3',
        rope_theta=100.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=32,
      ),
    ),
  ),
  'gemma_kv1_headdim24': (
    transformers.GemmaConfig,
    dict(LLAMA_64, num_key_value_heads=1, head_dim=24),
  ),
  'qwen3_tied_headdim8': (
    transformers.Qwen3Config,
    dict(LLAMA_64, head_dim=8, tie_word_embeddings=True),
  ),
  'qwen3_untied_bias_rope_linear': (
    transformers.Qwen3Config,
    dict(
      LLAMA_64,
      head_dim=32,
      attention_bias=True,
      tie_word_embeddings=False,
      rope_parameters=dict(rope_type='linear', rope_theta=1000.0, factor=4.0),
    ),
  ),
}
LENGTHS = {'llama3_rope_tied': 96, 'qwen3_untied_bias_rope_linear': 48}  # default 12.
MISTRAL = (
  transformers.MistralConfig,
  dict(
    HF_LLAMA, vocab_size=77, intermediate_size=64, max_position_embeddings=64, sliding_window=16
  ),
)


def hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.from_numpy(tokens).long()).logits.float().numpy()


def tokens_for(vocab_size, length=12, seed=0):
  return np.random.RandomState(seed).randint(0, vocab_size, (2, length)).astype(np.int32)


def max_diff(cfg, params, model, tokens):
  ours = np.asarray(models.logits(cfg, params, tokens))
  return float(np.abs(ours - hf_logits(model, tokens)).max())


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.shape == y.shape and np.array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_import_parity_and_export_round_trip(name, tmp_path):
  model = make_hf(*CONFIGS[name])
  cfg, params = hf.import_checkpoint(save(model, tmp_path / 'hf'))
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
  tokens = tokens_for(cfg.vocab_size, LENGTHS.get(name, 12))
  MAX_DIFFS[name] = diff = max_diff(cfg, params, model, tokens)
  print(f'\n{name}: max |logit diff| = {diff:.3e}')
  assert diff < TOL
  if cfg.rope_scaling != 'none':  # The test can tell: plain rope is far off on these lengths.
    assert max_diff(cfg.replace(rope_scaling='none'), params, model, tokens) > 1000 * TOL

  out = str(tmp_path / 'export')
  hf.export_checkpoint(cfg, params, out)
  cfg2, params2 = hf.import_checkpoint(out)
  assert cfg2 == cfg
  assert_trees_equal(params, params2)
  reloaded, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  np.testing.assert_allclose(
    hf_logits(reloaded.eval(), tokens), hf_logits(model, tokens), atol=1e-6
  )


def test_mistral_sliding_window(tmp_path):
  model = make_hf(*MISTRAL)
  path = save(model, tmp_path / 'hf')
  with pytest.raises(NotImplementedError, match='sliding-window attention .window 16.'):
    hf.import_checkpoint(path)
  cfg = hf.read_config(path).replace(max_len=16)  # Within the window full attention is exact.
  cfg, params = hf.import_checkpoint(path, model_config=cfg)
  MAX_DIFFS['mistral'] = diff = max_diff(cfg, params, model, tokens_for(cfg.vocab_size))
  print(f'\nmistral: max |logit diff| = {diff:.3e}')
  assert diff < TOL
  out = str(tmp_path / 'export')
  hf.export_checkpoint(cfg, params, out)
  assert_trees_equal(params, hf.import_checkpoint(out)[1])


def test_unstacked_layers_and_sharded_index(tmp_path):
  model = make_hf(*CONFIGS['llama_gqa2_tied_theta1e4'])
  cfg, stacked = hf.import_checkpoint(save(model, tmp_path / 'single'))
  path = save(model, tmp_path / 'sharded', max_shard_size='20KB')
  assert os.path.exists(os.path.join(path, hf.SAFETENSORS_INDEX))
  assert not os.path.exists(os.path.join(path, hf.SAFETENSORS_FILE))
  with open(os.path.join(path, hf.SAFETENSORS_INDEX)) as f:
    assert len(set(json.load(f)['weight_map'].values())) > 1
  assert_trees_equal(stacked, hf.import_checkpoint(path)[1])

  cfg_flat, flat = hf.import_checkpoint(path, model_config=cfg.replace(scan_layers=False))
  assert set(flat) == {'embed', 'final_norm', 'layer_0', 'layer_1'}
  for i in range(cfg.n_layers):
    assert_trees_equal(flat[f'layer_{i}'], jax.tree.map(lambda x, i=i: x[i], stacked['layers']))
  out = str(tmp_path / 'export_flat')
  hf.export_checkpoint(cfg_flat, flat, out)
  assert_trees_equal(stacked, hf.import_checkpoint(out)[1])


def test_import_onto_mesh(tmp_path):
  kwargs = dict(CONFIGS['llama_kv1_untied_theta5e5'][1], vocab_size=128, num_key_value_heads=2)
  model = make_hf(transformers.LlamaConfig, kwargs)
  path = save(model, tmp_path / 'hf', max_shard_size='20KB')
  mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), ('data', 'fsdp', 'tensor'))
  cfg = hf.read_config(path)
  shardings = sharding_lib.tree_shardings(models.logical_axes(cfg), models.param_shapes(cfg), mesh)
  cfg, params = hf.import_checkpoint(path, shardings=shardings)
  for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(shardings)):
    assert x.sharding == s
  assert not params['layers']['attn']['query'].sharding.is_fully_replicated
  assert not params['unembed'].sharding.is_fully_replicated
  _, plain = hf.import_checkpoint(path)
  assert_trees_equal(plain, params)
  MAX_DIFFS['llama_mesh_2x2x2'] = diff = max_diff(cfg, params, model, tokens_for(cfg.vocab_size))
  print(f'\nllama_mesh_2x2x2: max |logit diff| = {diff:.3e}')
  assert diff < TOL

  def inner_dims_split(x):
    """Splits the last two dims, so shards cut inside merged HF dims (e.g. head_dim of H*Dh)."""
    spec = [None] * x.ndim
    for dim, axis in ((-1, 'tensor'), (-2, 'fsdp')):
      if x.ndim >= -dim and x.shape[dim] % 2 == 0:
        spec[dim] = axis
    return NamedSharding(mesh, P(*spec))

  odd = jax.tree.map(inner_dims_split, models.param_shapes(cfg))
  _, split = hf.import_checkpoint(path, shardings=odd)
  assert split['layers']['attn']['out'].sharding.spec == P(None, None, 'fsdp', 'tensor')
  assert_trees_equal(plain, split)


def test_base_model_checkpoint_without_prefix(tmp_path):
  model = make_hf(*CONFIGS['gpt2_v101'])
  _, params = hf.import_checkpoint(save(model, tmp_path / 'lm'))
  base = save(model.transformer, tmp_path / 'base')  # GPT2Model: keys 'wte.weight', 'h.0...'.
  assert_trees_equal(params, hf.import_checkpoint(base)[1])


def test_bfloat16_checkpoint(tmp_path):
  model = make_hf(*CONFIGS['qwen2_gqa2']).to(torch.bfloat16)
  _, params = hf.import_checkpoint(save(model, tmp_path / 'hf'))
  q_proj = model.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()  # [H*Dh, D]
  query_DxHxDh = params['layers']['attn']['query'][1]
  assert query_DxHxDh.dtype == np.float32
  np.testing.assert_array_equal(np.asarray(query_DxHxDh).reshape(q_proj.shape[1], -1), q_proj.T)


def test_pytorch_bin_refused(tmp_path):
  model = make_hf(*CONFIGS['gpt2_v101'])
  model.config.save_pretrained(tmp_path)
  torch.save(model.state_dict(), tmp_path / 'pytorch_model.bin')
  with pytest.raises(ValueError, match=r'pytorch_model\.bin.*safe_serialization=True'):
    hf.import_checkpoint(str(tmp_path))


def test_shape_and_config_mismatch_errors(tmp_path):
  path = save(make_hf(*CONFIGS['llama_gqa2_tied_theta1e4']), tmp_path / 'hf')
  cfg = hf.read_config(path)
  with pytest.raises(
    ValueError,
    match=r'model\.layers\.0\.mlp\.up_proj\.weight: checkpoint has '
    r'shape \(96, 64\), model_config expects \(128, 64\)',
  ):
    hf.import_checkpoint(path, model_config=cfg.replace(d_ff=128))
  with pytest.raises(ValueError, match=r'embed_tokens\.weight: checkpoint has shape \(97, 64\)'):
    hf.import_checkpoint(path, model_config=cfg.replace(vocab_size=100))
  with pytest.raises(ValueError, match=r'unexpected tensors \[.model\.layers\.1\.'):
    hf.import_checkpoint(path, model_config=cfg.replace(n_layers=1))
  with pytest.raises(ValueError, match=r'n_kv_heads: checkpoint 2, model_config 4'):
    hf.import_checkpoint(path, model_config=cfg.replace(n_kv_heads=4))

  gpt2 = save(make_hf(*CONFIGS['gpt2_v101']), tmp_path / 'gpt2')
  with pytest.raises(
    ValueError,
    match=r'transformer\.h\.1\.mlp\.c_fc\.weight: checkpoint has '
    r'shape \(32, 128\), model_config expects \(32, 64\)',
  ):
    hf.import_checkpoint(gpt2, model_config=hf.read_config(gpt2).replace(d_ff=64))


def test_export_refuses_configs_hf_cannot_express(tmp_path):
  with pytest.raises(ValueError, match='learned positions export as GPT-2.*norm=rmsnorm'):
    hf.export_checkpoint(models.ModelConfig(norm='rmsnorm'), {}, str(tmp_path))
  with pytest.raises(ValueError, match='positions=rope, norm=layernorm, mlp=gelu'):
    hf.export_checkpoint(models.ModelConfig(positions='rope'), {}, str(tmp_path))
  assert not os.path.exists(tmp_path / 'config.json')


def test_unsupported_hf_features_refused():
  base = dict(CONFIGS['llama_gqa2_tied_theta1e4'][1], model_type='llama')
  for rope_type in ('yarn', 'longrope'):
    with pytest.raises(NotImplementedError, match=f"rope scaling '{rope_type}'"):
      hf.config_from_hf(dict(base, rope_parameters={'rope_type': rope_type, 'factor': 2.0}))
  with pytest.raises(NotImplementedError, match="rope scaling 'yarn'"):  # v4 spelling.
    hf.config_from_hf(dict(base, rope_scaling={'type': 'yarn', 'factor': 2.0}))
  with pytest.raises(NotImplementedError, match='partial_rotary_factor 0.5'):
    hf.config_from_hf(dict(base, partial_rotary_factor=0.5))
  with pytest.raises(NotImplementedError, match='mlp_bias=True with attention_bias=False'):
    hf.config_from_hf(dict(base, mlp_bias=True))
  with pytest.raises(
    NotImplementedError, match="model_type 'gemma2': Gemma-2 .attention/final logit soft-capping"
  ):
    hf.config_from_hf(dict(base, model_type='gemma2'))
  with pytest.raises(NotImplementedError, match="gemma hidden_act 'silu'"):
    hf.config_from_hf(dict(base, model_type='gemma', hidden_act='silu'))


def test_rope_and_bias_config_fields():
  """v4 `rope_scaling` + `rope_theta` and v5 `rope_parameters` read alike; attention_bias alone."""
  base = dict(CONFIGS['llama_gqa2_tied_theta1e4'][1], model_type='llama')
  llama3 = dict(
    factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
  )
  v4 = hf.config_from_hf(dict(base, rope_theta=5e5, rope_scaling=dict(llama3, rope_type='llama3')))
  v5 = hf.config_from_hf(
    dict(base, rope_parameters=dict(llama3, rope_type='llama3', rope_theta=5e5))
  )
  assert v4 == v5 and (v4.rope_theta, v4.rope_scaling, v4.rope_factor) == (5e5, 'llama3', 32.0)
  assert (v4.rope_low_freq_factor, v4.rope_high_freq_factor, v4.rope_original_max_len) == (
    1.0,
    4.0,
    8192,
  )
  dynamic = hf.config_from_hf(dict(base, rope_scaling={'type': 'dynamic', 'factor': 2.0}))
  assert (dynamic.rope_scaling, dynamic.rope_original_max_len) == ('dynamic', 64)
  llama = hf.config_from_hf(dict(base, attention_bias=True))
  assert (llama.use_bias, llama.qkv_bias, llama.out_bias) == (False, True, True)
  assert hf.to_hf_config(llama).to_dict()['mlp_bias'] is False


def test_dynamic_rope_within_max_position_embeddings(tmp_path):
  """Dynamic NTK is plain rope up to max_position_embeddings (exact there); longer is refused."""
  kwargs = dict(
    CONFIGS['llama_gqa2_tied_theta1e4'][1],
    max_position_embeddings=32,
    rope_parameters=dict(rope_type='dynamic', rope_theta=10000.0, factor=4.0),
  )
  model = make_hf(transformers.LlamaConfig, kwargs)
  path = save(model, tmp_path / 'hf')
  cfg, params = hf.import_checkpoint(path)
  MAX_DIFFS['llama_rope_dynamic'] = diff = max_diff(cfg, params, model, tokens_for(97, 32))
  print(f'\nllama_rope_dynamic: max |logit diff| = {diff:.3e}')
  assert diff < TOL
  with pytest.raises(
    NotImplementedError, match='dynamic NTK rope: max_len 64 exceeds max_position_embeddings 32'
  ):
    hf.import_checkpoint(path, model_config=cfg.replace(max_len=64))
  out = str(tmp_path / 'export')
  hf.export_checkpoint(cfg, params, out)
  assert hf.read_config(out) == cfg


def _validation_error(**model):
  c = base.get_config()
  c.model.update(dict(dict(positions='rope', norm='rmsnorm', mlp='swiglu'), **model))
  c.data.seq_len = c.model.max_len
  with pytest.raises(ValueError) as e:
    validation.derive(c, 8)
  return str(e.value)


def test_rope_scaling_validation():
  assert 'config.model.rope_scaling=' in _validation_error(
    rope_scaling='linear', rope_factor=2.0, positions='learned'
  )
  assert 'config.model.rope_factor=2.0 is not used by' in _validation_error(rope_factor=2.0)
  assert 'config.model.rope_factor must be positive' in _validation_error(
    rope_scaling='linear', rope_factor=0.0
  )
  assert 'config.model.rope_original_max_len must be positive' in _validation_error(
    rope_scaling='llama3', rope_factor=8.0
  )
  assert 'config.model.rope_high_freq_factor=1.0 must exceed' in _validation_error(
    rope_scaling='llama3', rope_factor=8.0, rope_original_max_len=64, rope_high_freq_factor=1.0
  )
  assert 'config.model.max_len=256 exceeds config.model.rope_original_max_len=128' in (
    _validation_error(rope_scaling='dynamic', rope_factor=2.0, rope_original_max_len=128)
  )


def test_export_refuses_partial_families(tmp_path):
  rope = dict(positions='rope', norm='rmsnorm', use_bias=False)
  with pytest.raises(ValueError, match='Gemma .rope, rmsnorm with norm_plus_one, geglu'):
    hf.to_hf_config(models.ModelConfig(mlp='geglu', **rope))  # GeGLU without Gemma's norms.
  with pytest.raises(ValueError, match='Qwen3 and Gemma have no MLP biases'):
    hf.to_hf_config(models.ModelConfig(mlp='swiglu', qk_norm=True, qkv_bias=True, **rope))
  with pytest.raises(ValueError, match='learned positions export as GPT-2.*qk_norm=True'):
    hf.to_hf_config(models.ModelConfig(qk_norm=True))


# Llama-3.2-1B's config.json (meta-llama/Llama-3.2-1B), which the README's example imports.
LLAMA_32_1B = {
  'architectures': ['LlamaForCausalLM'],
  'attention_bias': False,
  'head_dim': 64,
  'hidden_act': 'silu',
  'hidden_size': 2048,
  'initializer_range': 0.02,
  'intermediate_size': 8192,
  'max_position_embeddings': 131072,
  'mlp_bias': False,
  'model_type': 'llama',
  'num_attention_heads': 32,
  'num_hidden_layers': 16,
  'num_key_value_heads': 8,
  'rms_norm_eps': 1e-05,
  'rope_theta': 500000.0,
  'rope_scaling': {
    'factor': 32.0,
    'high_freq_factor': 4.0,
    'low_freq_factor': 1.0,
    'original_max_position_embeddings': 8192,
    'rope_type': 'llama3',
  },
  'tie_word_embeddings': True,
  'torch_dtype': 'bfloat16',
  'vocab_size': 128256,
}


def test_readme_continued_pretraining_from_llama32(tmp_path):
  """README: `--config=configs/llama.py:1b --config.init_from=hf:/path/to/Llama-3.2-1B`. The 1b
  config is Llama-3.2-1B's (every field import checks), and its import path (validation, then
  init_from onto the run's shardings) loads a tiny random Llama-3.2-style checkpoint exactly."""
  config = llama.get_config('1b')
  real = hf.config_from_hf(LLAMA_32_1B)
  target = models.ModelConfig.make(config.model)
  hf._check_arch(real, target)
  shape = ('vocab_size', 'd_model', 'n_layers', 'n_heads', 'n_kv_heads', 'd_ff')
  assert [getattr(real, f) for f in shape] == [getattr(target, f) for f in shape]

  tiny = dict(
    LLAMA_32_1B,
    vocab_size=97,
    hidden_size=64,
    head_dim=16,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=2,
  )
  for key in ('architectures', 'model_type', 'torch_dtype'):
    tiny.pop(key)
  model = make_hf(transformers.LlamaConfig, tiny)
  path = save(model, tmp_path / 'Llama-3.2-tiny')
  config.init_from = f'hf:{path}'
  config.model.update(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96)
  derived = validation.derive(config, jax.device_count())  # as main.py, via context.setup.
  mesh = sharding_lib.make_mesh(config.mesh)
  shardings = sharding_lib.tree_shardings(
    models.logical_axes(derived.model), models.param_shapes(derived.model), mesh
  )
  _, params = init_from.load_params(config.init_from, derived.model, shardings)
  cfg = derived.model.replace(dtype='float32')  # the config computes in bfloat16.
  MAX_DIFFS['llama32_style_readme'] = diff = max_diff(cfg, params, model, tokens_for(97, 32))
  print(f'\nllama32_style_readme: max |logit diff| = {diff:.3e}')
  assert diff < TOL
  with pytest.raises(ValueError, match='rope_scaling: checkpoint .llama3., model_config .none.'):
    hf.import_checkpoint(path, model_config=cfg.replace(rope_scaling='none', rope_factor=1.0))
