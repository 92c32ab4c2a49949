"""Calibrated weight quantization of the compressible kernels: GPTQ (Frantar et al. 2022) and AWQ
(Lin et al. 2023), from the inputs each kernel sees on calibration batches, with the numerical
cores of qwix.contrib (gptq_core, awq_core) applied to our [N, I, O] kernels.

Calibration: the model runs unscanned with the 'calibration' collection mutable; every dense layer
of models/transformer.py (`_dense`) sows its compressible kernel's input x, whose trailing dims are
that kernel's fan-in, so each kernel of any family or shape gets X [tokens, I] under its own param
name: GPTQ's Hessian X^T X and AWQ's mean |x| per fan-in entry, each averaged over the batches (as
qwix's SinglePassCalibrationProvider does). qwix's own providers intercept one-contracting-axis
einsums on nnx/linen params found by identity, which misses our attention output (two fan-in axes)
and the kernels sliced out of the scanned layer stack.

GPTQ: qwix's gptq_core.quantize_weight runs its column loop eagerly in Python (80 s for one 144 x 576
kernel on this CPU) and cannot hold qwix's synthetic 'int3' (it allocates Q as how.qtype); `gptq`
is the same blocked algorithm with the column loop in lax.fori_loop, built from gptq_core's
find_params, quantize and cholesky_inverse (equal to quantize_weight: tests/models/test_calibrated_quant.py).
AWQ: awq_core.quantize_weight as it is; its per-fan-in-entry scale s stays beside the kernel
(weights deq(q) / s, as qwix's AwqInferenceProvider applies them).

W8A8 (`w8a8`, models/act_quant.py): from the same statistics' max |x| per fan-in entry, the static
activation scales and SmoothQuant's factors, added to the params as frozen ones; SmoothQuant's
kernels are RTN of s·W stored as AWQ's (deq(q) / s).
"""

import functools

import flax
import jax
import jax.numpy as jnp

from models import act_quant, parametrization, quantize, rtn, transformer
from models.config import ModelConfig, PyTree

METHODS = ('rtn', 'gptq', 'awq')
CALIBRATED = ('gptq', 'awq')
GPTQ_BLOCK = 128  # columns per lazy batch update (qwix's and the reference's default).
GPTQ_DAMP = 0.01  # Hessian dampening: this fraction of its mean diagonal.
AWQ_GRID = 20  # exponents searched in [0, 1] (qwix's default).


def _how(scheme: str, group: int, rule: str = 'qwix'):
  """qwix's HowToQuantize for a kernel as qwix.contrib holds it: [O rows, I columns], a scale per
  row (and per `group` columns)."""
  from qwix._src.core import qarray  # where qwix.contrib's cores take it from.

  return qarray.HowToQuantize(
    qtype=rtn.QTYPES[scheme],
    channelwise_axes=[0],
    tiled_axes={1: group} if group else {},
    calibration_method=rtn.calibration_method(scheme, rule),
  )


# --- Calibration ---------------------------------------------------------------------------------


def _unscanned(cfg: ModelConfig) -> ModelConfig:
  return cfg.replace(scan_layers=False, remat='none')


def _sown(cfg: ModelConfig, params: PyTree, tokens_BxL: jax.Array) -> dict:
  """{param name: the input its dense layer saw} of the unscanned model `cfg`."""
  _, state = transformer.Transformer(cfg).apply(
    {'params': params}, tokens_BxL, mutable=['calibration']
  )
  flat = flax.traverse_util.flatten_dict(state.get('calibration', {}), sep='/')
  return {name: xs[0] for name, xs in flat.items()}


def _inputs(cfg: ModelConfig, sown: dict) -> dict:
  """{name: X [tokens, I]} of every compressible kernel of the unscanned `cfg` whose sown input
  ends in its fan-in dims; the others are missing (check() names them)."""
  out = {}
  for name, s, axes in quantize.leaves(cfg, quantize.shapes(cfg)):
    x = sown.get(name)
    if not parametrization.compressible(axes) or x is None:
      continue
    fan_in, fan_out = parametrization.split_axes(axes)
    n_lead = len(axes) - len(fan_in) - len(fan_out)  # (none: the model is unscanned)
    dims = tuple(s.shape[n_lead : n_lead + len(fan_in)])
    if tuple(x.shape[x.ndim - len(dims) :]) == dims:
      out[name] = x.reshape(-1, rtn.dims(axes, s.shape)[1]).astype(jnp.float32)
  return out


