"""Weight quantization (models/quantize.py, models/rtn.py, train/tools/quantized.py): RTN error
bounds, grouped scales, packed workdirs every loader reads, the model flag (PTQ / QAT with STE)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from helpers import LLAMA_BLOCK
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import models
from configs import schema
from models import quantize, rtn
from train import checkpoint, init_from, validation
from train.tools import quantized

AXES = ('layers', 'embed', 'mlp')  # an MLP-in kernel stacked over layers: [N, I, O].
QMAX = {'int8': 127.5, 'int4': 7.5, 'int3': 3.5}  # qwix's symmetric bound: qmax + 0.5.
STYLES = {
  'gpt2': ({}, 'int4', 64),
  'llama_gqa': (
    {
      **{f'model.{k}': v for k, v in LLAMA_BLOCK.items()},
      'model.n_kv_heads': 2,
      'model.tie_embeddings': False,
    },
    'int8',
    32,
  ),
}


def _kernel(seed=0, shape=(2, 128, 64)):
  return 0.02 * jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _group_absmax(w_NxIxO, group):
  n, i, o = w_NxIxO.shape
  g = group or i
  return np.abs(np.asarray(w_NxIxO)).reshape(n, i // g, g, o).max(2)  # [N, I/g, O]


@pytest.mark.parametrize('scheme', ['int8', 'int4', 'int3'])
@pytest.mark.parametrize('group', [0, 32])
def test_integer_round_trip_within_half_a_step(scheme, group):
  w = _kernel()
  q = rtn.quantize(w, scheme, group)
  scale = _group_absmax(w, group) / QMAX[scheme]
  np.testing.assert_allclose(np.asarray(q.scale), scale, rtol=1e-6)
  err = np.abs(np.asarray(w) - np.asarray(rtn.fake_quant(w, AXES, scheme, group)))
  step = np.repeat(scale, 128 // scale.shape[1], axis=1)
  # Half a step, up to float32 rounding of w / scale (|w / scale| <= 128: ulp 2^-16).
  assert (err <= step * (0.5 + 2.0**-15)).all()
  q_values = np.asarray(q.qvalue, np.int8)
  assert q_values.min() >= -QMAX[scheme] - 0.5 and q_values.max() <= QMAX[scheme] - 0.5
  print(f'{scheme} group {group}: max |w - deq| {err.max():.2e} (w std 0.02)')


@pytest.mark.parametrize('scheme', ['int8', 'int4', 'int3'])
def test_textbook_scale_rule_is_absmax_over_qmax(scheme):
  """rule='textbook' (qwix with its calibration factor): scale absmax / qmax, values in
  [-qmax, qmax], and the packed file decodes to the same values as int4 / int3 nibbles."""
  w = _kernel()
  q = rtn.quantize(w, scheme, 32, rule='textbook')
  qmax = QMAX[scheme] - 0.5
  np.testing.assert_allclose(np.asarray(q.scale), _group_absmax(w, 32) / qmax, rtol=1e-6)
  ref = np.clip(np.round(np.asarray(w) / np.repeat(np.asarray(q.scale), 32, 1)), -qmax, qmax)
  np.testing.assert_array_equal(np.asarray(q.qvalue, np.int8), ref)
  decoded = rtn.decode(rtn.encode(q, scheme), scheme, w.shape)
  np.testing.assert_array_equal(np.asarray(decoded, np.int8), ref)


def test_fp8_round_trip_relative_error():
  w = _kernel()
  q = rtn.quantize(w, 'fp8', 0)
  np.testing.assert_allclose(np.asarray(q.scale), _group_absmax(w, 0) / 448, rtol=1e-6)
  deq = np.asarray(rtn.fake_quant(w, AXES, 'fp8', 0))
  normal = np.abs(np.asarray(w)) / np.asarray(q.scale) >= 2.0**-6  # e4m3's smallest normal.
  rel = np.abs(deq - np.asarray(w))[normal] / np.abs(np.asarray(w))[normal]
  assert normal.mean() > 0.99 and rel.max() <= 2.0**-4
  print(f'fp8: max relative error {rel.max():.4f}, max |w - deq| {np.abs(deq - w).max():.2e}')


def test_groups_beat_channels_on_outlier_rows():
  w = np.array(_kernel(1, (1, 256, 64)))
  w[0, [5, 11, 20]] *= 30  # three fan-in rows (input features) with outliers, in one group.
  err = {
    g: float(
      np.sqrt(np.mean((w - np.asarray(rtn.fake_quant(jnp.asarray(w), AXES, 'int4', g))) ** 2))
    )
    for g in (0, 32)
  }
  assert err[32] < 0.5 * err[0], err
  print(f'int4 RMS error with outlier rows: per channel {err[0]:.2e}, group 32 {err[32]:.2e}')


def _source(tiny_config, tmp_path, overrides, name='src'):
  """A params-only workdir of a d_model 64 model with random params: (model config, params, path)."""
  base = {'model.d_model': 64, 'model.d_ff': 128, 'model.scan_unroll': 1}  # rolled: compiles fast.
  config = schema.Config.make(tiny_config({**base, **overrides}))
  rng = np.random.default_rng(0)  # random values of the params' shapes (no init to compile).
  params = jax.tree.map(
    lambda s: jnp.asarray(0.02 * rng.standard_normal(s.shape), jnp.float32),
    models.param_shapes(config.model),
  )
  src = str(tmp_path / name)
  checkpoint.write_params(src, json.dumps(config.to_dict(), indent=2), params, 0, {})
  return config.model, params, src


def _loss_and_logits(cfg, params, tokens_BxL):
  logits_BxLxV = models.logits(cfg, params, tokens_BxL[:, :-1])
  logp = jax.nn.log_softmax(logits_BxLxV)
  return -jnp.take_along_axis(logp, tokens_BxL[:, 1:, None], -1).mean(), logits_BxLxV


def _write(out: str, src: str, scheme: str, group: int) -> dict:
  """quantized.write of a workdir's latest params beside its own config.json."""
  cfg, params = init_from.load_params(src)
  config = json.load(open(os.path.join(src, 'config.json')))
  return quantized.write(out, config, cfg, params, scheme, group, os.path.abspath(src))


