"""HF interop: logits parity with transformers (PyTorch) for tiny random GPT-2/LLaMA/Mistral/Qwen2
models, export/import round trips, sharded checkpoints and meshes, and the refusal errors."""
import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import models
from models import hf
from train import sharding as sharding_lib

TOL = 1e-4
MAX_DIFFS = {}  # config name -> max |logit diff| vs transformers (printed with -s).

CONFIGS = {
    'gpt2_v101': (transformers.GPT2Config, dict(
        vocab_size=101, n_embd=32, n_head=4, n_layer=2, n_positions=32,
        bos_token_id=None, eos_token_id=None)),
    'gpt2_v263_untied': (transformers.GPT2Config, dict(
        vocab_size=263, n_embd=48, n_head=3, n_layer=2, n_positions=24, n_inner=80,
        layer_norm_epsilon=1e-6, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)),
    'llama_gqa2_tied_theta1e4': (transformers.LlamaConfig, dict(
        vocab_size=97, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=96, num_hidden_layers=2, max_position_embeddings=64,
        rope_theta=10000.0, tie_word_embeddings=True)),
    'llama_kv1_untied_theta5e5': (transformers.LlamaConfig, dict(
        vocab_size=131, hidden_size=64, num_attention_heads=4, num_key_value_heads=1,
        intermediate_size=80, num_hidden_layers=2, max_position_embeddings=64,
        rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)),
    'llama_headdim8_biases': (transformers.LlamaConfig, dict(
        vocab_size=64, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        intermediate_size=48, num_hidden_layers=2, max_position_embeddings=32,
        attention_bias=True, mlp_bias=True)),
    'qwen2_gqa2': (transformers.Qwen2Config, dict(
        vocab_size=89, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=96, num_hidden_layers=2, max_position_embeddings=64,
        rope_theta=1000000.0, tie_word_embeddings=True)),
}
MISTRAL = (transformers.MistralConfig, dict(
    vocab_size=77, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=64, num_hidden_layers=2, max_position_embeddings=64, sliding_window=16))


def make_hf(config_cls, kwargs, seed=0):
  """Random transformers model; every weight (biases, norm scales too) drawn so all are tested."""
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config_cls(**kwargs)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      is_norm_scale = p.ndim == 1 and ('norm' in name or 'ln_' in name) and name.endswith('weight')
      p.copy_((1.0 if is_norm_scale else 0.0) + 0.1 * torch.randn_like(p))
  return model


def save(model, path, **kw):
  model.save_pretrained(path, **kw)
  return str(path)


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
  tokens = tokens_for(cfg.vocab_size)
  MAX_DIFFS[name] = diff = max_diff(cfg, params, model, tokens)
  print(f'\n{name}: max |logit diff| = {diff:.3e}')
  assert diff < TOL

  out = str(tmp_path / 'export')
  hf.export_checkpoint(cfg, params, out)
  cfg2, params2 = hf.import_checkpoint(out)
  assert cfg2 == cfg
  assert_trees_equal(params, params2)
  reloaded, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  np.testing.assert_allclose(hf_logits(reloaded.eval(), tokens), hf_logits(model, tokens),
                             atol=1e-6)


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
    assert_trees_equal(flat[f'layer_{i}'], jax.tree.map(lambda x: x[i], stacked['layers']))
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
  with pytest.raises(ValueError, match=r'model\.layers\.0\.mlp\.up_proj\.weight: checkpoint has '
                                       r'shape \(96, 64\), model_config expects \(128, 64\)'):
    hf.import_checkpoint(path, model_config=cfg.replace(d_ff=128))
  with pytest.raises(ValueError, match=r'embed_tokens\.weight: checkpoint has shape \(97, 64\)'):
    hf.import_checkpoint(path, model_config=cfg.replace(vocab_size=100))
  with pytest.raises(ValueError, match=r'unexpected tensors \[.model\.layers\.1\.'):
    hf.import_checkpoint(path, model_config=cfg.replace(n_layers=1))
  with pytest.raises(ValueError, match=r'n_kv_heads: checkpoint 2, model_config 4'):
    hf.import_checkpoint(path, model_config=cfg.replace(n_kv_heads=4))

  gpt2 = save(make_hf(*CONFIGS['gpt2_v101']), tmp_path / 'gpt2')
  with pytest.raises(ValueError, match=r'transformer\.h\.1\.mlp\.c_fc\.weight: checkpoint has '
                                       r'shape \(32, 128\), model_config expects \(32, 64\)'):
    hf.import_checkpoint(gpt2, model_config=hf.read_config(gpt2).replace(d_ff=64))


def test_export_refuses_configs_hf_cannot_express(tmp_path):
  with pytest.raises(ValueError, match='learned positions export as GPT-2.*norm=rmsnorm'):
    hf.export_checkpoint(models.ModelConfig(norm='rmsnorm'), {}, str(tmp_path))
  with pytest.raises(ValueError, match='positions=rope, norm=layernorm, mlp=gelu'):
    hf.export_checkpoint(models.ModelConfig(positions='rope'), {}, str(tmp_path))
  assert not os.path.exists(tmp_path / 'config.json')


def test_unsupported_hf_features_refused():
  base = dict(CONFIGS['llama_gqa2_tied_theta1e4'][1], model_type='llama')
  with pytest.raises(NotImplementedError, match="rope scaling 'linear'"):
    hf.config_from_hf(dict(base, rope_parameters={'rope_type': 'linear', 'factor': 2.0}))
  with pytest.raises(NotImplementedError, match='attention_bias=True with mlp_bias=False'):
    hf.config_from_hf(dict(base, attention_bias=True))
  with pytest.raises(NotImplementedError, match="model_type 'gemma'"):
    hf.config_from_hf(dict(base, model_type='gemma'))
