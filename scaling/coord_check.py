"""Coordinate check (Yang et al. 2022, μP; microsoft/mup's coord_check): activation RMS vs width.

  python -m scaling.coord_check --config=configs/default.py --parametrization=sp,mup,umup \
      --widths=64,128,256,512,1024 --steps=5 --out_dir=workdirs/coord_check

For each parametrization and width (d_model; d_ff, heads and kv heads scale with it, head dim and
depth stay; μP's base shape is the smallest width) the model trains `steps` Adam steps (the
project's optimizer, constant lr, no clipping) on the config's data, and after every step records
on one fixed batch the RMS of every probed tensor (embedding, each layer's attention and MLP
outputs and residual stream, final norm, logits), the RMS of its change since init, and at init
the RMS of the gradient of the summed token loss with respect to it. Under μP / u-μP the RMS after
the steps should not depend on width (log-log slope near 0); under SP the logits grow.

Writes coord_<parametrization>.png (one panel per step, like mup's plot, plus the change since
init) and coord_check.json (every record) into --out_dir, prints a table of slopes, and ends with
one JSON line {parametrization: {tensor: slope of RMS after the steps vs width}}.

  python -m scaling.coord_check --config=configs/default.py --parametrization=mup \
      --widths=64 --depths=2,4,8,16 --depth_base=2 --steps=5 --out_dir=workdirs/coord_check_depth

With --depths the check runs at the smallest of --widths over depths instead (μP's base width is
that width, its base depth --depth_base: depth-μP's branch and lr scales; 0: none), records the
first and last layers as 'first/...' and 'last/...', and fits the slopes against depth.
"""

import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

import models
from configs import schema
from models import parametrization as param_lib
from train import cli
from train import optimizer as optim
from train.data import pipeline
from train.step import TrainState, cross_entropy_sum, lm_loss, make_train_step

# Peak lrs of the check: a few steps that move every layer well past its init without leaving the
# regime where widths are comparable (SP and μP share lrs, as they coincide at the base width).
DEFAULT_LR = {'sp': 2.5e-3, 'mup': 2.5e-3, 'umup': 0.25}


def width_model(
  c: models.ModelConfig,
  width: int,
  parametrization: str,
  base_width: int,
  depth: int = 0,
  base_depth: int = 0,
) -> models.ModelConfig:
  """The config's model at d_model=width (and n_layers=depth if set): d_ff and heads scale with
  width, head dim fixed; μP's base shape is base_width (and base_depth: depth-μP, 0 = none)."""
  hd = models.head_dim(c)
  heads = max(1, width // hd)
  kv = max(1, heads * models.kv_heads(c) // c.n_heads)
  mup = parametrization == 'mup'
  base = base_width if mup else 0
  return c.replace(
    n_layers=depth or c.n_layers,
    base_n_layers=base_depth if mup else 0,
    d_model=width,
    d_ff=width * c.d_ff // c.d_model,
    n_heads=heads,
    n_kv_heads=kv,
    head_dim=hd,
    parametrization=parametrization,
    base_d_model=base,
    base_d_ff=0,
    base_head_dim=0,
    scan_layers=False,
    remat='none',
    dtype='float32',
  )


def _flat(tree, prefix=''):
  """{'layer_0/attn_out': array, ...} from a nested intermediates/perturbations dict."""
  out = {}
  for k, v in tree.items():
    name = f'{prefix}{k}'
    if isinstance(v, dict):
      out.update(_flat(v, name + '/'))
    else:
      out[name] = v[0] if isinstance(v, tuple) else v
  return out


def _rms(x):
  return float(jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32)))))


def measure(cfg, opt, batches, probe_BxL1, seed: int = 0) -> dict:
  """{tensor: {'rms': [t=0..steps], 'delta': [...], 'grad': rms at init}} for one model."""
  module = models.Transformer(cfg)
  inputs_BxL, targets_BxL = probe_BxL1[:, :-1], probe_BxL1[:, 1:]
  zeros = jax.tree.map(
    jnp.zeros_like, jax.eval_shape(module.init, jax.random.key(0), inputs_BxL)['perturbations']
  )

  @jax.jit
  def probe(params):
    def loss(perturbations):
      logits, state = module.apply(
        {'params': params, 'perturbations': perturbations}, inputs_BxL, mutable=['intermediates']
      )
      return cross_entropy_sum(logits, targets_BxL)[0], state['intermediates']

    grads, acts = jax.grad(loss, has_aux=True)(zeros)
    return acts, grads

  steps = len(batches)
  tx = optim.make_optimizer(opt, steps, cfg)
  train_step = jax.jit(make_train_step(lm_loss(cfg), tx, optim.lr_schedule(opt, steps), 1))
  params = models.init(cfg, jax.random.key(seed))
  state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  acts0, grads0 = (_flat(t) for t in probe(state.params))
  grads0 = {k.removesuffix('/'): v for k, v in grads0.items()}
  out = {
    k: {'rms': [_rms(v)], 'delta': [0.0], 'grad': _rms(grads0[k]) if k in grads0 else None}
    for k, v in acts0.items()
  }
  for batch in batches:
    state, _ = train_step(state, {'tokens': jnp.asarray(batch)})
    acts = _flat(probe(state.params)[0])
    for k, v in acts.items():
      out[k]['rms'].append(_rms(v))
      out[k]['delta'].append(_rms(v - acts0[k]))
  return out


