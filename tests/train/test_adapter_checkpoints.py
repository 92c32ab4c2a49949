"""Adapter-only checkpoints of LoRA runs and loading adapters back: a LoRA run's checkpoints hold
its adapters and their Adam moments (bytes in the ratio of adapter to all params of a full
fine-tuning checkpoint), the frozen base referenced by source and checksums, reloaded and verified
on resume (a changed base refused in one line, nothing in the workdir changed; a moved one
accepted); `init_from=peft:DIR` (a PEFT adapter exported here, on its HF base) trains on and
resumes bitwise; train.tools.sample, train.tools.harness and train.tools.export read a LoRA workdir;
`init_from` a LoRA workdir trains its adapters on or, without LoRA, its merged model."""

import hashlib
import os
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util
from helpers import HF_LLAMA, LLAMA_BLOCK, checkpoint_meta, restored_state, train_from

import models
from models import lora
from train import checkpoint, context, init_from, validation
from train.tools import export, harness, sample


def _hf_base(path, seed=0, **kw):
  """A tiny random LLaMA in HF format (the byte tokenizer's 257 ids)."""
  torch.manual_seed(seed)
  cfg = transformers.LlamaConfig(
    **{**HF_LLAMA, 'vocab_size': 257, 'intermediate_size': 64, **kw}, tie_word_embeddings=False
  )
  transformers.LlamaForCausalLM(cfg).save_pretrained(path)
  return str(path)


def _overrides(src, rank=4, **more):
  return {
    'init_from': src,
    **{f'model.{k}': v for k, v in LLAMA_BLOCK.items()},
    'model.norm_eps': 1e-6,
    'model.tie_embeddings': False,
    'model.n_kv_heads': 2,
    'model.lora_rank': rank,
    'optimizer.lr': 1e-2,
    **more,
  }


def _saved_params(meta):
  """The param leaf names a checkpoint holds (its checksums' keys under .params)."""
  return [k.rsplit("['", 1)[-1].rstrip("']") for k in meta['checksum'] if k.startswith('.params')]


def _flat(tree):
  return {'/'.join(k): v for k, v in traverse_util.flatten_dict(jax.device_get(tree)).items()}


def _snapshot(workdir):
  """sha256 of every file under workdir but its lock file."""
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      if name != '.lock':
        with open(os.path.join(root, name), 'rb') as f:
          out[os.path.relpath(os.path.join(root, name), workdir)] = hashlib.sha256(
            f.read()
          ).hexdigest()
  return out


@pytest.mark.slow
def test_lora_checkpoint_holds_adapters_and_refuses_a_changed_base(tiny_config, tmp_path):
  """2 steps of LoRA from an HF base: the checkpoint's params are the adapters, its metadata the
  base's source and checksums; train.tools.sample loads base + adapters; the base rewritten with
  other weights, the resume is one line naming it and the tensor, and the workdir is unchanged."""
  base = _hf_base(tmp_path / 'base')
  config = tiny_config(_overrides(f'hf:{base}', **{'train.num_steps': 2}))
  workdir = str(tmp_path / 'lora')
  train_from(config, workdir)
  meta = checkpoint_meta(workdir, 2)
  record = meta[checkpoint.LORA_BASE]
  assert record['init_from'] == f'hf:{base}' and record['base'] == f'hf:{os.path.abspath(base)}'
  assert _saved_params(meta) and all(lora.is_adapter((k,)) for k in _saved_params(meta))
  cfg, params, _, _ = sample.load(workdir)
  loaded_base, adapters = lora.split(params)
  _, hf_params = init_from.load_params(f'hf:{base}', lora.base_config(cfg))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded_base), hf_params)
  assert all(np.abs(v).max() > 0 for k, v in _flat(adapters).items() if k.endswith('_lora_b'))

  _hf_base(base, seed=1)  # the same shapes, other weights.
  before = _snapshot(workdir)
  with pytest.raises(ValueError) as e:
    train_from(tiny_config(_overrides(f'hf:{base}')), workdir)
  line = str(e.value)
  assert '\n' not in line and line.startswith(f'hf:{os.path.abspath(base)}: not the LoRA base')
  assert "tensor ['" in line and 'lora_base.checksum' in line
  assert _snapshot(workdir) == before


@pytest.fixture(scope='module')
def lora_run(tiny_config, tmp_path_factory):
  """(hf base dir, LoRA workdir: 4 steps from hf:base, checkpoints 2 and 4, the best of the
  evaluations at 2 and 4 in W/best)."""
  root = tmp_path_factory.mktemp('adapters')
  base = _hf_base(root / 'base')
  workdir = str(root / 'lora')
  best = {'train.best_metric': 'eval/loss', 'train.eval_every': 2}
  train_from(tiny_config(_overrides(f'hf:{base}', **best)), workdir)
  return base, workdir


