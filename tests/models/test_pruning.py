"""Structured pruning (models/pruning.py, train/tools/compress.py): a pruned model equals the
original with the pruned units' weights removed (heads / kv groups, neurons, layers; GPT-2 and LLaMA
with GQA), importances are read from real activations, and the pruned workdir loads everywhere."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from helpers import LLAMA_BLOCK, REPO

import models
from models import pruning
from models.config import ModelConfig

GPT2 = ModelConfig(d_model=32, n_layers=3, n_heads=4, d_ff=64, max_len=16)
LLAMA = GPT2.replace(n_kv_heads=2, tie_embeddings=False, **LLAMA_BLOCK)
MUP = GPT2.replace(parametrization='mup', base_d_model=16, base_d_ff=32, base_head_dim=8)
TOKENS = np.random.RandomState(0).randint(0, 257, (2, 16)).astype(np.int32)


def _params(cfg):
  # Non-zero biases and norms, so that a pruned unit's every parameter matters.
  p = models.init(cfg, jax.random.key(1))
  noise = lambda k, x: x + 0.05 * jax.random.normal(k, x.shape)
  keys = jax.random.split(jax.random.key(2), len(jax.tree.leaves(p)))
  return jax.tree.unflatten(
    jax.tree.structure(p), [noise(k, x) for k, x in zip(keys, jax.tree.leaves(p))]
  )


def _zero(cfg, params, axis, drop):
  """The original params with the pruned units' outputs removed: the kernels writing into the
  residual stream ('out', 'wo') zeroed along `axis` at `drop` (and, for a layer, its out biases)."""
  flat = traverse_util.flatten_dict(params)
  for k, v in flat.items():
    name = k[-1]
    if axis == 'layers' and name in ('out', 'wo', 'out_bias', 'wo_bias'):
      flat[k] = v.at[np.asarray(drop)].set(0.0)
    if axis == 'heads' and name == 'out':
      flat[k] = v.at[:, np.asarray(drop)].set(0.0)
    if axis == 'mlp' and name == 'wo':
      flat[k] = v.at[:, np.asarray(drop)].set(0.0)
  return traverse_util.unflatten_dict(flat)


# Default tier: every axis on GPT-2, and what differs elsewhere (LLaMA's kv groups, μP's heads);
# the other four cases run the same code with other shapes (slow tier).
_SLOW = pytest.mark.slow
PRUNE_CASES = [
  pytest.param(cfg, axis, id=f'{axis}-{name}', marks=() if keep else _SLOW)
  for name, cfg in (('gpt2', GPT2), ('llama_gqa', LLAMA), ('mup', MUP))
  for axis in ('layers', 'heads', 'mlp')
  for keep in [name == 'gpt2' or axis == 'heads']
]


@pytest.mark.parametrize('cfg, axis', PRUNE_CASES)
def test_pruned_model_equals_the_original_without_the_pruned_units(cfg, axis):
  params = _params(cfg)
  axes = models.logical_axes(cfg)
  if axis == 'layers':
    keep, drop = {'layers': [0, 2]}, [1]
  elif axis == 'heads':  # GQA: keeping kv group 0 drops group 1 with its query heads 2, 3.
    keep = {'kv_heads': [0] if cfg.n_kv_heads else [0, 3]}
    drop = [2, 3] if cfg.n_kv_heads else [1, 2]
  else:
    keep = {'mlp': np.arange(0, 64, 2)}
    drop = np.arange(1, 64, 2)
  new_cfg, new_params = pruning.prune(cfg, params, axes, keep)
  assert jax.tree.map(jnp.shape, new_params) == jax.tree.map(
    jnp.shape, models.param_shapes(new_cfg)
  )
  want = models.logits(cfg, _zero(cfg, params, axis, drop), TOKENS)
  got = models.logits(new_cfg, new_params, TOKENS)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)
  assert new_cfg.head_dim == models.head_dim(cfg)  # pinned: heads change, head width does not.


def test_embedding_channels_slice_every_d_model_axis_and_unscanned_layers_renumber():
  cfg = LLAMA.replace(qk_norm=True)
  params = _params(cfg)
  new_cfg, new_params = pruning.prune(
    cfg, params, models.logical_axes(cfg), {'embed': np.arange(24)}
  )
  assert new_cfg.d_model == 24 and new_cfg.head_dim == 8
  assert jax.tree.map(jnp.shape, new_params) == jax.tree.map(
    jnp.shape, models.param_shapes(new_cfg)
  )
  # qk norms are over head_dim: untouched.
  np.testing.assert_array_equal(
    new_params['layers']['attn']['query_norm']['scale'],
    params['layers']['attn']['query_norm']['scale'],
  )
  # Unscanned models: layers keep their order and are renumbered.
  ucfg, uparams = pruning.unstack(GPT2, _params(GPT2))
  new_cfg, new_params = pruning.prune(ucfg, uparams, models.logical_axes(ucfg), {'layers': [0, 2]})
  assert sorted(k for k in new_params if k.startswith('layer_')) == ['layer_0', 'layer_1']
  np.testing.assert_array_equal(new_params['layer_1']['mlp']['wo'], uparams['layer_2']['mlp']['wo'])


def test_importance_finds_the_units_that_matter():
  """A neuron, a kv group and a layer whose outputs are zeroed score lowest; dropping a layer's
  loss increase is its real effect (its loss equals the pruned model's)."""
  cfg = LLAMA
  params = _params(cfg)
  params = _zero(cfg, params, 'mlp', [[5]])  # wo rows 5 of every layer: neuron 5 contributes 0.
  flat = traverse_util.flatten_dict(params)
  flat[('layers', 'mlp', 'wi')] = flat[('layers', 'mlp', 'wi')].at[:, :, 5].set(0.0)
  flat[('layers', 'mlp', 'wg')] = flat[('layers', 'mlp', 'wg')].at[:, :, 5].set(0.0)
  flat[('layers', 'attn', 'value')] = flat[('layers', 'attn', 'value')].at[:, :, 1].set(0.0)
  params = traverse_util.unflatten_dict(flat)
  params = _zero(cfg, params, 'layers', [2])
  batches = [np.random.RandomState(i).randint(0, 257, (4, 16)) for i in range(2)]
  scores = pruning.importance(cfg, params, iter(batches))
  assert scores['mlp'].shape == (64,) and int(np.argmin(scores['mlp'])) == 5
  assert scores['heads'].shape == (2,) and int(np.argmin(scores['heads'])) == 1
  assert scores['embed'].shape == (32,)
  assert abs(scores['layers'][2]) < 1e-6 and scores['layers'].shape == (3,)
  keep = pruning.plan(cfg, scores, {'layers': 2, 'heads': 2, 'mlp': 48})
  assert list(keep['layers']) == [0, 1] and list(keep['kv_heads']) == [0] and 5 not in keep['mlp']


@pytest.mark.parametrize(
  'shape, needle',
  [
    ({'heads': 3}, 'whole number of kv groups'),
    ({'heads': 6}, 'heads=6, but the model has 4'),
    ({'layers': 0}, 'layers=0'),
    ({'depth': 1}, "unknown axis 'depth'"),
  ],
)
def test_impossible_targets_are_one_line(shape, needle):
  with pytest.raises(ValueError, match=needle):
    pruning.check(LLAMA, shape)


def test_compress_cli_writes_a_workdir_every_tool_loads(tiny_config, tmp_path, capsys):
  """train.tools.compress --prune on a trained workdir: OUT loads through init_from (the shapes of
  the target), samples, trains from it, exports to HF with equal logits; bad targets fail before
  loading. The compress command line runs in process (its main(argv)); sampling as a process."""
  from train import init_from, loop, validation
  from train.tools import compress, export

  src = str(tmp_path / 'src')
  loop.run(validation.derive(tiny_config({'model.n_layers': 3})), src)
  out = str(tmp_path / 'pruned')
  args = [f'--workdir={src}', f'--out={out}']
  capsys.readouterr()
  compress.main(args + ['--prune=layers:2,mlp:32', '--calib_batches=2'])
  record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert record['shape'] == {'layers': 2, 'heads': 4, 'mlp': 32, 'embed': 32}
  assert record['params_after'] < record['params_before']
  assert np.isfinite(record['loss_after']) and record['loss_after'] > 0
  cfg, params = init_from.load_params(out)
  assert (cfg.n_layers, cfg.d_ff) == (2, 32)
  sampled = subprocess.run([sys.executable, '-m', 'train.tools.sample', f'--checkpoint={out}', '--prompt=def ',
                            '--max_new_tokens=4'], cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
  assert sampled.returncode == 0 and sampled.stdout.strip(), sampled.stderr[-1000:]
  tokens = np.random.RandomState(0).randint(0, 257, (2, 16)).astype(np.int32)
  ours = np.asarray(models.logits(cfg, params, tokens))
  export.export(out, str(tmp_path / 'hf'))
  import torch
  import transformers

  hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / 'hf'))
  with torch.no_grad():
    theirs = hf.eval()(torch.from_numpy(tokens).long()).logits.float().numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4)
  config = tiny_config({'model.n_layers': 2, 'model.d_ff': 32, 'init_from': out})
  trained = loop.run(
    validation.derive(config), str(tmp_path / 'recover'), init_params_fn=init_from.params_fn(config)
  )
  assert np.isfinite(trained['eval/loss'])
  capsys.readouterr()
  with pytest.raises(SystemExit) as bad:
    compress.main([args[0], f'--out={tmp_path / "x"}', '--prune=heads:5'])
  assert bad.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [
    'error: --prune: heads=5, but the model has 4 (1..4)'
  ]
  with pytest.raises(SystemExit) as again:  # OUT holds another compression: refused.
    compress.main(args + ['--prune=layers:1'])
  assert again.value.code == 2 and 'holds another compression' in capsys.readouterr().err
  # The same request again (a study rerun): nothing to do, the record returned.
  assert compress.compress(src, out, {**record_what(record)}) == json.load(
    open(os.path.join(out, 'compress.json'))
  )
  # A killed run left only its staging directory: the rerun replaces it and finishes.
  killed = str(tmp_path / 'killed')
  os.makedirs(killed + '.partial/checkpoints')
  open(os.path.join(killed + '.partial', compress._PARTIAL), 'w').close()
  compress.main([args[0], f'--out={killed}', '--sparsity=0.5'])
  assert os.path.exists(os.path.join(killed, 'compress.json'))
  assert not os.path.exists(killed + '.partial')
  with pytest.raises(SystemExit) as busy:  # a foreign non-empty OUT: refused before loading.
    compress.main([args[0], f'--out={tmp_path / "hf"}', '--sparsity=0.5'])
  assert busy.value.code == 2 and 'is not empty (holds ' in capsys.readouterr().err
  with pytest.raises(SystemExit) as same:  # hf:DIR --out=DIR: the source is never overwritten.
    compress.main([f'--workdir=hf:{tmp_path / "hf"}', f'--out={tmp_path / "hf"}', '--sparsity=0.5'])
  assert same.value.code == 2 and '--out is --workdir' in capsys.readouterr().err


