"""Calibrated weight quantization (models/calibrated_quant.py, train.tools.compress --method): GPTQ
against an independent numpy GPTQ and qwix's own core, the captured inputs against the model's
probes, GPTQ / AWQ against RTN on the calibration activations, the CLI and its bad inputs."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models import calibrated_quant, pruning, quantize, rtn, transformer

CFG = models.ModelConfig(d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=16, scan_unroll=1)


def _numpy_gptq(w_OxI, h_IxI, bits, group, block, damp=0.01):
  """Frantar et al.'s GPTQ as the authors' reference code (IST-DASLab gptq.py) runs it: columns in
  order, each rounded and its error spread over the later columns through the upper Cholesky
  factor of H^-1, lazily per block; a group's scale from W as it stood at its block's start.
  Symmetric scale absmax / (qmax + 0.5) (qwix's rule). Returns (values [O, I], scales [O, I/g])."""
  w, h = w_OxI.astype(np.float64), h_IxI.astype(np.float64).copy()
  o, n = w.shape
  g, lo, hi = group or n, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
  h[np.diag_indices(n)] += damp * np.mean(np.diag(h))
  u = np.linalg.cholesky(np.linalg.inv(h)).T
  q, scale = np.zeros((o, n)), np.zeros((o, n // g))
  for b0 in range(0, n, block):
    b1, start = min(b0 + block, n), w.copy()
    err = np.zeros((o, b1 - b0))
    for j in range(b0, b1):
      if j % g == 0:
        scale[:, j // g] = np.abs(start[:, j : j + g]).max(1) / (hi + 0.5)
      s = scale[:, j // g]
      q[:, j] = np.clip(np.round(w[:, j] / s), lo, hi)
      err[:, j - b0] = (w[:, j] - q[:, j] * s) / u[j, j]
      w[:, j:b1] -= np.outer(err[:, j - b0], u[j, j:b1])
    w[:, b1:] -= err @ u[b0:b1, b1:]
  return q, scale


def _layer(seed=0, i=48, o=8, t=512):
  """A kernel W [O, I] and the Hessian X^T X of correlated inputs with a few outlier channels."""
  rng = np.random.default_rng(seed)
  mix = np.linalg.qr(rng.standard_normal((i, i)))[0] * np.linspace(0.2, 2.0, i)
  x_TxI = rng.standard_normal((t, i)) @ mix
  x_TxI[:, [3, 17]] *= 8.0
  return rng.standard_normal((o, i)).astype(np.float32), (x_TxI.T @ x_TxI).astype(np.float32)


@pytest.mark.parametrize('scheme, group', [('int4', 0), ('int3', 16)])
def test_gptq_equals_a_numpy_gptq(scheme, group):
  """Two blocks of 32 columns (48 in all): the lazy updates across blocks and the group scales."""
  w_OxI, h_IxI = _layer()
  ref_q, ref_scale = _numpy_gptq(w_OxI, h_IxI, rtn.INT_BITS[scheme], group, block=32)
  got = calibrated_quant.gptq(jnp.asarray(w_OxI.T[None]), jnp.asarray(h_IxI[None]), scheme, group,
                              block=32)  # fmt: skip
  np.testing.assert_allclose(np.asarray(got.scale[0]).T, ref_scale, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(got.qvalue[0], np.int8).T, ref_q.astype(np.int8))


@pytest.mark.slow  # (~50 s: qwix's core runs eagerly; the numpy GPTQ above covers it by default)
def test_gptq_equals_qwix_gptq_core():
  from qwix._src.core import qarray
  from qwix.contrib import gptq_core

  w_OxI, h_IxI = _layer()
  for group in (0, 16):
    tiled = {1: group} if group else {}
    how = qarray.HowToQuantize(qtype=jnp.int4, channelwise_axes=[0], tiled_axes=tiled)
    ref, _ = gptq_core.quantize_weight(jnp.asarray(w_OxI), jnp.asarray(h_IxI), how, blocksize=32)
    got = calibrated_quant.gptq(jnp.asarray(w_OxI.T[None]), jnp.asarray(h_IxI[None]), 'int4', group,
                                block=32)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(got.qvalue[0]).T, np.asarray(ref.qvalue))
    np.testing.assert_array_equal(np.asarray(got.scale[0]).T, np.asarray(ref.scale))


@pytest.fixture(scope='module')
def calibrated():
  """A random model (scanned layers), two token batches and their calibration statistics."""
  rng = np.random.default_rng(0)
  params = jax.tree.map(
    lambda s: jnp.asarray(0.05 * rng.standard_normal(s.shape), jnp.float32),
    models.param_shapes(CFG),
  )
  batches = [rng.integers(0, CFG.vocab_size, (4, 17)) for _ in range(2)]
  return params, batches, calibrated_quant.calibration_stats(CFG, params, batches)


def test_calibration_statistics_are_each_kernels_input(calibrated):
  """Hessian and mean |x| of every kernel of every layer from the model's own probes: the norms'
  outputs (flax capture_intermediates) feed query/key/value and wi, the sown head outputs feed
  out, the MLP hidden layer feeds wo."""
  params, batches, stats = calibrated
  ucfg, uparams = pruning.unstack(CFG, params)
  is_norm = lambda m, method: isinstance(m, transformer.Norm)
  probes = jax.jit(lambda p, t: transformer.Transformer(ucfg).apply(
    {'params': p}, t, mutable=['intermediates', 'importance'], capture_intermediates=is_norm
  )[1])  # fmt: skip
  want = {}
  for tokens in batches:
    state = probes(uparams, jnp.asarray(tokens)[:, :-1])
    for i in range(CFG.n_layers):
      inter, probe = state['intermediates'][f'layer_{i}'], state['importance'][f'layer_{i}']
      norm = {k: inter[k]['__call__'][0] for k in ('attn_norm', 'mlp_norm')}
      inputs = {'attn/query': norm['attn_norm'], 'attn/key': norm['attn_norm'],
                'attn/value': norm['attn_norm'], 'attn/out': probe['attn']['heads'][0],
                'mlp/wi': norm['mlp_norm'], 'mlp/wo': probe['mlp']['hidden'][0]}  # fmt: skip
      for k, x in inputs.items():
        x = np.asarray(x, np.float64).reshape(-1, np.prod(x.shape[2:]))
        h, a = want.get((k, i), (0.0, 0.0))
        want[k, i] = (h + x.T @ x / len(batches), a + np.abs(x).mean(0) / len(batches))
  assert sorted(stats) == sorted({f'layers/{k}' for k, _ in want})
  for (k, i), (h, a) in want.items():
    np.testing.assert_allclose(stats[f'layers/{k}']['hessian'][i], h, rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(stats[f'layers/{k}']['act_scale'][i], a, rtol=2e-5, atol=1e-7)


def _output_errors(params, stats, scheme, group, method):
  """{kernel: sum over layers of ||X W - X Q||^2 / tokens} = tr(dW^T H dW) on the calibration
  activations, of the packed-and-loaded model."""
  kernels = None
  if method != 'rtn':
    kernels = calibrated_quant.quantize_kernels(CFG, params, scheme, group, method, stats)
  packed = quantize.quantize_tree(CFG, params, scheme, group, kernels=kernels)
  deq = quantize.dequantize_tree(CFG, packed, scheme)
  out = {}
  for (name, x, axes), (_, y, _) in zip(quantize.leaves(CFG, params), quantize.leaves(CFG, deq)):
    if name in stats:
      d = (np.asarray(x, np.float64) - np.asarray(y, np.float64)).reshape(rtn.dims(axes, x.shape))
      out[name] = float(np.einsum('nio,nij,njo->', d, np.asarray(stats[name]['hessian']), d))
  return out


@pytest.mark.parametrize(
  'scheme, group',
  [('int4', 0), pytest.param('int3', 16, marks=pytest.mark.slow)],  # (4 s; int4 by default)
)
def test_gptq_and_awq_reconstruct_the_outputs_better_than_rtn(calibrated, scheme, group):
  """GPTQ's layer-wise output error is below RTN's on every kernel; AWQ's in total (its search
  scores mean |x|-weighted weight errors, a proxy of the output error; ratio 0 is RTN itself)."""
  params, _, stats = calibrated
  err = {m: _output_errors(params, stats, scheme, group, m) for m in calibrated_quant.METHODS}
  for k in err['rtn']:
    assert err['gptq'][k] < 0.7 * err['rtn'][k], (k, err['gptq'][k], err['rtn'][k])
  assert sum(err['awq'].values()) < sum(err['rtn'].values()), err
  print({m: round(sum(e.values()), 4) for m, e in err.items()})


def test_awq_packs_qwix_awq_and_loads_as_its_inference_provider(calibrated):
  """The packed AWQ kernel is awq_core.quantize_weight's values and scales, and loads as
  dequantize / s (qwix's AwqInferenceProvider)."""
  from qwix._src.core import qarray
  from qwix.contrib import awq_core

  params, _, stats = calibrated
  kernels = calibrated_quant.quantize_kernels(CFG, params, 'int4', 16, 'awq', stats)
  packed = quantize.quantize_tree(CFG, params, 'int4', 16, kernels=kernels)
  deq = quantize.dequantize_tree(CFG, packed, 'int4')['layers']['mlp']['wo']
  w, act = params['layers']['mlp']['wo'], stats['layers/mlp/wo']['act_scale']
  how = qarray.HowToQuantize(qtype=jnp.int4, channelwise_axes=[0], tiled_axes={1: 16})
  for i in range(CFG.n_layers):
    q, s_1xI = jax.jit(lambda w, a: awq_core.quantize_weight(w, a, how))(w[i].T, act[i])
    np.testing.assert_allclose(packed['layers/mlp/wo:awq_scale'][i], s_1xI[0], rtol=1e-6)
    np.testing.assert_allclose(deq[i], (qarray.dequantize(q) / s_1xI).T, rtol=1e-6)


def _src(tmp_path, model):
  src = tmp_path / 'src'
  src.mkdir(exist_ok=True)
  (src / 'config.json').write_text(json.dumps({'model': model}))
  return str(src)


@pytest.mark.parametrize(
  'what, needle',
  [
    ({'method': 'gptq', 'sparsity': 0.5}, r'--method=gptq applies to --quantize'),
    (
      {'method': 'gptq', 'quantize': 'fp8'},
      r"--method=gptq quantizes to \('int8', 'int4', 'int3'\)",
    ),
    ({'method': 'awq', 'quantize': 'int4', 'calib_batches': 0}, 'awq needs calibration data'),
    ({'method': 'gptq', 'quantize': 'int3', 'group': 24}, 'weight_group=24 does not divide'),
  ],
)
def test_bad_requests_are_one_line_before_loading(tmp_path, what, needle):
  from train.tools import compress

  model = {'d_model': 32, 'n_layers': 2, 'n_heads': 4, 'd_ff': 64, 'max_len': 16}
  full = {'prune': '', 'sparsity': 0.0, 'pattern': 'unstructured', 'quantize': '', 'group': 0,
          'calib_batches': 8, **what}  # fmt: skip
  with pytest.raises(ValueError, match=needle):
    compress.check(_src(tmp_path, model), str(tmp_path / 'out'), full)


def test_a_kernel_without_a_captured_input_is_refused_before_loading(tmp_path, monkeypatch):
  """A compressible kernel that no dense layer sows as [..., fan-in] (here: the MLP output
  projection's capture removed) is named in one line by the shape-only trace."""
  sown = calibrated_quant._sown
  monkeypatch.setattr(
    calibrated_quant, '_sown', lambda *a: {k: v for k, v in sown(*a).items() if 'wo' not in k}
  )
  with pytest.raises(
    ValueError, match=r'^--method=gptq: the kernel layer_0/mlp/wo .* --method=rtn$'
  ):
    calibrated_quant.check(CFG, 'gptq', 'int4', 8)


def test_compress_cli_gptq_writes_a_workdir_every_loader_reads(tiny_config, tmp_path, capsys):
  """train.tools.compress --quantize=int4 --method=gptq on a workdir (random params: no training to
  wait for): OUT's params are the GPTQ packing of the source on its own calibration batches, the
  summary names the method, and a bad request is one line."""
  from configs import schema
  from train import checkpoint, init_from
  from train.tools import compress

  config = schema.Config.make(tiny_config({'model.scan_unroll': 1}))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: 0.05 * rng.standard_normal(s.shape, np.float32),
                        models.param_shapes(config.model))  # fmt: skip
  src, out = str(tmp_path / 'src'), str(tmp_path / 'gptq')
  checkpoint.write_params(src, json.dumps(config.to_dict()), params, 0, {})
  args = [f'--workdir={src}', f'--out={out}', '--quantize=int4', '--group=16']
  compress.main(args + ['--method=gptq', '--calib_batches=2'])
  lines = capsys.readouterr().out.strip().splitlines()
  record = json.loads(lines[-1])
  assert 'quantized to int4 (group 16) by GPTQ' in lines[0]
  assert record['method'] == 'gptq' and np.isfinite(record['loss_after'])
  assert json.load(open(os.path.join(out, 'config.json')))['quantized']['method'] == 'gptq'
  cfg, src_params = init_from.load_params(src)
  r = compress._run(compress.run_config(src, None), 0)
  stats = calibrated_quant.calibration_stats(
    cfg, src_params, [r.train_ds.batch(s) for s in range(2)]
  )
  kernels = calibrated_quant.quantize_kernels(cfg, src_params, 'int4', 16, 'gptq', stats)
  packed = quantize.quantize_tree(cfg, src_params, 'int4', 16, kernels=kernels)
  want = quantize.dequantize_tree(cfg, packed, 'int4')
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(init_from.load_params(out)[1]), want)
  with pytest.raises(SystemExit) as bad:
    compress.main([args[0], f'--out={tmp_path / "x"}', '--quantize=fp8', '--method=awq'])
  assert bad.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [
    "error: --method=awq quantizes to ('int8', 'int4', 'int3'), not 'fp8'"
  ]


@pytest.mark.slow  # (train.tools.compress --method=gptq by default: test_compress_cli_gptq_writes_...)
def test_gptq_loses_less_than_rtn_on_a_trained_model(tiny_config, tmp_path):
  """A tiny model trained 200 steps, int4 per channel through train.tools.compress: GPTQ's eval-loss
  gap is below RTN's (on the run's own eval set)."""
  from train import loop, validation
  from train.tools import compress

  src = str(tmp_path / 'src')
  steps = {'train.num_steps': 200, 'train.eval_every': 200, 'train.checkpoint_every': 200,
           'optimizer.lr': 3e-3, 'optimizer.warmup_steps': 20, 'train.eval_batches': 4}  # fmt: skip
  loop.run(validation.derive(tiny_config(steps)), src)
  what = {'prune': '', 'sparsity': 0.0, 'pattern': 'unstructured', 'scope': 'global',
          'quantize': 'int4', 'group': 0, 'calib_batches': 8, 'eval_batches': 0}  # fmt: skip
  gap = {}
  for method in ('rtn', 'gptq'):
    rec = compress.compress(src, str(tmp_path / method), {**what, 'method': method})
    gap[method] = rec['loss_after'] - rec['loss_before']
  print(f'int4 per channel, eval-loss gap: RTN {gap["rtn"]:+.4f}, GPTQ {gap["gptq"]:+.4f}')
  assert gap['gptq'] < gap['rtn'], gap