def slope(widths, values) -> float:
  """Least-squares slope of log(value) against log(width)."""
  return float(np.polyfit(np.log(widths), np.log(np.maximum(values, 1e-30)), 1)[0])


def _setup(config, steps: int, batch_size: int, seq_len: int) -> tuple:
  """(typed model config, train batches, the fixed probe batch, constant-lr optimizer section)."""
  config = config.copy_and_resolve_references()
  seq_len = seq_len or min(config.data.seq_len, 128)
  with config.unlocked():
    config.data.seq_len = seq_len
    config.train.global_batch_size = batch_size
    config.model.max_len = max(config.model.max_len, seq_len)
  model = schema.Config.make(config).model  # parsed once, typed.
  train_ds, eval_ds, _ = pipeline.make_datasets(config, 0, 1)
  batches = [train_ds.batch(s) for s in range(steps)]
  probe = jnp.asarray(eval_ds.eval_batch(0))
  opt = config.optimizer.copy_and_resolve_references()
  with opt.unlocked():
    opt.update(schedule='constant', warmup_steps=0, grad_clip=0.0, lr=float(config.optimizer.lr))
  return model, batches, probe, opt


def _by_depth(acts: dict, depth: int) -> dict:
  """Depth mode: 'layer_0/x' -> 'first/x', 'layer_<L-1>/x' -> 'last/x', the other layers out."""
  out = {}
  for k, v in acts.items():
    head, _, rest = k.partition('/')
    if not head.startswith('layer_'):
      out[k] = v
    elif head in ('layer_0', f'layer_{depth - 1}'):
      out[f'{"first" if head == "layer_0" else "last"}/{rest}'] = v
      if depth == 1:
        out[f'last/{rest}'] = v
  return out


def run(
  config,
  parametrizations: Sequence[str],
  widths: Sequence[int],
  steps: int,
  lr: float | dict | None = None,
  batch_size: int = 8,
  seq_len: int = 0,
  seeds: Sequence[int] = (0,),
  depths: Sequence[int] = (),
  depth_base: int | None = None,
) -> list:
  """Records per parametrization, width (or depth, with `depths`) and seed; see the docstring."""
  model, batches, probe, opt = _setup(config, steps, batch_size, seq_len)
  shapes = [(widths[0], d) for d in depths] or [(w, 0) for w in widths]
  base_depth = depths[0] if depths and depth_base is None else (depth_base or 0)
  records = []
  for p in parametrizations:
    with opt.unlocked():
      opt.lr = float(lr[p] if isinstance(lr, dict) else (lr or opt.lr))
    for w, d in shapes:
      cfg = width_model(model, w, p, widths[0], d, base_depth)
      for seed in seeds:
        rec = measure(cfg, opt, batches, probe, seed)
        for tensor, r in (_by_depth(rec, d) if d else rec).items():
          records.append(
            {'parametrization': p, 'width': w, 'depth': cfg.n_layers, 'seed': seed}
            | {'tensor': tensor, 'lr': opt.lr, **r}
          )
  return records


def _mean_by(records: list, p: str, key: str, t: int = -1, axis: str = 'width') -> tuple:
  """(sizes, {tensor: [mean over seeds of record[key][t] per size]}) for parametrization p, the
  sizes being the records' `axis` ('width' or 'depth')."""
  widths = sorted({r[axis] for r in records if r['parametrization'] == p})
  tensors = list(dict.fromkeys(r['tensor'] for r in records if r['parametrization'] == p))
  out = {}
  for name in tensors:
    rows = [
      [r for r in records if (r['parametrization'], r['tensor'], r[axis]) == (p, name, w)]
      for w in widths
    ]
    vals = [[r[key][t] if isinstance(r[key], list) else r[key] for r in rs] for rs in rows]
    if all(v is not None for vs in vals for v in vs):
      out[name] = [float(np.mean(vs)) for vs in vals]
  return widths, out