@functools.partial(jax.jit, static_argnums=0)
def _batch_stats(cfg: ModelConfig, params: PyTree, tokens_BxL: jax.Array) -> dict:
  from qwix.contrib import awq_core, gptq_core

  xs = _inputs(cfg, _sown(cfg, params, tokens_BxL[:, :-1]))  # the rows as the loss sees them.
  return {
    k: {
      'hessian': gptq_core.compute_hessian(x.T),
      'act_scale': awq_core.compute_act_scale(x),
      'absmax': jnp.max(jnp.abs(x), axis=0),  # W8A8's static scales and SmoothQuant.
    }
    for k, x in xs.items()
  }


MAXED = ('absmax',)  # statistics combined over the batches by their max (the others: the mean)


def _combine(path: tuple, a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.maximum(a, b) if path[-1].key in MAXED else a + b


def calibration_stats(cfg: ModelConfig, params: PyTree, batches) -> dict:
  """{kernel name: {'hessian': [N, I, I], 'act_scale': [N, I], 'absmax': [N, I]}} of `cfg`'s
  compressible kernels: X^T X / tokens and mean |x| averaged over token batches [B, L + 1], max |x|
  per fan-in entry over all of them (N: the kernel's stacked layers, 1 when unscanned)."""
  from models import pruning

  ucfg, uparams = pruning.unstack(cfg, params)
  ucfg = _unscanned(ucfg)
  sums, n = None, 0
  for tokens_BxL in batches:
    stats = _batch_stats(ucfg, uparams, jnp.asarray(tokens_BxL))
    sums = stats if sums is None else jax.tree_util.tree_map_with_path(_combine, sums, stats)
    n += 1
  if not n:
    raise ValueError('calibration: no calibration batches')
  out = {}
  for name, _, axes in quantize.leaves(cfg, quantize.shapes(cfg)):
    if not parametrization.compressible(axes):
      continue
    names = [name] if 'layers' not in axes else [
      name.replace('layers/', f'layer_{i}/', 1) for i in range(cfg.n_layers)
    ]  # fmt: skip
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *[sums[k] for k in names])
    out[name] = {k: v if k in MAXED else v / n for k, v in stacked.items()}
  return out


def check(cfg: ModelConfig, method: str, scheme: str, calib_batches: int) -> None:
  """One-line ValueError naming the flag: an unknown method, GPTQ / AWQ on a scheme other than
  int8 / int4 / int3, without calibration batches, or on a compressible kernel whose input the
  model does not sow as [..., fan-in] (traced from shapes only: nothing is loaded)."""
  if method not in METHODS:
    raise ValueError(f'--method={method!r} is not one of {METHODS}')
  if method == 'rtn':
    return
  if scheme not in rtn.INT_BITS:
    raise ValueError(f'--method={method} quantizes to {tuple(rtn.INT_BITS)}, not {scheme!r}')
  if calib_batches < 1:
    raise ValueError(f'--method={method} needs calibration data: --calib_batches >= 1')
  ucfg = _unscanned(cfg.replace(weight_quant='none', weight_group=0))
  tokens = jax.ShapeDtypeStruct((1, min(ucfg.max_len, 8)), jnp.int32)
  sown = jax.eval_shape(lambda p: _inputs(ucfg, _sown(ucfg, p, tokens)), quantize.shapes(ucfg))
  for name, _, axes in quantize.leaves(ucfg, quantize.shapes(ucfg)):
    if parametrization.compressible(axes) and name not in sown:
      raise ValueError(
        f'--method={method}: the kernel {name} {tuple(axes)} is not a dense layer whose input '
        'ends in its fan-in (models/transformer.py _dense); use --method=rtn'
      )


# --- GPTQ and AWQ of one kernel ------------------------------------------------------------------


