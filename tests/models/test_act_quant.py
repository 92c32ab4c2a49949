"""Activation quantization (models/act_quant.py, train.tools.compress --activations): the fake-quant
against an independent numpy int8 / fp8 quantizer (per tensor, per token, static), SmoothQuant's
factors against the authors' formula, the smoothed float model against the original, the W8A8
workdir every loader reads, QAT with activations, the calibrated params frozen by the parameter
table through a fine-tune, and the one-line errors."""

import json
import os

import flax
import flax.linen as nn
import helpers
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import models
from models import act_quant, calibrated_quant, parametrization, pruning, quantize, transformer
from models.config import LORA_TARGETS

CFG = models.ModelConfig(d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=16, scan_unroll=1)
BOUND = {'int8': 127.5, 'fp8': 448.0}  # qwix's symmetric bound: int8 qmax + 0.5, fp8's max.


def _numpy_fake_quant(x, scheme, n_in, scale, amax=None):
  """(x quantized and dequantized in numpy float32, the scale): absmax per token over the last
  n_in dims, over all of x, or `amax`; int8 rounded half to even into [-128, 127], fp8 cast by
  ml_dtypes; scale absmax / 127.5 (int8), absmax / 448 (fp8)."""
  x = np.asarray(x, np.float32)
  if scale == 'static':
    absmax = np.float32(amax)
  elif scale == 'tensor':
    absmax = np.abs(x).max()
  else:
    absmax = np.abs(x).max(axis=tuple(range(x.ndim - n_in, x.ndim)), keepdims=True)
  s = (absmax / np.float32(BOUND[scheme])).astype(np.float32)
  if scheme == 'int8':
    q = np.clip(np.round(x / s), -128, 127)
  else:
    q = np.clip(x / s, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
  return (q * s).astype(np.float32), s


@pytest.mark.parametrize('scheme', ['int8', 'fp8'])
@pytest.mark.parametrize('scale', ['static', 'tensor', 'token'])
def test_fake_quant_equals_a_numpy_quantizer(scheme, scale):
  """[B, L, H, Dh] inputs (the attention output's: two fan-in dims) with outlier channels; the
  static absmax sits below the true max, so the largest entries clip; the gradient is the STE's."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 5, 3, 8)).astype(np.float32)
  x[..., 2] *= 30.0
  amax = np.float32(0.7 * np.abs(x).max()) if scale == 'static' else None
  got = np.asarray(act_quant.fake_quant(jnp.asarray(x), scheme, 2, scale, amax))
  want, step = _numpy_fake_quant(x, scheme, 2, scale, amax)
  # qwix's int8 rule puts a dynamic absmax entry exactly on the tie x / s = ±127.5, which a 1-ulp
  # difference in x / s rounds either way: those entries may differ by one step, no others.
  tie = np.isclose(np.abs(x / step), 127.5, rtol=1e-6, atol=0) & (scheme == 'int8')
  np.testing.assert_allclose(got[~tie], want[~tie], rtol=1e-6, atol=0)
  assert np.all(np.abs(got - want)[tie] <= np.broadcast_to(step, x.shape)[tie] * 1.0001)
  assert not np.array_equal(want, x)
  if scale == 'static':
    top = 128 / 127.5 if scheme == 'int8' else 1.0  # int8's -128 bucket sits half a step out.
    assert np.abs(want).max() <= amax * top * 1.0001 < np.abs(x).max()  # clipped.
  w = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  g = jax.grad(lambda v: (act_quant.fake_quant(v, scheme, 2, scale, amax) * w).sum())(x)
  np.testing.assert_array_equal(g, w)


@pytest.fixture(scope='module')
def outliers():
  """A random model whose norm scales have two large channels (LLM-like activation outliers into
  query / key / value / wi), two calibration batches and their statistics."""
  rng = np.random.default_rng(0)
  params = jax.tree.map(
    lambda s: jnp.asarray(0.05 * rng.standard_normal(s.shape), jnp.float32),
    models.param_shapes(CFG),
  )
  for norm in ('attn_norm', 'mlp_norm'):
    scale = np.ones((CFG.n_layers, CFG.d_model), np.float32)
    scale[:, [3, 17]] = 25.0
    params['layers'][norm]['scale'] = jnp.asarray(scale)
  batches = [rng.integers(0, CFG.vocab_size, (4, 17)) for _ in range(2)]
  return params, batches, calibrated_quant.calibration_stats(CFG, params, batches)


def test_calibrated_absmax_is_each_kernels_input_max(outliers):
  """The static scales' statistic: max |x| per fan-in entry over both batches, against the norm's
  output read by flax's capture_intermediates (query's input)."""
  params, batches, stats = outliers
  ucfg, uparams = pruning.unstack(CFG, params)
  is_norm = lambda m, method: isinstance(m, transformer.Norm)
  run = jax.jit(lambda p, t: transformer.Transformer(ucfg).apply(
    {'params': p}, t, capture_intermediates=is_norm, mutable=['intermediates'])[1])  # fmt: skip
  for i in range(CFG.n_layers):
    xs = [run(uparams, jnp.asarray(t)[:, :-1])['intermediates'][f'layer_{i}'] for t in batches]
    x = np.concatenate([np.asarray(s['attn_norm']['__call__'][0]).reshape(-1, 32) for s in xs])
    np.testing.assert_allclose(stats['layers/attn/query']['absmax'][i], np.abs(x).max(0), 1e-6)


def test_smoothquant_keeps_the_float_function_and_flattens_the_outliers(outliers):
  """s = max|x|^α / max|W|^(1-α) per fan-in entry (the authors' smooth.py); (x / s)·(s W) gives
  the original logits; the inputs' max / median channel absmax falls, where there are outliers."""
  params, batches, stats = outliers
  act = {'quant': 'int8', 'scale': 'static', 'smooth': 0.5}
  calib = calibrated_quant.act_calibration(CFG, params, act, stats)
  w = np.abs(np.asarray(params['layers']['attn']['query']).reshape(2, 32, -1)).max(2)
  a = np.asarray(stats['layers/attn/query']['absmax'])
  np.testing.assert_allclose(calib['layers/attn/query']['smooth'], a**0.5 / w**0.5, rtol=1e-5)
  smoothed = calibrated_quant.with_act_params(CFG, params, act, calib)
  tokens = jnp.asarray(batches[0])[:, :-1]
  want = models.logits(CFG, params, tokens)
  got = models.logits(CFG.replace(act_smooth=True), smoothed, tokens)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  spread = lambda v: float(np.mean(v.max(1) / np.median(v, 1)))
  for name in ('layers/attn/query', 'layers/mlp/wi'):
    a = np.asarray(stats[name]['absmax'])
    before, after = spread(a), spread(a / np.asarray(calib[name]['smooth']))
    print(f'{name}: max / median channel absmax {before:.1f} -> {after:.1f}')
    assert after < before / 3 and before > 10, (before, after)


class _OutInputs(nn.Module):
  """The attention output's inputs (two fan-in axes) as models/transformer.py `_dense` takes them."""

  cfg: models.ModelConfig

  @nn.compact
  def __call__(self, x, kernel):
    return act_quant.dense_inputs(self, 'out', x, kernel, ('heads', 'v_head_dim', 'embed'))


def test_dense_inputs_read_the_calibrated_params_as_numpy_does():
  """The static absmax [1] and SmoothQuant's s [1, H, Dh] (leading 'act_calib' axis): the layer's
  input is x / s quantized at the absmax by the numpy quantizer, its kernel s·W."""
  cfg = CFG.replace(act_quant='int8', act_scale='static', act_smooth=True)
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 5, 4, 8)).astype(np.float32)
  x[..., 2] *= 30.0
  w = rng.standard_normal((4, 8, 32)).astype(np.float32)
  s = rng.uniform(0.5, 4.0, (4, 8)).astype(np.float32)
  amax = np.float32(0.7 * np.abs(x / s).max())
  boxed = _OutInputs(cfg).init(jax.random.key(0), x, w)['params']
  assert nn.get_partition_spec(boxed) == {
    'out_act_amax': P('act_calib'), 'out_act_smooth': P('act_calib', 'heads', 'v_head_dim')}  # fmt: skip
  assert np.isnan(nn.unbox(boxed)['out_act_amax']).all()  # uncalibrated: NaN, never quiet.
  params = {'out_act_amax': amax[None], 'out_act_smooth': s[None]}
  got_x, got_w = _OutInputs(cfg).apply({'params': params}, x, w)
  want_x, _ = _numpy_fake_quant(x / s, 'int8', 2, 'static', amax)
  np.testing.assert_allclose(got_x, want_x, rtol=1e-6, atol=0)
  np.testing.assert_allclose(got_w, w * s[:, :, None], rtol=1e-6, atol=0)


