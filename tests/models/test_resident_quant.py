"""Quantized kernels held quantized in memory (models/resident_quant.py): the forward and the decode
loop equal the dequantize-on-load path (models/quantize.py `dequantize_tree`), and the resident
bytes shrink by the ratio computed from the shapes alone."""

import math

import jax
import numpy as np
import pytest

import models
from models import generation, parametrization, quantize, resident_quant
from train import init_from

CFG = models.ModelConfig(
  vocab_size=64, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_len=32, use_bias=True
)
BITS = {'int8': 8, 'int4': 4, 'fp8': 8}


def _setup(cfg, scheme, group, awq=False):
  params = models.init(cfg, jax.random.key(0))
  packed = quantize.quantize_tree(cfg, params, scheme, group)
  if awq:  # AWQ's per-fan-in scales (the kernel was quantized as w * s): any positive values.
    for name, s, axes in quantize.leaves(cfg, quantize.shapes(cfg)):
      if parametrization.compressible(axes):
        n_i = quantize.rtn.dims(axes, s.shape)[:2]
        packed[name + ':awq_scale'] = np.random.default_rng(0).uniform(0.5, 2, n_i).astype('f4')
  on_load = jax.device_put(quantize.dequantize_tree(cfg, packed, scheme))
  held = jax.device_put(init_from.resident_params(cfg, packed, scheme))
  return on_load, held


def _expected_bytes(cfg, scheme, group):
  """(float32 bytes, resident bytes) from the shapes: kernels at BITS/8 bytes a value plus one
  float32 scale per (layer, group, output); everything else float32."""
  floats = resident = 0
  for _, s, axes in quantize.leaves(cfg, quantize.shapes(cfg)):
    size = math.prod(s.shape)
    floats += 4 * size
    if not parametrization.compressible(axes):
      resident += 4 * size
      continue
    n, i, o = quantize.rtn.dims(axes, s.shape)
    resident += size * BITS[scheme] // 8 + 4 * n * (i // (group or i)) * o
  return floats, resident


def _check(cfg, scheme, group, awq=False, decode=True):
  on_load, held = _setup(cfg, scheme, group, awq)
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, cfg.vocab_size)
  want = np.asarray(models.logits(cfg, on_load, tokens))
  got = np.asarray(models.logits(cfg, held, tokens))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)

  floats, resident = _expected_bytes(cfg, scheme, group)
  assert resident_quant.resident_bytes(on_load) == floats
  assert resident_quant.resident_bytes(held) == resident + 4 * awq * _awq_size(cfg)
  print(f'{scheme} group {group}: resident {resident} B of float32 {floats} B')

  if not decode:
    return
  prompts = [[1, 2, 3, 4], [5, 6]]
  (a, la), (b, lb) = (generation.generate_with_logits(cfg, p, prompts, 4) for p in (on_load, held))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # greedy: the same tokens,
  np.testing.assert_allclose(np.asarray(lb), np.asarray(la), atol=1e-5, rtol=1e-5)  # decode steps.


def _awq_size(cfg):
  return sum(
    quantize.rtn.dims(a, s.shape)[0] * quantize.rtn.dims(a, s.shape)[1]
    for _, s, a in quantize.leaves(cfg, quantize.shapes(cfg))
    if parametrization.compressible(a)
  )


def test_int4_grouped_logits_and_bytes_equal_the_dequantized_path():
  _check(CFG, 'int4', 32, decode=False)


@pytest.mark.slow
@pytest.mark.parametrize('scheme,group', [('int4', 32), ('int8', 0)])
def test_greedy_decode_equals_the_dequantized_path(scheme, group):
  _check(CFG, scheme, group)


@pytest.mark.slow
@pytest.mark.parametrize('scheme,group', [('int8', 0), ('fp8', 0), ('int4', 0)])
def test_schemes_unscanned_and_awq_equal_the_dequantized_path(scheme, group):
  _check(CFG.replace(scan_layers=False), scheme, group, awq=scheme == 'int8')


def test_resident_needs_a_quantized_workdir(tmp_path):
  with pytest.raises(ValueError, match='not a quantized workdir'):
    init_from.load_resident(str(tmp_path))