@pytest.mark.slow
def test_peft_adapter_exported_imported_trains_on_and_resumes_bitwise(
  lora_run, tiny_config, tmp_path
):
  """train.tools.export's PEFT adapter of a LoRA run, as init_from=peft:DIR, starts from that run's
  params (base and adapters); 4 steps straight equal 2, a restart, 2 more (params, moments,
  bitwise), each checkpoint holding the adapters on the HF base the adapter names."""
  base, workdir = lora_run
  adapter = str(tmp_path / 'adapter')
  export.export(workdir, adapter, what='adapter')
  src = f'peft:{adapter}'
  config = tiny_config(_overrides(src))
  start = init_from.params_fn(config)(context.setup(validation.derive(config)))
  _, trained = init_from.load_params(workdir)
  for k, v in _flat(trained).items():
    np.testing.assert_allclose(_flat(start)[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
  straight, split = tmp_path / 'straight', tmp_path / 'split'
  train_from(config, straight)
  train_from(config, split, stop_after=2)
  assert checkpoint_meta(split, 2)[checkpoint.LORA_BASE]['base'] == f'hf:{os.path.abspath(base)}'
  train_from(config, split)
  (s1, p1, o1), (s2, p2, o2) = restored_state(straight, config), restored_state(split, config)
  assert s1 == s2 == 4
  assert sorted(_flat(p1)) == sorted(_flat(lora.split(start)[1]))  # the adapters only.
  jax.tree.map(np.testing.assert_array_equal, p1, p2)
  jax.tree.map(np.testing.assert_array_equal, o1, o2)
  full1, full2 = init_from.load_params(str(straight))[1], init_from.load_params(str(split))[1]
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(full1), jax.device_get(full2))


@pytest.mark.slow
def test_lora_workdir_loads_everywhere_and_as_init_from(lora_run, tiny_config, tmp_path):
  """A LoRA workdir: train.tools.harness and train.tools.sample load the same params, W/best holds
  adapters too; train.tools.export's merged model gives them in transformers; init_from it trains
  its adapters on (same settings), or its merged model (lora_rank=0), other settings are one line; a
  moved base resumes."""
  base, workdir = lora_run
  cfg, params, _, _ = sample.load(workdir)
  _, again = harness.load(workdir)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(again), jax.device_get(params))
  best = os.path.join(workdir, 'best')
  (step,) = [int(s) for s in os.listdir(os.path.join(best, 'checkpoints')) if s.isdigit()]
  assert all(lora.is_adapter((k,)) for k in _saved_params(checkpoint_meta(best, step)))
  base_params = lora.split(jax.device_get(init_from.load_params(best)[1]))[0]
  jax.tree.map(np.testing.assert_array_equal, base_params, lora.split(jax.device_get(params))[0])
  export.export(workdir, str(tmp_path / 'merged'))
  merged = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / 'merged')).eval()
  tokens = np.arange(24, dtype=np.int32).reshape(2, 12)
  with torch.no_grad():
    theirs = merged(torch.from_numpy(tokens).long()).logits.float().numpy()
  np.testing.assert_allclose(np.asarray(models.logits(cfg, params, tokens)), theirs, atol=1e-4)

  on = tiny_config(_overrides(workdir))
  got = init_from.params_fn(on)(context.setup(validation.derive(on)))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(got), jax.device_get(params))
  full = tiny_config(_overrides(workdir, rank=0))
  got = init_from.params_fn(full)(context.setup(validation.derive(full)))
  want = lora.merge(cfg, params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got, want)
  other = tiny_config(_overrides(workdir, rank=2))
  with pytest.raises(ValueError, match=r'its adapters are rank 4 .* or lora_rank=0'):
    init_from.params_fn(other)(context.setup(validation.derive(other)))

  moved, copy = str(tmp_path / 'moved'), str(tmp_path / 'copy')
  shutil.copytree(base, moved)
  shutil.copytree(workdir, copy)
  out = train_from(tiny_config(_overrides(f'hf:{moved}')), copy)  # finished: loads, evaluates.
  assert np.isfinite(out['eval/loss'])


def _data_bytes(step_dir):
  """Bytes of a checkpoint's array data files (orbax's OCDBT d/ files), and of all its files."""
  data = total = 0
  for d, _, files in os.walk(step_dir):
    for f in files:
      n = os.path.getsize(os.path.join(d, f))
      total += n
      data += n if '/ocdbt.process_' in d and d.endswith('/d') else 0
  return data, total


@pytest.mark.slow
def test_adapter_checkpoint_bytes_follow_the_param_ratio(tiny_config, tmp_path):
  """2 steps of full fine-tuning and of LoRA (rank 4) on a 128-wide HF base: the LoRA
  checkpoint's bytes over the full one's are at most the adapters' share of the params (both hold
  params and two Adam moments) +10 % (orbax's metadata), its array bytes between half of it and
  it: orbax's zstd packs the adapters' moments tighter this early (A's are 0 while B = 0)."""
  base = _hf_base(tmp_path / 'base', hidden_size=128, intermediate_size=512)
  shape = {'model.d_model': 128, 'model.d_ff': 512, 'train.num_steps': 2}
  sizes = {}
  for name, rank in (('full', 0), ('lora', 4)):
    config = tiny_config(_overrides(f'hf:{base}', rank=rank, **shape))
    train_from(config, tmp_path / name)
    sizes[name] = _data_bytes(tmp_path / name / 'checkpoints' / '2')
  cfg = context.setup(
    validation.derive(tiny_config(_overrides(f'hf:{base}', **shape)))
  ).derived.model
  n_base, n_adapters = (
    sum(x.size for x in jax.tree.leaves(t)) for t in lora.split(models.param_shapes(cfg))
  )
  ratio = n_adapters / n_base
  data, total = (sizes['lora'][i] / sizes['full'][i] for i in (0, 1))
  print(
    f'params: base {n_base:,}, adapters {n_adapters:,} (ratio {ratio:.4f}); checkpoint bytes: '
    f'full {sizes["full"][1]:,} (arrays {sizes["full"][0]:,}), LoRA {sizes["lora"][1]:,} '
    f'(arrays {sizes["lora"][0]:,}); ratios: arrays {data:.4f}, all files {total:.4f}'
  )
  assert ratio / 2 < data < ratio and total < 1.1 * ratio