def _flat(tree):
  return flax.traverse_util.flatten_dict(tree, sep='/')


def test_calibrated_params_are_frozen_by_the_table_through_a_fine_tune(outliers):
  """The static scales and SmoothQuant factors have the table's 'act_calib' role: not trainable,
  lr and wd scale 0 under every parametrization, replicated along the axis, not compressible, no
  LoRA target; the optimizer keeps no moments for them, and 3 AdamW steps (lr 1e-2, weight decay
  0.1) from the W8A8 model move every other param and leave them bitwise."""
  from configs import base
  from train import optimizer as optim
  from train import sharding

  params, batches, stats = outliers
  act = {'quant': 'int8', 'scale': 'static', 'smooth': 0.5}
  qcfg, qparams, _ = calibrated_quant.w8a8(CFG, params, 'int8', 0, act, stats)
  axes, shapes = _flat(models.logical_axes(qcfg)), _flat(models.param_shapes(qcfg))
  calib = {k for k in axes if k.endswith((act_quant.AMAX, act_quant.SMOOTH))}
  assert len(calib) == 12 and _flat(qparams)['layers/attn/out_act_smooth'].shape == (2, 1, 4, 8)
  assert dict(sharding.LOGICAL_RULES)['act_calib'] is None
  every = tuple(LORA_TARGETS.values())
  for k in calib:
    a = tuple(axes[k])
    assert a[:2] == ('layers', 'act_calib') and parametrization.role(a) == 'act_calib', (k, a)
    assert not parametrization.compressible(a)
    assert not parametrization.lora_target(qcfg.replace(lora_rank=4, lora_targets=every), a)
    assert nn.logical_to_mesh_axes(a[:2], sharding.LOGICAL_RULES) == P(None, None)
    for p in parametrization.PARAMETRIZATIONS:
      c = qcfg.replace(parametrization=p)
      assert parametrization.scales(c, a, shapes[k].shape) == parametrization.Scales(None, 1, 0, 0)
  assert {k for k, t in _flat(models.trainable(qcfg)).items() if not t} == calib
  opt = base.get_config().optimizer
  opt.update(lr=1e-2, weight_decay=0.1, warmup_steps=0)
  tx = optim.make_optimizer(opt, 3, qcfg)
  state = jax.jit(tx.init)(qparams)
  trained = sum(v.size for k, v in _flat(qparams).items() if k not in calib)
  assert sum(x.size for x in jax.tree.leaves(state) if x.ndim) == 2 * trained  # Adam's 2 moments.

  def loss(p, tokens_BxL):
    logits = transformer.Transformer(qcfg).apply({'params': p}, tokens_BxL[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BxL[:, 1:]).mean()

  @jax.jit
  def step(p, s, tokens_BxL):
    value, grads = jax.value_and_grad(loss)(p, tokens_BxL)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, value

  p = qparams
  for tokens in (batches[0], batches[1], batches[0]):
    p, state, value = step(p, state, jnp.asarray(tokens))
    assert np.isfinite(value)
  before, after = _flat(jax.device_get(qparams)), _flat(jax.device_get(p))
  for k in before:
    if k in calib:
      np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    else:
      assert np.any(after[k] != before[k]), k


def _src(tiny_config, tmp_path, overrides=None):
  """A params-only workdir with random params (no training to wait for): (config, path)."""
  from configs import schema
  from train import checkpoint

  config = schema.Config.make(tiny_config({'model.scan_unroll': 1, **(overrides or {})}))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: 0.05 * rng.standard_normal(s.shape, np.float32),
                        models.param_shapes(config.model))  # fmt: skip
  src = str(tmp_path / 'src')
  checkpoint.write_params(src, json.dumps(config.to_dict()), params, 0, {})
  return config, src


