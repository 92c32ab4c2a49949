"""compressed-tensors exports (models/compressed_export.py, `train.tools.export
--format=compressed-tensors`) against their reference loader: transformers with the
compressed-tensors package, on CPU, loads the export as a quantized model (each projection carries
its compressed-tensors scheme and packed weights) whose weights equal our dequantized ones and whose
logits match ours to 1e-4; 2:4-sparse models carry the sparsity marking; the packing equals
compressed-tensors' own pack_to_int32."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from helpers import LLAMA_BLOCK

import models
from configs import schema
from models import calibrated_quant, compressed_export, sparsity
from train import checkpoint, init_from
from train.tools import export, quantized

LLAMA = {
  **{f'model.{k}': v for k, v in LLAMA_BLOCK.items()},
  'model.n_kv_heads': 2,
  'model.tie_embeddings': False,
  'model.scan_unroll': 1,
}


def _source(tiny_config, tmp_path, family=LLAMA, two_four=False, name='src'):
  """A params-only workdir of a tiny random model (LLaMA-GQA by default), optionally 2:4 sparse
  through models/sparsity.py's masks, recorded in its config's sparsity section as training does."""
  extra = {'sparsity.target': 0.5, 'sparsity.pattern': '2:4'} if two_four else {}
  config = schema.Config.make(tiny_config({**family, **extra}))
  rng = np.random.default_rng(0)  # random values of the params' shapes (no init to compile).
  params = jax.tree.map(
    lambda s: jnp.asarray(0.05 * rng.standard_normal(s.shape), jnp.float32),
    models.param_shapes(config.model),
  )
  if two_four:
    params = sparsity.apply(
      params, sparsity.magnitude_masks(config.model, params, 0.5, 'global', '2:4')
    )
  src = str(tmp_path / name)
  checkpoint.write_params(src, json.dumps(config.to_dict(), indent=2), params, 0, {})
  return src


def _quantize(src: str, out: str, scheme: str, group: int, method: str = 'rtn') -> str:
  """The packed quantized workdir of `src` (train/tools/quantized.py, as train.tools.compress
  --quantize; GPTQ on two random token batches)."""
  cfg, params = init_from.load_params(src)
  config = json.load(open(os.path.join(src, 'config.json')))
  stats = None
  if method != 'rtn':
    batches = [np.random.default_rng(i).integers(0, 256, (4, 17)) for i in range(2)]
    stats = calibrated_quant.calibration_stats(cfg, params, batches)
  quantized.write(out, config, cfg, params, scheme, group, os.path.abspath(src), method, stats)
  return out


def _load_and_compare(workdir: str, out: str, tokens_BxL: np.ndarray):
  """transformers' model of the export `out` (quantized, before its first forward) and its
  logits on `tokens_BxL` vs ours on `workdir`'s (dequantized) params: (model, max |diff|)."""
  import torch
  import transformers

  cfg, params = init_from.load_params(workdir)
  ours = np.asarray(models.logits(cfg, params, jnp.asarray(tokens_BxL)))
  model = transformers.AutoModelForCausalLM.from_pretrained(out)
  state = {n: dict(m.named_parameters(recurse=False)) for n, m in model.named_modules()}
  with torch.no_grad():
    theirs = model(torch.as_tensor(tokens_BxL)).logits.numpy()
  return model, state, float(np.abs(theirs - ours).max())


def _quantized_linears(model) -> dict:
  """{module name: its compressed-tensors scheme} of every nn.Linear (None: not quantized)."""
  import torch

  return {
    n: getattr(m, 'quantization_scheme', None)
    for n, m in model.named_modules()
    if isinstance(m, torch.nn.Linear)
  }