def record_what(record):
  """The request (`what`) a compress.json record was made for."""
  keys = ('prune', 'sparsity', 'pattern', 'scope', 'quantize', 'group', 'calib_batches')
  return {k: record[k] for k in (*keys, 'eval_batches', 'tokenizer')}


@pytest.mark.parametrize(
  'what, needle',
  [
    ({'prune': 'layers:2', 'quantize': 'int4'}, 'exactly one of'),
    ({'quantize': 'int2'}, 'int2'),
    ({'quantize': 'int4', 'group': 24}, 'weight_group=24'),
    ({'sparsity': 1.5}, r'--sparsity=1.5: must be in \(0, 1\)'),
    ({'sparsity': 0.5, 'pattern': '4:2'}, '4:2'),
    ({'prune': 'mlp:x'}, "'mlp:x' is not axis:size"),
    ({'sparsity': 0.75, 'pattern': '2:4'}, r'keeps 2 of 4 weights \(--sparsity=0.5\)'),
    ({'sparsity': 0.6, 'pattern': '2:5'}, '5 does not divide the fan-in'),
  ],
)
def test_compress_targets_are_checked_before_loading(tmp_path, what, needle):
  """train.tools.compress.check reads only W/config.json: each bad target is one line naming it."""
  from train.tools import compress

  src = tmp_path / 'src'
  src.mkdir()
  model = {k: getattr(GPT2, k) for k in ('d_model', 'n_layers', 'n_heads', 'd_ff', 'max_len')}
  (src / 'config.json').write_text(json.dumps({'model': model}))
  full = {
    'prune': '',
    'sparsity': 0.0,
    'pattern': 'unstructured',
    'quantize': '',
    'group': 0,
    **what,
  }
  with pytest.raises(ValueError, match=needle):
    compress.check(str(src), str(tmp_path / 'out'), full)