def test_compress_cli_w8a8_writes_a_workdir_every_loader_reads(tiny_config, tmp_path, capsys):
  """train.tools.compress --quantize=int8 --activations=int8 --smooth=0.5: OUT's config has the
  act_* fields, its params are the in-process W8A8 model's (frozen scales included); a bad request
  and an HF export of it are one line."""
  from train import init_from
  from train.tools import compress

  _, src = _src(tiny_config, tmp_path)
  out = str(tmp_path / 'w8a8')
  args = [f'--workdir={src}', f'--out={out}', '--quantize=int8', '--activations=int8']
  compress.main(args + ['--smooth=0.5', '--calib_batches=2'])
  lines = capsys.readouterr().out.strip().splitlines()
  record = json.loads(lines[-1])
  assert 'activations int8 (static per tensor, SmoothQuant α 0.5)' in lines[0], lines[0]
  saved = json.load(open(os.path.join(out, 'config.json')))
  assert {k: saved['model'][k] for k in ('act_quant', 'act_scale', 'act_smooth')} == {
    'act_quant': 'int8', 'act_scale': 'static', 'act_smooth': True}  # fmt: skip
  assert saved['quantized']['activations'] == 'int8' and saved['quantized']['smooth'] == 0.5
  cfg, params = init_from.load_params(src)
  r = compress._run(compress.run_config(src, None), 0)
  stats = calibrated_quant.calibration_stats(cfg, params, [r.train_ds.batch(s) for s in range(2)])
  act = compress.activations(record)
  qcfg, qparams, kernels = calibrated_quant.w8a8(cfg, params, 'int8', 0, act, stats)
  want = quantize.dequantize_tree(qcfg, quantize.quantize_tree(qcfg, qparams, 'int8', 0,
                                                               kernels=kernels), 'int8')  # fmt: skip
  got_cfg, got = init_from.load_params(out)
  assert got_cfg == qcfg and got['layers']['attn']['query_act_amax'].shape == (2, 1)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(got), want)
  assert np.isfinite(record['loss_after']) and record['loss_after'] != record['loss_before']
  with pytest.raises(SystemExit) as bad:
    compress.main([args[0], f'--out={tmp_path / "x"}', '--quantize=int8', '--act_scale=token'])
  assert bad.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [
    'error: --act_scale and --smooth apply to --activations (int8 or fp8)'
  ]
  from train.tools import (
    export,  # an HF export has no field for quantized inputs: refused, one line.
  )

  with pytest.raises(SystemExit) as bad:
    export.main([f'--workdir={out}', f'--out={tmp_path / "hf"}'])
  err = capsys.readouterr().err.strip().splitlines()
  assert bad.value.code == 2 and len(err) == 1 and 'W8A8' in err[0], err