def test_int4_grouped_export_loads_quantized_in_transformers(tiny_config, tmp_path, capsys):
  """int4 group 16 LLaMA-GQA through the command line: every projection loads as a
  compressed-tensors int4 module holding weight_packed (no float weight), decompresses to our
  dequantized kernel bit for bit, and the logits match ours to 1e-4; lm_head and the embeddings
  stay float. The summary names the format and the size on disk; --format=dense (the default)
  still writes float32 with no quantization_config."""
  wd = _quantize(_source(tiny_config, tmp_path), str(tmp_path / 'q'), 'int4', 16)
  out, dense = str(tmp_path / 'ct'), str(tmp_path / 'dense')
  export.main([f'--workdir={wd}', f'--out={out}', '--format=compressed-tensors'])
  export.main([f'--workdir={wd}', f'--out={dense}'])
  printed = capsys.readouterr().out
  qc = json.load(open(os.path.join(out, 'config.json')))['quantization_config']
  weights = qc['config_groups']['group_0']['weights']
  assert (qc['quant_method'], qc['format'], qc['sparsity_config']) == (
    'compressed-tensors',
    'pack-quantized',
    {},
  )
  assert (weights['num_bits'], weights['strategy'], weights['group_size']) == (4, 'group', 16)
  assert 'quantization_config' not in json.load(open(os.path.join(dense, 'config.json')))
  tokens = np.random.default_rng(1).integers(0, 256, (2, 16))
  model, before, diff = _load_and_compare(wd, out, tokens)
  assert diff <= 1e-4, diff
  schemes = _quantized_linears(model)
  assert schemes.pop('lm_head') is None and len(schemes) == 2 * 7  # q k v o gate up down.
  for name, scheme in schemes.items():
    assert scheme.weights.num_bits == 4 and scheme.weights.group_size == 16, name
    assert set(before[name]) == {'weight_packed', 'weight_scale', 'weight_shape'}, name
  cfg, params = init_from.load_params(wd)
  q_proj = model.model.layers[1].self_attn.q_proj.weight.detach().numpy()  # decompressed.
  ours = np.asarray(params['layers']['attn']['query'][1]).reshape(cfg.d_model, -1).T
  np.testing.assert_array_equal(q_proj, ours)
  with pytest.raises(
    ValueError, match='quantized weights .compressed-tensors, format pack-quantized'
  ):
    init_from.load_params(f'hf:{out}')  # our importer reads float checkpoints only: one line.
  sizes = [os.path.getsize(os.path.join(d, 'model.safetensors')) for d in (out, dense)]
  lines = [x for x in printed.splitlines() if 'format:' in x]
  assert 'compressed-tensors (pack-quantized int4 group 16)' in lines[0], lines
  assert 'float32, dequantized from int4 group 16' in lines[1], lines
  stored = safetensors.numpy.load_file(os.path.join(out, 'model.safetensors'))
  kernels = sum(np.prod(v) for k, v in stored.items() if k.endswith('.weight_shape'))
  packed = sum(v.nbytes for k, v in stored.items() if k.endswith('.weight_packed'))
  scales = sum(v.nbytes for k, v in stored.items() if k.endswith('.weight_scale'))
  assert (packed, scales) == (kernels // 2, kernels // 16 * 4) and sizes[0] < sizes[1], sizes
  print(f'max |logit diff| {diff:.2e}; model.safetensors {sizes[0]:,} vs dense {sizes[1]:,} bytes')


def test_pack_int32_is_compressed_tensors_packing():
  """Our numpy packing equals compressed-tensors' pack_to_int32 (3, 4 and 8 bits, a row length
  that leaves a partly filled last word)."""
  import torch
  from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

  rng = np.random.default_rng(0)
  for bits in (3, 4, 8):
    v = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), (5, 37)).astype(np.int8)
    want = pack_to_int32(torch.as_tensor(v), bits).numpy()
    np.testing.assert_array_equal(compressed_export.pack_int32(v, bits), want)