@pytest.mark.slow  # (22 s; train.tools.compress by default: test_compress_cli_writes_a_workdir_every_tool_loads)
def test_compress_an_hf_checkpoint_equals_transformers_with_the_units_removed(data_dir, tmp_path):
  """train.tools.compress --workdir=hf:DIR (a random LLaMA-GQA saved by transformers): calibrated on
  --config's data with --tokenizer=byte, the pruned workdir's logits equal transformers' model
  with the same layer and MLP neurons removed by hand; int8 of it loads and stays close; an hf:
  directory without a tokenizer, or without config.json, is one line before loading."""
  import torch
  import transformers
  from helpers import HF_LLAMA, make_hf, save

  from train import init_from

  kw = {**HF_LLAMA, 'vocab_size': 257, 'intermediate_size': 64, 'tie_word_embeddings': False}
  hf_dir = save(make_hf(transformers.LlamaConfig, kw), tmp_path / 'hf')
  data = [f'--config={REPO}/configs/default.py', f'--config.data.data_dir={data_dir}',
          '--config.data.seq_len=32', '--config.train.global_batch_size=8']  # fmt: skip
  cmd = [sys.executable, '-m', 'train.tools.compress', f'--workdir=hf:{hf_dir}', '--eval_batches=1']
  go = lambda *a: subprocess.run(
    cmd + list(a), cwd=REPO, capture_output=True, text=True, timeout=600
  )
  out = str(tmp_path / 'pruned')
  done = go(
    f'--out={out}', '--prune=layers:1,mlp:32', '--calib_batches=2', '--tokenizer=byte', *data
  )
  assert done.returncode == 0, done.stderr[-2000:]
  record = json.loads(done.stdout.strip().splitlines()[-1])
  assert record['source'] == f'hf:{hf_dir}' and record['shape']['layers'] == 1
  kept = json.load(open(tmp_path / 'pruned' / 'compress.json'))['kept']
  (layer,), neurons = kept['layers'], torch.tensor(kept['mlp'])
  ref = transformers.LlamaForCausalLM.from_pretrained(hf_dir).eval()
  ref.config.num_hidden_layers, ref.config.intermediate_size = 1, 32
  mlp = ref.model.layers[layer].mlp
  with torch.no_grad():
    for lin in (mlp.gate_proj, mlp.up_proj):
      lin.weight = torch.nn.Parameter(lin.weight[neurons])
    mlp.down_proj.weight = torch.nn.Parameter(mlp.down_proj.weight[:, neurons])
  ref.model.layers = torch.nn.ModuleList([ref.model.layers[layer]])
  ref.model.layers[0].self_attn.layer_idx = 0
  tokens = np.random.RandomState(0).randint(0, 257, (2, 16)).astype(np.int32)
  with torch.no_grad():
    theirs = ref(torch.from_numpy(tokens).long()).logits.float().numpy()
  cfg, params = init_from.load_params(out)
  assert (cfg.n_layers, cfg.d_ff, cfg.n_kv_heads) == (1, 32, 2)
  np.testing.assert_allclose(np.asarray(models.logits(cfg, params, tokens)), theirs, atol=1e-4)
  assert json.load(open(tmp_path / 'pruned' / 'config.json'))['data']['tokenizer'] == 'byte'
  q = go(f'--out={tmp_path / "int8"}', '--quantize=int8', '--tokenizer=byte', *data)
  assert q.returncode == 0, q.stderr[-2000:]
  rec = json.loads(q.stdout.strip().splitlines()[-1])
  assert abs(rec['loss_after'] - rec['loss_before']) < 0.01 * rec['loss_before']
  assert init_from.load_params(str(tmp_path / 'int8'))[0].n_layers == 2
  no_tok = go(f'--out={tmp_path / "x"}', '--quantize=int8', *data)
  assert no_tok.returncode == 2 and no_tok.stderr.strip().splitlines() == [
    f'error: hf:{hf_dir}: no tokenizer files in {hf_dir}; pass --tokenizer=byte or a tokenizer '
    'directory'
  ]
  bad = subprocess.run(cmd[:3] + [f'--workdir=hf:{tmp_path}', f'--out={tmp_path / "y"}',
                       '--quantize=int8'], cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
  assert bad.returncode == 2 and 'no config.json' in bad.stderr
