"""QLoRA (model.lora_base_resident='quantized'): LoRA adapters trained on a base whose kernels stay
quantized in memory (models/resident_quant.py). Its logits equal float LoRA's on the base that an
independent numpy decoder dequantizes from the packed file (int4, NF4; DoRA); NF4 is written as the
nearest level; the kernels are no params (no gradient, no optimizer state, not in the adapter-only
checkpoint). A run from a train.tools.compress workdir has float LoRA's losses on the same base
dequantized on load, resumes bitwise, references that workdir by path and checksums (a changed one
is refused in one line); lm-eval in the loop, train.tools.sample and train.tools.export read it; bad
input is one line."""

import dataclasses
import hashlib
import json
import os

import jax
import numpy as np
import pytest
import safetensors.numpy
from flax import traverse_util
from helpers import checkpoint_meta, restored_state, train_from

import models
from models import lora, parametrization, quantize, resident_quant, rtn
from train import checkpoint, init_from, validation
from train.tools import compress, export, harness, sample

BASE = models.ModelConfig(
  vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=16, use_bias=True
)
# NormalFloat4's 16 levels (Dettmers et al. 2023, QLoRA, Appendix E), for the numpy decoder.
NF4 = np.array([
  -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
  -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
  0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
  0.7229568362236023, 1.0,
], np.float32)  # fmt: skip


def numpy_dequantized(cfg, packed, scheme, group):
  """The float32 params of a packed file (quantize_tree's {name: array}) by numpy alone: nibbles
  two per byte, even index low; int4 signed, nf4 level indices; x the scale of each group."""
  out = []
  for name, s, axes in quantize.leaves(cfg, quantize.shapes(cfg)):
    if not parametrization.compressible(axes):
      out.append(np.asarray(packed[name], np.float32).reshape(s.shape))
      continue
    n, i, o = rtn.dims(axes, s.shape)
    b = np.asarray(packed[name + ':q'], np.uint8).reshape(-1)
    nib = np.stack([b & 15, b >> 4], -1).reshape(-1)[: n * i * o].astype(np.int32)
    v = NF4[nib] if scheme == 'nf4' else np.where(nib > 7, nib - 16, nib).astype(np.float32)
    scale = np.repeat(np.asarray(packed[name + ':scale']), group, axis=1)
    out.append((v.reshape(n, i, o) * scale).reshape(s.shape))
  return jax.tree.unflatten(jax.tree.structure(quantize.shapes(cfg)), out)