def _gptq_2d(w_OxI: jax.Array, h_IxI: jax.Array, how, block: int, damp: float) -> tuple:
  """gptq_core.quantize_weight's algorithm on W [O, I], H [I, I] -> (qvalues [O, I], scales
  [O, I/group]); a group's scale from W as it stands at the start of the group's block."""
  from qwix.contrib import gptq_core

  o, cols = w_OxI.shape
  gs = how.tiled_axes.get(1, cols)
  h_diag = jnp.diag(h_IxI)
  dead = h_diag == 0
  h = jnp.where(dead & jnp.eye(cols, dtype=bool), 1.0, h_IxI)
  w = jnp.where(dead, 0.0, w_OxI)
  h = h + jnp.diag(jnp.full((cols,), damp * jnp.mean(h_diag)))
  hinv = jnp.linalg.cholesky(gptq_core.cholesky_inverse(jnp.linalg.cholesky(h)), upper=True)
  qdtype = jax.eval_shape(lambda: gptq_core.quantize(w[:, 0], how.qtype, w[:, 0], None)[0]).dtype
  scales, qs = [], []
  for i1 in range(0, cols, block):
    i2 = min(i1 + block, cols)
    for g0 in range(-(-i1 // gs) * gs, i2, gs):  # the groups that start in this block.
      scales.append(gptq_core.find_params(w[:, g0 : g0 + gs], how)[0].squeeze(1))
    s_OxG, hinv1 = jnp.stack(scales, 1), hinv[i1:i2, i1:i2]

    def column(i, carry, i1=i1, s_OxG=s_OxG, hinv1=hinv1):
      w1, err1, q1 = carry
      wi = w1[:, i]
      q, dq = gptq_core.quantize(wi, how.qtype, s_OxG[:, (i1 + i) // gs], None)
      err = (wi - dq) / hinv1[i, i]
      w1 = w1 - jnp.outer(err, hinv1[i])  # hinv1 is upper triangular: columns >= i.
      return w1, err1.at[:, i].set(err), q1.at[:, i].set(q)

    init = (w[:, i1:i2], jnp.zeros((o, i2 - i1)), jnp.zeros((o, i2 - i1), qdtype))
    w1, err1, q1 = jax.lax.fori_loop(0, i2 - i1, column, init)
    qs.append(q1)
    w = w.at[:, i1:i2].set(w1).at[:, i2:].subtract(err1 @ hinv[i1:i2, i2:])
  return jnp.concatenate(qs, 1), jnp.stack(scales, 1)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _gptq(w_NxIxO, h_NxIxI, scheme, group, rule, block, damp):
  run = lambda w, h: _gptq_2d(w.T, h, _how(scheme, group, rule), block, damp)
  q_NxOxI, s_NxOxG = jax.vmap(run)(w_NxIxO, h_NxIxI)
  return q_NxOxI.transpose(0, 2, 1), s_NxOxG.transpose(0, 2, 1)


def gptq(
  w_NxIxO: jax.Array,
  h_NxIxI: jax.Array,
  scheme: str,
  group: int,
  rule: str = 'qwix',
  block: int = GPTQ_BLOCK,
  damp: float = GPTQ_DAMP,
) -> 'qwix.QArray':  # noqa: F821
  """GPTQ of w [N, I, O] with the Hessians [N, I, I] of its inputs: a qwix QArray laid out as
  rtn.quantize's (values [N, I, O], scales [N, I/group (1 at group 0), O])."""
  import qwix

  rtn.check_group(scheme, group, w_NxIxO.shape[1], ('lead', 'fan_in', 'fan_out'))
  q, s = _gptq(jnp.asarray(w_NxIxO, jnp.float32), h_NxIxI, scheme, group, rule, block, damp)
  return qwix.QArray(qvalue=q, scale=s, zero_point=None, qtype=rtn.QTYPES[scheme])


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _awq(w_NxIxO, act_NxI, scheme, group, rule, n_grid):
  from qwix.contrib import awq_core

  def run(w_IxO, act_I):
    q, s_1xI = awq_core.quantize_weight(w_IxO.T, act_I, _how(scheme, group, rule), n_grid)
    return q.qvalue.T, q.scale.T, s_1xI[0]

  return jax.vmap(run)(w_NxIxO, act_NxI)


def awq(
  w_NxIxO: jax.Array,
  act_NxI: jax.Array,
  scheme: str,
  group: int,
  rule: str = 'qwix',
  n_grid: int = AWQ_GRID,
) -> tuple:
  """AWQ of w [N, I, O] with its inputs' mean |x| [N, I]: (QArray of w·s as rtn.quantize lays it
  out, s [N, I]); the weights are dequantize(QArray) / s[:, :, None]."""
  import qwix

  rtn.check_group(scheme, group, w_NxIxO.shape[1], ('lead', 'fan_in', 'fan_out'))
  q, scale, s = _awq(jnp.asarray(w_NxIxO, jnp.float32), act_NxI, scheme, group, rule, n_grid)
  return qwix.QArray(qvalue=q, scale=scale, zero_point=None, qtype=rtn.QTYPES[scheme]), s


def quantize_kernels(
  cfg: ModelConfig,
  params: PyTree,
  scheme: str,
  group: int,
  method: str,
  stats: dict,
  rule: str = 'qwix',
) -> dict:
  """{name: (QArray [N, I, O], AWQ's s [N, I] or None)} of every compressible kernel by GPTQ or
  AWQ from `stats` (calibration_stats), for quantize.quantize_tree."""
  if method not in CALIBRATED:
    raise ValueError(f'--method={method!r} is not one of {CALIBRATED}')
  out = {}
  for name, x, axes in quantize.leaves(cfg, params):
    if not parametrization.compressible(axes):
      continue
    if name not in stats:
      raise ValueError(f'--method={method}: no calibration statistics for the kernel {name}')
    w = jnp.asarray(x, jnp.float32).reshape(rtn.dims(axes, x.shape))
    if method == 'gptq':
      out[name] = gptq(w, stats[name]['hessian'], scheme, group, rule), None
    else:
      out[name] = awq(w, stats[name]['act_scale'], scheme, group, rule)
  return out


# --- W8A8: static activation scales and SmoothQuant (models/act_quant.py) ------------------------


def act_calibration(cfg: ModelConfig, params: PyTree, act: dict, stats: dict) -> dict:
  """{kernel name: {'smooth': SmoothQuant's s [N, I] or None, 'amax': [N]}}: the static absmax of
  each kernel's (smoothed) input, max_j absmax_j / s_j, from calibration_stats' 'absmax'."""
  out = {}
  for name, x, axes in quantize.leaves(cfg, params):
    if not parametrization.compressible(axes):
      continue
    if name not in stats:
      raise ValueError(f'--activations: no calibration statistics for the kernel {name}')
    a_NxI = jnp.asarray(stats[name]['absmax'], jnp.float32)
    s = None
    if act['smooth']:
      w = jnp.asarray(x, jnp.float32).reshape(rtn.dims(axes, x.shape))
      s = act_quant.smooth_factors(w, a_NxI, act['smooth'])
    out[name] = {'smooth': s, 'amax': jnp.max(a_NxI if s is None else a_NxI / s, axis=1)}
  return out


def with_act_params(cfg: ModelConfig, params: PyTree, act: dict, calib: dict) -> PyTree:
  """The params of act_quant.config(cfg, act): `params` plus each kernel's frozen '_act_amax'
  (static scales, [N, 1]) and '_act_smooth' (SmoothQuant, [N, 1, fan_in...]) from `calib`
  (act_calibration's [N] and [N, I], reshaped: the params lead with the size-1 'act_calib')."""
  new_cfg = act_quant.config(cfg, act)
  src = {name: x for name, x, _ in quantize.leaves(cfg, params)}
  out = {}
  for name, s, _ in quantize.leaves(new_cfg, quantize.shapes(new_cfg)):
    for suffix, key in ((act_quant.AMAX, 'amax'), (act_quant.SMOOTH, 'smooth')):
      if name.endswith(suffix) and name not in src:
        out[name] = jnp.reshape(calib[name.removesuffix(suffix)][key], s.shape)
    out.setdefault(name, src.get(name))
  return flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in out.items()})


def w8a8(
  cfg: ModelConfig,
  params: PyTree,
  scheme: str,
  group: int,
  act: dict,
  stats: dict | None,
  kernels: dict | None = None,
  rule: str = 'qwix',
) -> tuple[ModelConfig, PyTree, dict | None]:
  """(model config, params, kernels) for quantize.quantize_tree of the model whose dense inputs
  are quantized too (`act`: {'quant', 'scale', 'smooth': α or 0}): act_* set, the frozen scales
  and factors added, with SmoothQuant the kernels RTN-quantized as s·W with s as their per-fan-in
  scale (stored as AWQ's; `kernels`, GPTQ / AWQ's, pass through otherwise)."""
  calib = {}
  if act_quant.needs_calibration(act):
    if not stats:
      raise ValueError('--activations: static scales and --smooth need calibration statistics')
    calib = act_calibration(cfg, params, act, stats)
  new_params = with_act_params(cfg, params, act, calib)
  if act['smooth']:
    kernels = {}
    for name, x, axes in quantize.leaves(cfg, params):
      if parametrization.compressible(axes):
        s_NxI = calib[name]['smooth']
        w = jnp.asarray(x, jnp.float32).reshape(rtn.dims(axes, x.shape)) * s_NxI[:, :, None]
        kernels[name] = _quantize_jit(w, scheme, group, rule), s_NxI
  return act_quant.config(cfg, act), new_params, kernels


_quantize_jit = jax.jit(rtn.quantize, static_argnums=(1, 2, 3))