@pytest.mark.parametrize(
  'what, needle',
  [
    ({'activations': 'int8'}, r'--activations=int8 quantizes .* give --quantize too'),
    ({'quantize': 'int8', 'activations': 'int4'}, r"--activations='int4' is not one of"),
    ({'quantize': 'int8', 'activations': 'fp8', 'act_scale': 'row'}, r"--act_scale='row' is not"),
    ({'quantize': 'int8', 'activations': 'int8', 'calib_batches': 0},
     r'^--act_scale=static needs calibration data: --calib_batches >= 1$'),
    ({'quantize': 'int8', 'activations': 'int8', 'act_scale': 'token', 'smooth': 0.5,
      'calib_batches': 0}, r'^--smooth needs calibration data'),
    ({'quantize': 'int8', 'activations': 'int8', 'smooth': 1.5}, r'--smooth=1.5: .* \(0, 1\]'),
    ({'quantize': 'int4', 'activations': 'int8', 'smooth': 0.5, 'method': 'gptq'},
     r'--smooth: SmoothQuant scales the weights before RTN, not --method=gptq'),
    ({'quantize': 'int8', 'smooth': 0.5}, r'apply to --activations'),
  ],
)  # fmt: skip
def test_bad_requests_are_one_line_before_loading(tmp_path, what, needle):
  """Checked from config.json alone (the source holds no params)."""
  from train.tools import compress

  src = tmp_path / 'src'
  src.mkdir()
  model = {'d_model': 32, 'n_layers': 2, 'n_heads': 4, 'd_ff': 64, 'max_len': 16}
  (src / 'config.json').write_text(json.dumps({'model': model}))
  full = {'prune': '', 'sparsity': 0.0, 'pattern': 'unstructured', 'quantize': '', 'group': 0,
          'calib_batches': 8, **what}  # fmt: skip
  with pytest.raises(ValueError, match=needle):
    compress.check(str(src), str(tmp_path / 'out'), full)