def _random_packed(cfg, group, seed=0):
  """A packed file as quantize_tree writes one, its bytes and scales drawn at random."""
  rng, out = np.random.default_rng(seed), {}
  for name, s, axes in quantize.leaves(cfg, quantize.shapes(cfg)):
    if not parametrization.compressible(axes):
      out[name] = 0.1 * rng.standard_normal(s.shape, np.float32)
      continue
    n, i, o = rtn.dims(axes, s.shape)
    out[name + ':q'] = rng.integers(0, 256, n * i * o // 2, np.uint8)
    out[name + ':scale'] = rng.uniform(0.01, 0.05, (n, i // group, o)).astype(np.float32)
  return out


def _adapters(cfg, seed):
  """Random adapters of LoRA model `cfg` (B and DoRA's m too: the update is not zero)."""
  rng = np.random.default_rng(seed)
  shapes = traverse_util.flatten_dict(lora.split(models.param_shapes(cfg))[1])
  draw = lambda k, s: rng.uniform(0.5, 1.5, s) if k[-1].endswith('_m') else rng.normal(0, 0.2, s)
  return traverse_util.unflatten_dict(
    {k: draw(k, s.shape).astype(np.float32) for k, s in shapes.items()}
  )


@pytest.mark.parametrize('scheme,dora', [('int4', True), ('nf4', False)])
def test_qlora_forward_equals_float_lora_on_the_numpy_dequantized_base(scheme, dora):
  """QLoRA's logits equal float LoRA's on the base a numpy decoder dequantizes from the packed
  file (DoRA: its norms are the dequantized kernel's); the kernels are no params (no gradient,
  no optimizer state) and only the adapters train."""
  group = 16
  packed = _random_packed(BASE, group)
  float_cfg = BASE.replace(lora_rank=4, lora_dora=dora)
  cfg = float_cfg.replace(lora_base_resident='quantized')
  adapters = _adapters(float_cfg, 1)
  reference = lora.combine(numpy_dequantized(BASE, packed, scheme, group), adapters)
  params = lora.combine(init_from.resident_params(BASE, packed, scheme), adapters)
  tokens = np.random.default_rng(2).integers(0, BASE.vocab_size, (2, 12))
  want = np.asarray(models.logits(float_cfg, reference, tokens))
  np.testing.assert_allclose(models.logits(cfg, params, tokens), want, atol=1e-5, rtol=1e-5)

  rest, _ = resident_quant.split(params)
  shapes = traverse_util.flatten_dict(models.param_shapes(cfg))
  assert set(shapes) == set(traverse_util.flatten_dict(rest))  # the kernels: no params.
  trains = traverse_util.flatten_dict(models.trainable(cfg))
  assert {k for k, t in trains.items() if t} == set(traverse_util.flatten_dict(adapters))


@pytest.mark.parametrize('scheme', ['int4', 'nf4'])
def test_memory_estimate_counts_the_held_kernels(tiny_config, tmp_path, scheme):
  """A QLoRA run's memory estimate (train/memory.py) adds the base's quantized kernels, held on
  every device, to its params: init_from.held_bytes, from the file's header, is what the run's
  Held kernels hold."""
  from train import memory

  config = tiny_config({'model.lora_rank': 4, 'init_from': str(tmp_path)})
  base = validation.derive(config).model.replace(lora_rank=0)
  packed = _random_packed(base, 16)
  safetensors.numpy.save_file(packed, str(tmp_path / init_from.QUANTIZED_FILE))
  saved = {'model': dataclasses.asdict(base), 'quantized': {'scheme': scheme, 'group': 16}}
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  held = resident_quant.split(init_from.resident_params(base, packed, scheme))[1]
  leaves = jax.tree.leaves(held, is_leaf=resident_quant.is_held)
  assert init_from.held_bytes(str(tmp_path)) == sum(h.q.nbytes + h.scale.nbytes for h in leaves)

  config.model.lora_base_resident = 'quantized'
  derived = validation.derive(config)
  params = memory.param_bytes(derived.model, derived.mesh_shape)
  assert memory.for_run(derived).params == params + init_from.held_bytes(str(tmp_path))


def test_nf4_rounds_each_weight_to_the_nearest_level_times_its_group_absmax():
  """train.tools.compress's writer at --quantize=nf4 (quantize_tree, qwix's NormalFloat4): each
  value is the NF4 level nearest to w / absmax of its group, decoded by numpy as above."""
  group, params = 16, models.init(BASE, jax.random.key(0))
  got = numpy_dequantized(BASE, quantize.quantize_tree(BASE, params, 'nf4', group), 'nf4', group)
  for (name, w, axes), (_, deq, _) in zip(
    quantize.leaves(BASE, params), quantize.leaves(BASE, got)
  ):
    if not parametrization.compressible(axes):
      continue
    n, i, o = rtn.dims(axes, w.shape)
    w = np.asarray(w).reshape(n, i // group, group, o)
    absmax = np.abs(w).max(axis=2, keepdims=True)
    level = NF4[np.abs(w[..., None] / absmax[..., None] - NF4).argmin(-1)]
    np.testing.assert_allclose(
      np.asarray(deq).reshape(w.shape), level * absmax, atol=1e-6, err_msg=name
    )


def test_qlora_bad_config_is_one_line(tiny_config, tmp_path):
  """A quantized base without adapters, or a source that is no quantized workdir: one line each,
  naming the field, before anything is built."""
  cases = [
    ({'model.lora_base_resident': 'quantized'}, "config.model.lora_base_resident='quantized'"),
    ({'model.lora_base_resident': 'quantized', 'model.lora_rank': 4}, "config.init_from=''"),
    (
      {'model.lora_base_resident': 'quantized', 'model.lora_rank': 4, 'init_from': str(tmp_path)},
      f'config.init_from={str(tmp_path)!r}',
    ),
  ]
  for overrides, start in cases:
    with pytest.raises(ValueError) as e:
      validation.derive(tiny_config(overrides), 1)
    assert str(e.value).startswith(start) and '\n' not in str(e.value), str(e.value)
  assert 'train.tools.compress' in str(e.value)


def _snapshot(workdir):
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      if name != '.lock':
        path = os.path.join(root, name)
        out[os.path.relpath(path, workdir)] = hashlib.sha256(open(path, 'rb').read()).hexdigest()
  return out


def _toy_task(d):
  """An lm-eval task (rolling log-likelihood, bits per byte) over two local texts, in `d`."""
  data = d / 'roll.jsonl'
  data.write_text(''.join(json.dumps({'text': t}) + '\n' for t in ('import os\n', 'def f(x):\n')))
  (d / 'toy_roll.yaml').write_text(
    f'task: toy_roll\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n'
    'test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ""\n'
    'doc_to_target: "{{text}}"\nmetric_list:\n  - metric: bits_per_byte\n'
  )
  return str(d)


@pytest.mark.slow
def test_qlora_from_train_compress_resumes_bitwise_and_loads_everywhere(
  trained_workdir, tiny_config, tmp_path
):
  """train.tools.compress --quantize=int4 of a trained run, then QLoRA (DoRA, rank 4): its losses at
  steps 2 and 4 are float LoRA's on the same base dequantized on load (a run alone); 4 steps
  straight equal 2, a restart, 2 more (adapters and moments bitwise); the checkpoints hold the
  adapters and their moments only, the quantized workdir referenced with the held kernels'
  checksums; lm-eval in the loop scores the QLoRA model (as the harness scores it after); the
  model train.tools.sample loads equals float LoRA on the numpy-dequantized base, and the merged
  model (init_from without LoRA, train.tools.export) that; the quantized workdir changed, the resume
  is one line and the workdir is unchanged."""
  q = str(tmp_path / 'q')
  compress.main([f'--workdir={trained_workdir}', f'--out={q}', '--quantize=int4', '--group=16'])
  lora_on = {'init_from': q, 'model.lora_rank': 4, 'model.lora_dora': True, 'optimizer.lr': 1e-2}
  config = tiny_config({**lora_on, 'model.lora_base_resident': 'quantized'})
  straight, split, floats = tmp_path / 'straight', tmp_path / 'split', tmp_path / 'float'
  lm = {'lm_eval.tasks': ('toy_roll',), 'lm_eval.include_path': _toy_task(tmp_path)}
  with_lm = tiny_config({**lora_on, 'model.lora_base_resident': 'quantized', **lm})
  out = train_from(with_lm, straight, evaluators=[harness.LmEvalEvaluator(with_lm.lm_eval)])
  train_from(tiny_config(lora_on), floats)
  losses = lambda w: [json.loads(r)['train/loss'] for r in open(os.path.join(w, 'metrics.jsonl'))]
  np.testing.assert_allclose(losses(straight), losses(floats), rtol=1e-5)
  train_from(config, split, stop_after=2)
  train_from(config, split)
  (s1, p1, o1), (s2, p2, o2) = restored_state(straight, config), restored_state(split, config)
  assert s1 == s2 == 4 and all(map(lora.is_adapter, traverse_util.flatten_dict(p1)))
  jax.tree.map(np.testing.assert_array_equal, (p1, o1), (p2, o2))
  meta = checkpoint_meta(straight, 4)
  record = meta[checkpoint.LORA_BASE]
  assert record['base'] == os.path.abspath(q) and "['layers']['mlp']['wi'].q" in record['checksum']
  kernels = [k for k in meta['checksum'] if k.endswith(("['wi']", "['query']"))]
  assert not kernels and np.isfinite(out['eval/loss'])  # no kernel, nor a moment of one, saved.

  cfg, params, _, _ = sample.load(str(straight))
  packed = safetensors.numpy.load_file(os.path.join(q, init_from.QUANTIZED_FILE))
  base = numpy_dequantized(lora.base_config(cfg), packed, 'int4', 16)
  reference = lora.combine(base, lora.split(jax.device_get(params))[1])
  tokens = np.arange(24, dtype=np.int32).reshape(2, 12) % cfg.vocab_size
  got = np.asarray(models.logits(cfg, params, tokens))
  float_cfg = cfg.replace(lora_base_resident='float')
  np.testing.assert_allclose(got, models.logits(float_cfg, reference, tokens), atol=1e-5)
  local = harness.LMScaleLM(model_config=cfg, params=params, tokenizer='byte', batch_size=8)
  scored = harness.flat_metrics(
    harness.TaskSet(['toy_roll'], lm['lm_eval.include_path']).evaluate(local)
  )
  assert out['lm_eval/toy_roll/bits_per_byte'] == pytest.approx(
    scored['lm_eval/toy_roll/bits_per_byte'], rel=1e-5
  )
  merged_cfg, merged = init_from.load_params(str(straight), lora.base_config(cfg))
  np.testing.assert_allclose(models.logits(merged_cfg, merged, tokens), got, atol=1e-5)
  exported = export.export(str(straight), str(tmp_path / 'export'))
  assert exported['params_after'] == sum(x.size for x in jax.tree.leaves(base))

  packed[next(k for k in packed if k.endswith(':q'))][0] ^= 0x11  # the same shapes, other values.
  safetensors.numpy.save_file(packed, os.path.join(q, init_from.QUANTIZED_FILE))
  before = _snapshot(straight)
  with pytest.raises(ValueError) as e:
    train_from(tiny_config({**lora_on, 'model.lora_base_resident': 'quantized'}), straight)
  line = str(e.value)
  assert line.startswith(f'{os.path.abspath(q)}: not the LoRA base') and '.q' in line
  assert '\n' not in line and _snapshot(straight) == before