def slopes(records: list, key: str = 'rms', t: int = -1, axis: str = 'width') -> dict:
  """{parametrization: {tensor: log-log slope vs width (or depth)}} of record[key] at step t."""
  out = {}
  for p in dict.fromkeys(r['parametrization'] for r in records):
    widths, series = _mean_by(records, p, key, t, axis)
    out[p] = {name: round(slope(widths, v), 4) for name, v in series.items()}
  return out


def plot(records: list, p: str, path: str, axis: str = 'width') -> None:
  """One panel per step (RMS vs width or depth, log-log, a line per tensor) plus the change."""
  # Lazy: matplotlib is heavy and only needed for the plots.
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # after use('Agg'): no display needed.

  steps = len(next(r for r in records if r['parametrization'] == p)['rms']) - 1
  panels = [('rms', t, f'RMS at t={t}') for t in range(steps + 1)]
  panels.append(('delta', steps, f'RMS of change, t={steps}'))
  fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), sharey=True)
  for ax, (key, t, title) in zip(np.atleast_1d(axes), panels):
    widths, series = _mean_by(records, p, key, t, axis)
    colors = plt.cm.tab20(np.linspace(0, 1, max(len(series), 2)))
    for (name, vals), color in zip(series.items(), colors):
      ax.plot(widths, vals, marker='.', label=name, lw=1, color=color)
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.set_title(title, fontsize=9)
    ax.set_xlabel('width (d_model)' if axis == 'width' else 'depth (n_layers)')
  np.atleast_1d(axes)[0].set_ylabel('RMS')
  np.atleast_1d(axes)[-1].legend(fontsize=6, loc='center left', bbox_to_anchor=(1, 0.5))
  fig.suptitle(f'coordinate check: {p}')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _parse_lr(text):
  if '=' not in text:
    return float(text)
  return {k: float(v) for k, v in (item.split('=') for item in text.split(','))}


def main(argv):
  del argv
  ps = [x for x in FLAGS.parametrization.split(',') if x]
  bad = [x for x in ps if x not in param_lib.PARAMETRIZATIONS]
  if bad:
    raise app.UsageError(f'--parametrization: {bad} not in {param_lib.PARAMETRIZATIONS}')
  widths = sorted(int(w) for w in FLAGS.widths.split(','))
  records = run(
    _CONFIG.value,
    ps,
    widths,
    FLAGS.steps,
    _parse_lr(FLAGS.lr),
    FLAGS.batch_size,
    FLAGS.seq_len,
    tuple(int(s) for s in FLAGS.seeds.split(',')),
    sorted(int(d) for d in FLAGS.depths.split(',') if d),
    FLAGS.depth_base,
  )
  axis = 'depth' if FLAGS.depths else 'width'
  out_dir = FLAGS.out_dir
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'coord_check.json'), 'w') as f:
    json.dump(records, f)
  after, init = slopes(records, axis=axis), slopes(records, t=0, axis=axis)
  change, grad = slopes(records, 'delta', axis=axis), slopes(records, 'grad', axis=axis)
  for par in ps:
    plot(records, par, os.path.join(out_dir, f'coord_{par}.png'), axis)
    print(
      f'\n{par}: log-log slope vs {axis} of the RMS at init | after {FLAGS.steps} steps | of '
      f'the change | of the gradient at init'
    )
    for name in after[par]:
      print(
        f'  {name:<22} {init[par][name]:+.3f} {after[par][name]:+.3f} '
        f'{change[par].get(name, float("nan")):+.3f} {grad[par].get(name, float("nan")):+.3f}'
      )
  print(json.dumps(after), flush=True)


if __name__ == '__main__':
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path[:arg]).')
  flags.DEFINE_string('parametrization', 'sp,mup,umup', 'comma-separated parametrizations')
  flags.DEFINE_string('widths', '64,128,256,512,1024', 'comma-separated d_model values')
  flags.DEFINE_integer('steps', 5, 'Adam steps')
  flags.DEFINE_string(
    'lr', ','.join(f'{k}={v}' for k, v in DEFAULT_LR.items()), "peak lr: one value or 'p=v' pairs"
  )
  flags.DEFINE_integer('batch_size', 8, 'sequences per step')
  flags.DEFINE_integer('seq_len', 0, "0: the config's, at most 128")
  flags.DEFINE_string('depths', '', 'comma-separated n_layers: a depth check at the first width')
  flags.DEFINE_integer('depth_base', None, "μP's base depth (default: the smallest; 0: none)")
  flags.DEFINE_string('seeds', '0', 'comma-separated init seeds (records are averaged)')
  flags.DEFINE_string('out_dir', 'workdirs/coord_check', 'where plots and records go')
  flags.mark_flag_as_required('config')
  FLAGS = flags.FLAGS
  cli.run(main)