def test_config_checks_name_the_field(tiny_config):
  from train import validation

  derive = lambda kw: validation.derive(tiny_config(kw), jax.device_count())
  with pytest.raises(ValueError, match=r"config.model.act_quant: 'int4' is not one of"):
    derive({'model.act_quant': 'int4'})
  with pytest.raises(ValueError, match=r"config.model.act_scale='static': applies to activation"):
    derive({'model.act_scale': 'static'})
  with pytest.raises(ValueError, match=r'config.model.act_smooth: not with LoRA adapters'):
    derive({'model.act_smooth': True, 'model.lora_rank': 4})


def test_static_scales_need_a_w8a8_source(tiny_config, tmp_path):
  """model.act_scale='static' trains only from config.init_from holding calibrated scales (a
  W8A8 workdir, or a run of one): one line naming the field, before anything is built."""
  from train import loop, validation

  def workdir(name, model):
    (tmp_path / name).mkdir()
    (tmp_path / name / 'config.json').write_text(json.dumps({'model': model}))
    return str(tmp_path / name)

  static = {'model.act_quant': 'int8', 'model.act_scale': 'static'}
  w8 = workdir('w8', {'act_quant': 'int8', 'act_scale': 'static', 'act_smooth': True})
  float_src = workdir('float', {})
  for src in ('', float_src, 'hf:' + w8):
    with pytest.raises(ValueError) as bad:
      validation.derive(tiny_config({**static, 'init_from': src}), jax.device_count())
    msg = str(bad.value)
    assert msg.startswith(f"config.init_from={src!r}: model.act_scale='static' needs calibrated")
    assert '--activations=int8 --act_scale=static' in msg and '\n' not in msg, msg
  run = str(tmp_path / 'run')
  with pytest.raises(ValueError, match=r"^config.init_from='': model.act_scale='static'"):
    loop.run(validation.derive(tiny_config(static)), run)
  assert not os.path.exists(run)
  validation.derive(tiny_config({**static, 'init_from': w8}), jax.device_count())
  validation.derive(tiny_config({**static, 'model.act_scale': 'tensor'}), jax.device_count())


@pytest.mark.slow  # (~14 s: compress, a fine-tune and its compile)
def test_fine_tune_from_a_w8a8_workdir_keeps_its_calibrated_params(tiny_config, tmp_path):
  """QAT from a W8A8 workdir (static scales, SmoothQuant; int8 weights fake-quantized) with
  weight decay: 3 steps through the training loop move the weights, and its checkpoint holds the
  workdir's scales and factors bitwise."""
  from train import init_from, loop, validation
  from train.tools import compress

  _, src = _src(tiny_config, tmp_path)
  out = str(tmp_path / 'w8a8')
  compress.main([f'--workdir={src}', f'--out={out}', '--quantize=int8', '--activations=int8',
                 '--smooth=0.5', '--calib_batches=2'])  # fmt: skip
  model = {f'model.{k}': v for k, v in init_from.workdir_model_config(out).__dict__.items()
           if k.startswith('act_')}  # fmt: skip
  config = tiny_config({'model.scan_unroll': 1, **model, 'model.weight_quant': 'int8',
                        'init_from': out, 'optimizer.lr': 1e-2, 'optimizer.weight_decay': 0.1,
                        'optimizer.warmup_steps': 0, 'train.num_steps': 3,
                        'train.eval_every': 3, 'train.checkpoint_every': 3})  # fmt: skip
  result = loop.run(
    validation.derive(config), str(tmp_path / 'qat'), init_params_fn=init_from.params_fn(config)
  )
  assert np.isfinite(result['eval/loss'])
  before = _flat(jax.device_get(init_from.load_params(out)[1]))
  after = _flat(jax.device_get(init_from.load_params(str(tmp_path / 'qat'))[1]))
  calib = [k for k in before if k.endswith((act_quant.AMAX, act_quant.SMOOTH))]
  assert len(calib) == 12
  for k in before:
    if k in calib:
      np.testing.assert_array_equal(after[k], before[k], err_msg=k)
  assert np.any(after['layers/attn/query'] != before['layers/attn/query'])