@pytest.mark.parametrize('style', list(STYLES))
def test_quantized_workdir_is_the_ptq_model_and_qat_is_straight_through(
  tiny_config, tmp_path, style
):
  """load_params(quantized workdir) = dequantize_tree(source); weight_quant on the float params
  gives the dequantized model's logits (bit for bit) and, by the STE, its gradients (int4 QAT)."""
  overrides, scheme, group = STYLES[style]
  cfg, params, src = _source(tiny_config, tmp_path, overrides)
  out = str(tmp_path / 'q')
  sizes = _write(out, src, scheme, group)
  saved = json.load(open(os.path.join(out, 'config.json')))
  source = os.path.abspath(src)
  assert saved['quantized'] == {'scheme': scheme, 'group': group, 'source': source, 'method': 'rtn'}
  assert saved['model'] == json.load(open(os.path.join(src, 'config.json')))['model']
  assert sizes['bytes_quantized'] == os.path.getsize(os.path.join(out, init_from.QUANTIZED_FILE))
  ref = quantize.dequantize_tree(cfg, quantize.quantize_tree(cfg, params, scheme, group), scheme)
  got_cfg, got = init_from.load_params(out, cfg)
  assert got_cfg == cfg and quantized.read(out)[0] == cfg
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(got), ref)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('x',))  # onto given shardings (8 CPUs).
  wi_over_x = lambda path: P(None, None, 'x') if path[-1].key == 'wi' else P()
  shardings = jax.tree_util.tree_map_with_path(
    lambda path, _: NamedSharding(mesh, wi_over_x(path)), models.param_shapes(cfg)
  )
  sharded = init_from.load_params(out, cfg, shardings)[1]
  assert sharded['layers']['mlp']['wi'].sharding == shardings['layers']['mlp']['wi']
  np.testing.assert_array_equal(sharded['layers']['mlp']['wi'], ref['layers']['mlp']['wi'])
  assert not np.array_equal(ref['layers']['mlp']['wi'], np.asarray(params['layers']['mlp']['wi']))
  np.testing.assert_array_equal(ref['embed'], np.asarray(params['embed']))  # stays float.
  tokens = jax.random.randint(jax.random.key(1), (2, 17), 0, cfg.vocab_size)
  flag = cfg.replace(weight_quant=scheme, weight_group=group)
  if scheme != 'int4':  # the forward only (the STE does not depend on the model's style).
    np.testing.assert_array_equal(
      models.logits(flag, params, tokens), models.logits(cfg, got, tokens)
    )
    return
  grad = jax.jit(jax.value_and_grad(_loss_and_logits, 1, has_aux=True), static_argnums=0)
  (_, logits_qat), g_qat = grad(flag, params, tokens)
  (_, logits_deq), g_deq = grad(cfg, got, tokens)
  np.testing.assert_array_equal(logits_qat, logits_deq)
  assert float(jnp.abs(g_qat['layers']['mlp']['wi']).max()) > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9), g_qat, g_deq)


