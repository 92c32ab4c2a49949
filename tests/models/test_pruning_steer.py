"""Steered pruning (models/pruning.py, train/tools/compress.py --keep / --importance /
--depth=block): forced units stay and the rest are the most important (an independent numpy choice),
the depth block equals a brute-force search over blocks evaluated with models.logits, bad steering
is one line before loading, and the pruned workdir equals transformers' model sliced by hand."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import LLAMA_BLOCK

import models
from models import pruning
from models.config import ModelConfig

GPT2 = ModelConfig(d_model=32, n_layers=4, n_heads=4, d_ff=64, max_len=16)
LLAMA = GPT2.replace(n_kv_heads=2, tie_embeddings=False, **LLAMA_BLOCK)
BATCHES = [np.random.RandomState(i).randint(0, 257, (2, 17)).astype(np.int32) for i in range(2)]


def _random_params(cfg, seed=0):
  """Every parameter drawn at random in numpy (no init compile): a model whose layers all matter."""
  rng = np.random.RandomState(seed)
  draw = lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype)
  return jax.tree.map(draw, models.param_shapes(cfg))


def _mean_nll(cfg, params, batches):
  """Mean next-token NLL over `batches` in numpy (log-softmax of models.logits)."""
  out = []
  for tokens in batches:
    logits = np.asarray(models.logits(cfg, params, tokens[:, :-1]), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    out.append(-np.take_along_axis(logp, tokens[:, 1:, None], -1).mean())
  return float(np.mean(out))


def test_forced_units_stay_and_the_rest_are_the_most_important():
  """plan(forced=...): the forced units, then the top scores among the others (chosen here with
  numpy's sort); a forced query head keeps its kv group. (`prune` of any kept indices equals the
  original with the others' weights removed: tests/models/test_pruning.py.)"""
  cfg = LLAMA
  rng = np.random.RandomState(0)
  scores = {'mlp': rng.rand(64), 'heads': np.array([2.0, 1.0]), 'layers': rng.rand(4)}
  forced = {'mlp': [3, 7, 7], 'heads': [3], 'layers': [1]}  # head 3: kv group 1 (heads 2, 3)
  keep = pruning.plan(cfg, scores, {'mlp': 16, 'heads': 2, 'layers': 2}, forced)
  others = [i for i in np.argsort(-scores['mlp']) if i not in (3, 7)][:14]
  assert list(keep['mlp']) == sorted([3, 7, *others])
  assert list(keep['kv_heads']) == [1]  # scores say group 0; --keep says head 3's group.
  assert list(keep['layers']) == sorted(
    [1, next(i for i in np.argsort(-scores['layers']) if i != 1)]
  )
  # As many forced as the target: exactly those, whatever the scores (absent scores too).
  assert list(pruning.plan(cfg, {}, {'mlp': 2}, {'mlp': [9, 4]})['mlp']) == [4, 9]


def test_depth_block_is_the_brute_force_best_block():
  """block_scores: per start, the loss increase of dropping that contiguous block, equal to
  models.logits evaluated on the same batches with the block's layers sliced out by hand; plan
  keeps the layers outside the lowest one, and the next lowest when --keep holds a layer of it."""
  cfg = GPT2
  params = _random_params(cfg)
  scores = pruning.block_scores(cfg, params, BATCHES, 2)
  base = _mean_nll(cfg, params, BATCHES)
  brute = []
  for s in range(3):
    cut = {
      **params,
      'layers': jax.tree.map(lambda x, s=s: np.delete(x, [s, s + 1], 0), params['layers']),
    }
    brute.append(_mean_nll(cfg.replace(n_layers=2), cut, BATCHES) - base)
  np.testing.assert_allclose(scores, brute, atol=1e-4)
  best = int(np.argmin(brute))
  keep = pruning.plan(cfg, {'blocks': scores}, {'layers': 2}, depth='block')
  assert list(keep['layers']) == [i for i in range(4) if i not in (best, best + 1)]
  order = np.argsort(brute)
  second = next(int(s) for s in order if best not in (s, s + 1))
  keep = pruning.plan(cfg, {'blocks': scores}, {'layers': 2}, {'layers': [best]}, 'block')
  assert list(keep['layers']) == [i for i in range(4) if i not in (second, second + 1)]


def test_an_importance_file_replaces_the_computed(tmp_path):
  """--importance: heads per query head (summed per kv group) or per kv group, one score per
  unit of every other axis; a compress.json's own importance is read back (its blocks not)."""
  from train.tools import compress

  path = tmp_path / 'scores.json'
  path.write_text(json.dumps({'heads': [0.0, 1.0, 5.0, 0.0], 'mlp': list(range(64))}))
  given = compress.read_importance(str(path), LLAMA)
  np.testing.assert_array_equal(given['heads'], [1.0, 5.0])
  keep = pruning.plan(LLAMA, given, {'heads': 2, 'mlp': 3})
  assert list(keep['kv_heads']) == [1] and list(keep['mlp']) == [61, 62, 63]
  record = tmp_path / 'compress.json'
  record.write_text(json.dumps({'importance': {'heads': [1, 2], 'blocks': [0.1]}, 'prune': 'x'}))
  assert list(compress.read_importance(str(record), LLAMA)) == ['heads']


def _config_only(tmp_path, cfg=LLAMA):
  src = tmp_path / 'src'
  src.mkdir(exist_ok=True)
  keys = ('d_model', 'n_layers', 'n_heads', 'n_kv_heads', 'd_ff', 'max_len')
  (src / 'config.json').write_text(json.dumps({'model': {k: getattr(cfg, k) for k in keys}}))
  return str(src)


@pytest.mark.parametrize(
  'what, needle',
  [
    ({'keep': 'mlp:64'}, r'^--keep: mlp 64 does not exist \(the model has 64: 0..63\)$'),
    ({'keep': 'mlp:0;neurons:1'}, "--keep: unknown axis 'neurons'"),
    ({'keep': 'mlp:0-16'}, '--keep: 17 mlp kept, more than --prune=mlp:16'),
    ({'keep': 'heads:0;heads:2', 'prune': 'heads:2'}, r'4 heads \(whole kv groups of 2\) kept'),
    ({'keep': 'embed:0'}, r'--keep: embed is not cut by --prune \(add embed:N'),
    ({'keep': 'mlp:a-b'}, "--keep: 'mlp:a-b' is not AXIS:INDICES"),
    ({'keep': 'mlp:5-2'}, "--keep: 'mlp:5-2' is not AXIS:INDICES"),
    ({'prune': 'mlp:16/32/16/32'}, 'per-layer sizes are not expressible'),
    ({'prune': 'mlp:16,32'}, 'per-layer sizes are not expressible'),
    ({'depth': 'block'}, r'--depth=block: give the layers to keep \(--prune=layers:K\)'),
    (
      {'depth': 'block', 'prune': 'layers:2', 'keep': 'layers:1,2'},
      r'no 2 contiguous layers avoid the kept layers \[1, 2\]',
    ),
    ({'prune': '', 'keep': 'mlp:0'}, 'steer --prune: give --prune too'),
    ({'importance_file': 'nowhere.json'}, '--importance=nowhere.json: No such file'),
    ({'importance_file': 'bad'}, r'--importance=.*: not JSON'),
    ({'importance_file': 'short'}, '--importance: mlp has 3 scores; the model has 64'),
    ({'importance_file': 'heads3'}, '--importance: heads has 3 scores; the model has 2 or 4'),
    ({'importance_file': 'nan'}, '--importance: mlp must be a flat list of finite numbers'),
  ],
)
def test_bad_steering_is_one_line_before_loading(tmp_path, what, needle):
  """train.tools.compress.check reads only the source's config.json: each bad --keep / --importance
  / --depth / per-layer --prune is one line naming the flag."""
  from train.tools import compress

  files = {'bad': '{"mlp": [1,', 'short': '{"mlp": [1, 2, 3]}', 'heads3': '{"heads": [1, 2, 3]}',
           'nan': '{"mlp": [NaN]}'}  # fmt: skip
  if what.get('importance_file') in files:
    (tmp_path / 'f.json').write_text(files[what['importance_file']])
    what = {**what, 'importance_file': str(tmp_path / 'f.json')}
  full = {'prune': 'mlp:16', 'sparsity': 0.0, 'pattern': 'unstructured', 'quantize': '', 'group': 0}
  with pytest.raises(ValueError, match=needle) as e:
    compress.check(_config_only(tmp_path), str(tmp_path / 'out'), {**full, **what})
  assert '\n' not in str(e.value)


def test_steered_summary_lines():
  """The summary of a steered pruning: params, eval loss and size before -> after, what --keep
  forced, where the importances came from and the dropped block with its loss increase."""
  from train.tools import compress

  record = {
    'source': '/w/src', 'prune': 'layers:2,mlp:32', 'sparsity': 0.0, 'quantize': '',
    'keep': 'mlp:0-7', 'importance_file': '/w/s.json', 'depth': 'block',
    'shape': {'layers': 2, 'heads': 4, 'mlp': 32, 'embed': 32},
    'params_before': 4000, 'params_after': 1500, 'loss_before': 3.0, 'loss_after': 3.5,
    'bytes_before': 16000, 'bytes_after': 6000, 'bytes_on_disk': 3 * 2**20 // 2,
    'dropped_layers': [1, 2], 'wall_s': 3.0,
    'blocks': [{'layers': [s, s + 1], 'loss_increase': x} for s, x in enumerate([0.3, 0.1, 0.2])],
  }  # fmt: skip
  assert compress.summary(record, '/w/out').splitlines() == [
    'Compressed /w/src: pruned to layers 2, heads 4, mlp 32, embed 32',
    '  params:    4,000 -> 1,500 (-62.5%)',
    '  eval loss: 3.0000 -> 3.5000 (+0.5000)',
    '  size:      15.6 KiB -> 5.9 KiB of params (-62.5%); 1.5 MiB on disk',
    '  kept:      mlp:0-7 (--keep), the rest by importance',
    '  scores:    /w/s.json (--importance)',
    '  depth:     dropped the contiguous layers 1-2 (+0.1000 calibration loss; 3 candidate blocks)',
    '  out:       /w/out in 3.0s (full record: compress.json)',
  ]


@pytest.mark.slow  # (the steering's parts run by default above; this is the whole command)
def test_steered_cli_equals_transformers_sliced_by_hand(data_dir, tmp_path):
  """train.tools.compress on an hf: LLaMA-GQA (4 layers): --prune=layers:2,mlp:32 --keep=mlp:0-7
  --depth=block. Forced neurons are kept, the dropped block is the one whose removal raises
  transformers' own loss on the calibration batches least, and OUT's logits equal transformers'
  model with that block and the other neurons removed by hand."""
  import torch
  import transformers
  from helpers import HF_LLAMA, REPO, make_hf, save

  from configs import default
  from train import init_from
  from train.tools import compress

  kw = {**HF_LLAMA, 'num_hidden_layers': 4, 'vocab_size': 257, 'intermediate_size': 64,
        'tie_word_embeddings': False}  # fmt: skip
  hf_dir = save(make_hf(transformers.LlamaConfig, kw), tmp_path / 'hf')
  data = [f'--config={REPO}/configs/default.py', f'--config.data.data_dir={data_dir}',
          '--config.data.seq_len=32', '--config.train.global_batch_size=8']  # fmt: skip
  config = default.get_config()  # the same run config, for the calibration batches below
  config.data.data_dir, config.data.seq_len, config.train.global_batch_size = data_dir, 32, 8
  out = str(tmp_path / 'pruned')
  argv = [sys.executable, '-m', 'train.tools.compress', f'--workdir=hf:{hf_dir}', f'--out={out}',
          '--prune=layers:2,mlp:32', '--keep=mlp:0-7', '--depth=block', '--calib_batches=2',
          '--eval_batches=1', '--tokenizer=byte', *data]  # fmt: skip
  done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  lines = done.stdout.strip().splitlines()
  assert lines[0].startswith(f'Compressed hf:{hf_dir}: pruned to layers 2')
  assert any(x.startswith('  size:') and x.endswith('on disk') for x in lines)
  full = json.load(open(f'{out}/compress.json'))
  assert set(range(8)) <= set(full['kept']['mlp']) and len(full['blocks']) == 3
  # The calibration batches the command used, and transformers' loss without each block.
  r = compress._run(compress.run_config(f'hf:{hf_dir}', config, 'byte'), 1)
  batches = [torch.from_numpy(r.train_ds.batch(s)).long() for s in range(2)]
  ref = transformers.LlamaForCausalLM.from_pretrained(hf_dir).eval()

  def loss(model):
    with torch.no_grad():
      return float(np.mean([model(b, labels=b, use_cache=False).loss.item() for b in batches]))

  base, layers, rise = loss(ref), ref.model.layers, []
  for s in range(3):
    ref.model.layers = torch.nn.ModuleList([m for i, m in enumerate(layers) if i not in (s, s + 1)])
    ref.config.num_hidden_layers = 2
    rise.append(loss(ref) - base)
  ref.model.layers, ref.config.num_hidden_layers = layers, 4
  best = int(np.argmin(rise))
  assert full['dropped_layers'] == [best, best + 1]
  np.testing.assert_allclose([b['loss_increase'] for b in full['blocks']], rise, atol=1e-4)
  # OUT equals transformers with that block and the unkept neurons sliced out.
  neurons = torch.tensor(full['kept']['mlp'])
  kept = [m for i, m in enumerate(layers) if i not in (best, best + 1)]
  with torch.no_grad():
    for layer in kept:
      mlp = layer.mlp
      for lin in (mlp.gate_proj, mlp.up_proj):
        lin.weight = torch.nn.Parameter(lin.weight[neurons])
      mlp.down_proj.weight = torch.nn.Parameter(mlp.down_proj.weight[:, neurons])
  for j, layer in enumerate(kept):
    layer.self_attn.layer_idx = j
  ref.model.layers = torch.nn.ModuleList(kept)
  ref.config.num_hidden_layers, ref.config.intermediate_size = 2, 32
  tokens = np.random.RandomState(0).randint(0, 257, (2, 16)).astype(np.int32)
  with torch.no_grad():
    theirs = ref(torch.from_numpy(tokens).long(), use_cache=False).logits.float().numpy()
  cfg, params = init_from.load_params(out)
  np.testing.assert_allclose(np.asarray(models.logits(cfg, params, tokens)), theirs, atol=1e-4)