@pytest.mark.slow  # (~40 s: training; the pipeline itself by default above)
def test_w8a8_and_qat_on_a_trained_model(tiny_config, tmp_path):
  """A tiny model trained 200 steps, through train.tools.compress: the int8 W8A8 gap (static per
  tensor and per token, with and without SmoothQuant) and fp8's are small; a QAT fine-tune with int8
  weights and inputs (dynamic per tensor, straight-through) trains from the float checkpoint."""
  from train import init_from, loop, validation
  from train.tools import compress

  src = str(tmp_path / 'src')
  steps = {'train.num_steps': 200, 'train.eval_every': 200, 'train.checkpoint_every': 200,
           'optimizer.lr': 3e-3, 'optimizer.warmup_steps': 20, 'train.eval_batches': 4}  # fmt: skip
  loop.run(validation.derive(tiny_config(steps)), src)
  what = {'prune': '', 'sparsity': 0.0, 'pattern': 'unstructured', 'scope': 'global',
          'group': 0, 'calib_batches': 4, 'eval_batches': 0}  # fmt: skip
  gaps = {}
  for scheme, scale, smooth in (('int8', 'static', 0.0), ('int8', 'static', 0.5),
                                ('int8', 'token', 0.0), ('fp8', 'static', 0.5)):  # fmt: skip
    out = str(tmp_path / f'{scheme}_{scale}_{smooth}')
    req = {**what, 'quantize': scheme, 'activations': scheme, 'act_scale': scale, 'smooth': smooth}
    rec = compress.compress(src, out, req)
    gaps[scheme, scale, smooth] = rec['loss_after'] - rec['loss_before']
  print({k: round(v, 4) for k, v in gaps.items()})
  assert all(abs(g) < 0.01 for g in gaps.values()), gaps
  qat = {**steps, 'train.num_steps': 20, 'train.eval_every': 20, 'train.checkpoint_every': 20,
         'optimizer.warmup_steps': 2, 'init_from': src, 'model.weight_quant': 'int8',
         'model.act_quant': 'int8', 'model.act_scale': 'tensor'}  # fmt: skip
  config = tiny_config(qat)
  result = loop.run(
    validation.derive(config), str(tmp_path / 'qat'), init_params_fn=init_from.params_fn(config)
  )
  print(f'QAT int8 W8A8 (dynamic per tensor), 20 steps: eval loss {result["eval/loss"]:.4f}, '
        f'float {rec["loss_before"]:.4f}')  # fmt: skip
  assert abs(result['eval/loss'] - rec['loss_before']) < 0.1  # from the float model, not random.


def test_docs_w8a8_tables_are_the_csvs():
  """docs/compression.md's W8A8 and QAT tables are scaling.studies.compression_report.w8a8_tables of
  the committed CSVs (their numbers printed from them, nothing edited by hand)."""
  from pathlib import Path

  from scaling.studies import compression_report as rep

  docs = Path(helpers.REPO) / 'docs'
  rows = rep.read_csv(str(docs / 'compression' / 'w8a8.csv'))
  qat = rep.read_csv(str(docs / 'compression' / 'w8a8_qat.csv'))
  page = (docs / 'compression.md').read_text()
  for table in rep.w8a8_tables(rows, qat).split('\n\n'):
    assert table in page, table.splitlines()[0]


def test_study_fine_tunes_a_qat_and_a_float_twin(tmp_path):
  """--part=activations' fine-tunes: per member the same recovery config twice, one with int8
  weights and inputs fake-quantized (dynamic per tensor), one float."""
  from scaling.studies import compression

  fine, qat = compression.act_qat_runs(str(tmp_path), '/ladder', ['M'])
  assert fine.workdir == str(tmp_path / 'w8a8_qat' / 'M_ft_float') and 'M_ft_w8a8' in qat.workdir
  fine_cmd = ' '.join(fine.argv)
  assert f'steps={compression.ACT_QAT_STEPS}' in fine_cmd and 'model.' not in fine_cmd
  for flag in ('weight_quant=int8', 'act_quant=int8', 'act_scale=tensor'):
    assert f'--config.model.{flag}' in qat.argv