def test_packed_bytes_per_scheme(tiny_config, tmp_path):
  cfg, params, src = _source(tiny_config, tmp_path, {})
  comp = jax.tree.leaves(models.compressible(cfg))
  leaves = jax.tree.leaves(params)
  n_comp = sum(x.size for x, c in zip(leaves, comp) if c)
  rest = sum(4 * x.size for x, c in zip(leaves, comp) if not c)
  for scheme, group, bits in (('int8', 0, 8), ('int4', 0, 4), ('int4', 32, 4), ('fp8', 0, 8)):
    out = str(tmp_path / f'{scheme}_{group}')
    sizes = _write(out, src, scheme, group)
    packed = safetensors.numpy.load_file(os.path.join(out, init_from.QUANTIZED_FILE))
    scales = sum(v.nbytes for k, v in packed.items() if k.endswith(':scale'))
    values = sum(v.nbytes for k, v in packed.items() if k.endswith(':q'))
    assert values == n_comp * bits // 8
    header = sizes['bytes_quantized'] - values - scales - rest
    assert 0 < header < 8192
    assert sizes['bytes_float32'] == 4 * n_comp + rest
    print(
      f'{scheme} group {group}: {sizes["bytes_quantized"]:,} bytes on disk vs '
      f'{sizes["bytes_float32"]:,} float32; kernels {values:,} + scales {scales:,} vs '
      f'{4 * n_comp:,} float32 ({(values + scales) / (4 * n_comp):.3f})'
    )


def test_bad_inputs_name_the_field(tiny_config, tmp_path):
  derive = lambda kw: validation.derive(tiny_config(kw), jax.device_count())
  with pytest.raises(ValueError, match=r'config.model.weight_quant: .int3. is not one of'):
    derive({'model.weight_quant': 'int3'})
  with pytest.raises(
    ValueError, match=r'config.model.weight_group=48 does not divide the fan-in 32'
  ):
    derive({'model.weight_quant': 'int4', 'model.weight_group': 48})  # d_model 32.
  with pytest.raises(ValueError, match=r'config.model.weight_group: .* needs model.weight_quant'):
    derive({'model.weight_group': 32})
  with pytest.raises(ValueError, match=r'config.model.weight_group must be >= 0'):
    derive({'model.weight_quant': 'int8', 'model.weight_group': -1})
  with pytest.raises(ValueError, match=r"weight_quant='int2' is not one of"):
    rtn.fake_quant(_kernel(), AXES, 'int2', 0)
  with pytest.raises(ValueError, match=r'weight_group=48 must be 0 \(per channel\) or divide'):
    rtn.fake_quant(_kernel(), AXES, 'int4', 48)
  cfg = models.ModelConfig(d_model=32, n_layers=1, n_heads=4, d_ff=64)
  with pytest.raises(ValueError, match=r'^weight_group=24 does not divide the fan-in 32'):
    quantize.check(cfg, 'int4', 24)
  with pytest.raises(ValueError, match=r'no quantized.safetensors'):
    quantized.read(str(tmp_path))