@pytest.mark.parametrize(
  'scheme,group,method',
  [('int8', 0, 'rtn')]
  + [
    pytest.param(*p, marks=pytest.mark.slow)
    for p in (('int8', 32, 'rtn'), ('int3', 16, 'rtn'), ('fp8', 0, 'rtn'), ('int4', 16, 'gptq'))
  ],
)
def test_other_schemes_load_and_match(tiny_config, tmp_path, scheme, group, method):
  """int8 per channel and grouped, int3 grouped (3-bit pack-quantized), fp8 (naive-quantized) and
  GPTQ's int4 load quantized in transformers and match our dequantized logits to 1e-4."""
  wd = _quantize(_source(tiny_config, tmp_path), str(tmp_path / 'q'), scheme, group, method)
  out = str(tmp_path / 'ct')
  export.export(wd, out, fmt='compressed-tensors')
  model, _, diff = _load_and_compare(wd, out, np.random.default_rng(1).integers(0, 256, (2, 16)))
  assert diff <= 1e-4, diff
  schemes = _quantized_linears(model)
  assert schemes.pop('lm_head') is None
  bits = compressed_export.BITS[scheme]
  assert all(s is not None and s.weights.num_bits == bits for s in schemes.values())
  print(f'{scheme} group {group} ({method}): max |logit diff| {diff:.2e}')


@pytest.mark.slow  # (a 2:4 model's masks and one more transformers load: ~5 s on 2 busy cores)
@pytest.mark.parametrize('scheme', [None, 'int4'])
def test_two_four_sparse_export_is_marked(tiny_config, tmp_path, scheme):
  """A 2:4-sparse model exports with sparsity_config marking 2:4 over the same modules as the
  quantization (float: stored dense, no quantized group; int4 of it: both); transformers loads
  it and matches our logits to 1e-4; the float one imports back as it was."""
  wd = _source(tiny_config, tmp_path, two_four=True)
  if scheme:
    wd = _quantize(wd, str(tmp_path / 'q'), scheme, 0)
  out = str(tmp_path / 'ct')
  record = export.export(wd, out, fmt='compressed-tensors')
  qc = json.load(open(os.path.join(out, 'config.json')))['quantization_config']
  marked = qc['sparsity_config']
  assert (marked['format'], marked['sparsity_structure']) == ('dense', '2:4')
  assert marked['global_sparsity'] >= 0.5 and len(marked['targets']) == 7
  if scheme:
    assert qc['config_groups']['group_0']['targets'] == marked['targets']
  else:
    assert qc['config_groups'] == {} and marked['global_sparsity'] == 0.5
  model, _, diff = _load_and_compare(wd, out, np.random.default_rng(1).integers(0, 256, (2, 16)))
  assert diff <= 1e-4, diff
  assert model.config.quantization_config.quant_method == 'compressed-tensors'
  print(f'2:4 ({scheme or "float32"}): max |logit diff| {diff:.2e}')
  assert '2:4 sparsity marked' in export.summary(record)
  if not scheme:  # stored dense: our own importer reads it back.
    imported = init_from.load_params(f'hf:{out}')[1]
    jax.tree.map(np.testing.assert_array_equal, imported, init_from.load_params(wd)[1])


def test_bad_inputs_are_one_line_before_loading(tiny_config, tmp_path, monkeypatch, capsys):
  """GPT-2 (Conv1D), a float workdir that is neither quantized nor 2:4, an adapter export: one
  `error:` line from the command line, before any weight is read and with nothing written; AWQ
  kernels (deq(q) / s) are refused by the format check."""
  gpt2 = _source(tiny_config, tmp_path, {}, name='gpt2')
  llama = _source(tiny_config, tmp_path)
  monkeypatch.setattr(init_from, 'load_params', lambda *a, **k: pytest.fail('loaded weights'))
  cases = [
    (gpt2, 'merged', 'GPT-2 keeps its projections in Conv1D layers'),
    (llama, 'merged', f'{llama} is neither a quantized workdir'),
    (llama, 'adapter', 'the adapter (--what=adapter) is float PEFT weights'),
  ]
  out = str(tmp_path / 'x')
  for wd, what, msg in cases:
    with pytest.raises(SystemExit) as e:
      export.main(
        [f'--workdir={wd}', f'--out={out}', f'--what={what}', '--format=compressed-tensors']
      )
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and msg in err[0], err
  assert not os.path.exists(out)
  cfg = init_from.workdir_model_config(llama)
  with pytest.raises(ValueError, match='AWQ kernels dequantize as deq'):
    compressed_export.check(cfg, 'int4', 'awq')
