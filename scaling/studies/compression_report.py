"""The compression study's tables, fits and plots from its runs and CSVs
(scaling/studies/compression.py): recovery curves and tokens-to-match, one-shot and gradual sparsity
with the law of Frantar et al. 2023, and the weight-quantization gap against bits and tokens per
parameter (Kumar et al. 2024)."""

import csv
import json
import os

import numpy as np
from scipy import optimize

from scaling import checks, parallel, results
from scaling import plot_style as style

# --- Frantar et al. 2023 at a fixed tokens-per-parameter ratio -----------------------------------


def sparse_law(p: np.ndarray, s: np.ndarray, n: np.ndarray) -> np.ndarray:
  """L(S, N) = (a_S·(1 - S)^b_S + c_S)·N^-b_N + E, their eq. 1 without the data term (every run
  here is at 20 tokens per parameter); p = (a_S, b_S, c_S, b_N, E), N in millions."""
  a_s, b_s, c_s, b_n, e = p
  return (a_s * (1 - s) ** b_s + c_s) * (n / 1e6) ** -b_n + e


def fit_sparse_law(s, n, loss, starts: int = 24, seed: int = 0) -> np.ndarray:
  """Least squares in log L from `starts` random starts; the best p."""
  s, n, loss = (np.asarray(v, float) for v in (s, n, loss))
  rng = np.random.default_rng(seed)
  best = None
  for _ in range(starts):
    p0 = [rng.uniform(0.1, 2), rng.uniform(0.1, 2), rng.uniform(0.1, 2), rng.uniform(0.05, 0.8),
          rng.uniform(0, loss.min())]  # fmt: skip
    res = optimize.least_squares(
      lambda p: np.log(sparse_law(p, s, n)) - np.log(loss),
      p0,
      bounds=([0, 0, 0, 0, 0], [50, 5, 50, 3, loss.min()]),
    )
    if best is None or res.cost < best.cost:
      best = res
  return best.x


def read_csv(path: str) -> list[dict]:
  """A CSV's rows as dicts ([] when the file does not exist yet)."""
  if not os.path.exists(path):
    return []
  return results.read_dicts(path)


def write_csv(path: str, rows: list[dict]) -> None:
  """rows (dicts with the same keys) as a CSV; nothing for no rows."""
  if not rows:
    return
  with open(path, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)


def final_eval(workdir: str) -> float:
  """The last eval/loss in a run's metrics.jsonl."""
  last = float('nan')
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      m = json.loads(line)
      last = m.get('eval/loss', last)
  return last


def gradual(runs: dict, ladder: str) -> list[dict]:
  """Gradual-sparsity runs' final loss next to their dense twin's (the ladder member's); `runs`:
  {base: {sparsity: workdir}}, a run counted once it is done (its result.json exists)."""
  rows = []
  for base, by_sparsity in runs.items():
    with open(os.path.join(ladder, base, 'result.json')) as f:
      dense = json.load(f)
    rows.append({'base': base, 'params': dense['params'], 'sparsity': 0.0, 'loss': dense['loss']})
    for s, run in by_sparsity.items():
      if parallel.finished(run):
        rows.append(
          {'base': base, 'params': dense['params'], 'sparsity': s, 'loss': final_eval(run)}
        )
  return rows


# --- Recovery ------------------------------------------------------------------------------------


def recovery_curves(runs: dict) -> list[dict]:
  """Eval loss per step of every finished recovery run (its result.json exists); `runs`:
  {(shape, recovery): workdir}."""
  out = []
  for (shape, how), run in runs.items():
    path = os.path.join(run, 'metrics.jsonl')
    if not parallel.finished(run):
      continue
    with open(os.path.join(run, 'config.json')) as f:
      c = json.load(f)
    per_step = c['train']['global_batch_size'] * c['data']['seq_len']
    with open(path) as f:
      for line in f:
        m = json.loads(line)
        if 'eval/loss' in m:
          out.append({'shape': shape, 'recovery': how, 'step': m['step'],
                      'tokens': m['step'] * per_step, 'eval_loss': round(m['eval/loss'], 5)})  # fmt: skip
  return out


def tokens_to_reach(curve: list[dict], target: float) -> float:
  """Tokens at which a curve's eval loss first reaches `target` (linear between evaluations)."""
  prev = None
  for r in sorted(curve, key=lambda r: r['tokens']):
    if r['eval_loss'] <= target:
      if prev is None:
        return float(r['tokens'])
      t0, l0, t1, l1 = prev['tokens'], prev['eval_loss'], r['tokens'], r['eval_loss']
      return float(t0 + (t1 - t0) * (l0 - target) / (l0 - l1))
    prev = r
  return float('nan')


def recovery_table(curves: list[dict], pruned_loss: dict, ref: tuple[float, float]) -> list[dict]:
  """Per shape: the loss right after pruning, each recovery's final loss, the tokens the distilled
  and fine-tuned students need to reach the from-scratch student's final loss (at most the first
  evaluation's when already below), and to reach `ref` = (loss, tokens) of a model of about the
  same size trained from scratch on its full budget."""
  rows = []
  for shape in dict.fromkeys(r['shape'] for r in curves):
    by = {how: [r for r in curves if r['shape'] == shape and r['recovery'] == how]
          for how in ('distill', 'finetune', 'scratch')}  # fmt: skip
    final = {how: (max(c, key=lambda r: r['step']) if c else None) for how, c in by.items()}
    row = {'shape': shape, 'pruned_loss': pruned_loss.get(shape, float('nan'))}
    for how, r in final.items():
      row[f'{how}_loss'] = r['eval_loss'] if r else float('nan')
    if final['scratch']:
      target, budget = final['scratch']['eval_loss'], final['scratch']['tokens']
      for how in ('distill', 'finetune'):
        t = tokens_to_reach(by[how], target)
        row[f'{how}_tokens_to_scratch'] = t
        row[f'{how}_token_saving'] = budget / t if t == t and t > 0 else float('nan')
    for how in ('distill', 'finetune'):
      t = tokens_to_reach(by[how], ref[0])
      row[f'{how}_tokens_to_ref'] = t
      row[f'{how}_saving_vs_ref'] = ref[1] / t if t == t and t > 0 else float('nan')
    rows.append(row)
  return rows


def plot_recovery(curves: list[dict], refs: dict, pruned: dict, png: str) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  shapes = list(dict.fromkeys(r['shape'] for r in curves))
  fig, axes = plt.subplots(1, len(shapes), figsize=(4.2 * len(shapes), 3.6), sharey=True)
  for ax, shape in zip(np.atleast_1d(axes), shapes):
    for how, color in (('distill', 'C0'), ('finetune', 'C1'), ('scratch', 'C2')):
      c = sorted((r for r in curves if r['shape'] == shape and r['recovery'] == how),
                 key=lambda r: r['tokens'])  # fmt: skip
      if c:
        xs, ys = [r['tokens'] / 1e6 for r in c], [r['eval_loss'] for r in c]
        if how != 'scratch' and shape in pruned:  # the pruned model before any recovery.
          xs, ys = [0.0] + xs, [pruned[shape]] + ys
        ax.plot(xs, ys, color=color, label=how)
    for (label, value), ls in zip(refs.items(), (':', '--')):
      ax.axhline(value, color='gray', ls=ls, lw=1, label=label)
    ax.set_title(f'pruned: {shape}')
    ax.set_xlabel('recovery tokens (M)')
    ax.set_ylim(1.0, 2.4)
  np.atleast_1d(axes)[0].set_ylabel('eval loss (nats/byte)')
  np.atleast_1d(axes)[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(png, dpi=120)
  plt.close(fig)


# --- Sparsity ------------------------------------------------------------------------------------


def compressible_params(workdir: str) -> int:
  """Weights the sparsity masks act on (models.compressible) in a workdir's model."""
  import jax

  import models
  from train import init_from

  cfg = init_from.workdir_model_config(workdir)
  shapes, comp = models.param_shapes(cfg), models.compressible(cfg)
  return int(sum(s.size for s, c in zip(jax.tree.leaves(shapes), jax.tree.leaves(comp)) if c))


def sparse_fit(rows: list[dict]) -> dict:
  """Frantar et al.'s law fitted on every gradual run (N = nonzero params), and again on all but
  the largest base with that base's sparse runs predicted (held out)."""
  s, n, loss = (np.array([float(r[k]) for r in rows]) for k in ('sparsity', 'nonzero', 'loss'))
  p = fit_sparse_law(s, n, loss)
  names = ('a_s', 'b_s', 'c_s', 'b_n', 'E')
  out = {
    'p': p.tolist(),
    'in_sample_mean_abs_err': float(np.mean(np.abs(sparse_law(p, s, n) / loss - 1))),
    'warnings': checks.law_warnings(
      'sparsity', dict(zip(names, p.tolist())),
      bounds=dict(zip(names, zip((0, 0, 0, 0, 0), (50, 5, 50, 3, loss.min())))),
      exponents=('b_n',), floor='E', lowest_loss=float(loss.min()),
    ),
  }  # fmt: skip
  checks.emit(out['warnings'])
  dense = np.array([float(r['params']) for r in rows])
  held = dense == dense.max()
  if held.any() and (~held).sum() >= 6:
    q = fit_sparse_law(s[~held], n[~held], loss[~held])
    err = sparse_law(q, s[held], n[held]) / loss[held] - 1
    out.update(holdout_p=q.tolist(), holdout_err={f'{a}': float(e) for a, e in zip(s[held], err)})
  return out


def plot_sparsity(oneshot: list[dict], gradual_rows: list[dict], fit: dict, png: str) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
  for i, base in enumerate(dict.fromkeys(r['base'] for r in oneshot)):
    for scope, ls in (('global', '-'), ('layer', '--')):
      rs = sorted((r for r in oneshot if r['base'] == base and r['scope'] == scope
                   and r['pattern'] == 'unstructured'), key=lambda r: float(r['sparsity']))  # fmt: skip
      if rs:
        xs = [0.0] + [float(r['sparsity']) for r in rs]
        ys = [float(rs[0]['loss_dense'])] + [float(r['loss']) for r in rs]
        a.plot(xs, ys, ls, color=f'C{i}', label=f'{base.split("_")[0]} {scope}')
  style.style_axis(a, 'sparsity (fraction of weights zeroed; one-shot, no retraining)',
                   'eval loss (nats/byte)', 'One-shot magnitude pruning')  # fmt: skip
  style.ordered_legend(
    a, fontsize=6, title='base: solid global, dashed per layer', title_fontsize=6
  )
  p = np.array(fit['p'])
  for i, s in enumerate(sorted({float(r['sparsity']) for r in gradual_rows})):
    rs = sorted(
      (r for r in gradual_rows if float(r['sparsity']) == s), key=lambda r: float(r['nonzero'])
    )
    n = np.array([float(r['nonzero']) for r in rs])
    b.plot(n, [float(r['loss']) for r in rs], 'o', color=f'C{i}', label=f'S = {s}')
    grid = np.geomspace(n.min() / 1.2, n.max() * 1.2, 50)
    b.plot(grid, sparse_law(p, s, grid), '-', color=f'C{i}', lw=1)
  style.style_axis(b, 'nonzero parameters (trained sparse, 20 tokens per dense param)',
                   'eval loss (nats/byte)', 'Frantar et al. law (lines) fitted to all points',
                   xlog=True)  # fmt: skip
  style.ordered_legend(b, fontsize=7, title='sparsity S', title_fontsize=7)
  fig.tight_layout()
  fig.savefig(png, dpi=120)
  plt.close(fig)


# --- Quantization --------------------------------------------------------------------------------


def kumar_fit(rows: list[dict], scheme: str, group: str) -> dict:
  """log(PTQ gap) = c + γ_D·log D - γ_N·log N (Kumar et al. 2024's δ_PTQ ∝ D^γD / N^γN at fixed
  bits), least squares over the members with a positive gap."""
  sel = [r for r in rows if r['scheme'] == scheme and str(r['group']) == group]
  gap = np.array([float(r['loss']) - float(r['loss_float']) for r in sel])
  ok = gap > 0
  d = np.log([float(r['tokens']) for r in sel])[ok]
  n = np.log([float(r['params']) for r in sel])[ok]
  x = np.stack([np.ones_like(d), d, -n], 1)
  coef, *_ = np.linalg.lstsq(x, np.log(gap[ok]), rcond=None)
  out = {'scheme': f'{scheme} g{group}', 'points': int(ok.sum()), 'of': len(sel),
         'gamma_D': float(coef[1]), 'gamma_N': float(coef[2])}  # fmt: skip
  out['warnings'] = [f'PTQ {out["scheme"]}: {w}' for w in kumar_warnings(out)]
  checks.emit(out['warnings'])
  return out


def kumar_warnings(fit: dict) -> list[str]:
  """The PTQ-gap law's flags: too few positive gaps for its 3 constants, exponents outside
  checks.EXPONENTS (Kumar et al. measure both near 0.5; below 0: a gap that shrinks with tokens)."""
  out = []
  if fit['points'] < 5:
    out.append(
      f'{fit["points"]} of {fit["of"]} members have a positive gap: too few for 3 constants'
    )
  out += checks.law_warnings('kumar', fit, exponents=('gamma_D', 'gamma_N'))
  return out


def plot_quantize(rows: list[dict], png: str) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
  for ax, (scheme, group) in zip(axes, (('int4', '0'), ('int4', '16'))):
    sel = [r for r in rows if r['scheme'] == scheme and str(r['group']) == group]
    for i, size in enumerate(sorted({int(r['params']) for r in sel})):
      rs = sorted((r for r in sel if int(r['params']) == size), key=lambda r: float(r['tokens']))
      ratio = [float(r['tokens']) / size for r in rs]
      gap = [max(float(r['loss']) - float(r['loss_float']), 1e-4) for r in rs]
      ax.plot(ratio, gap, 'o-', color=f'C{i}', label=f'N = {size / 1e3:.0f}K')
    title = f'PTQ {scheme}, {"per channel" if group == "0" else "group " + group}'
    xlabel = 'training tokens per parameter (D/N)'
    style.style_axis(ax, xlabel, None, title, xlog=True, ylog=True)
  axes[0].set_ylabel('loss gap to float (nats/byte)')
  style.ordered_legend(axes[0], fontsize=7, title='params N', title_fontsize=7)
  fig.tight_layout()
  fig.savefig(png, dpi=120)
  plt.close(fig)


def replot(csv_dir: str, ladder_csv: str = 'docs/scaling/ladder_results.csv') -> list[str]:
  """recovery.png, sparsity.png and quantize.png redrawn from a report's committed CSVs and
  summary.json (pruned losses, the sparse law's constants) in csv_dir, the reference losses from
  the ladder's results CSV (scaling/studies/compression.py's refs); returns the paths written."""
  out = []
  with open(os.path.join(csv_dir, 'summary.json')) as f:
    summary = json.load(f)
  curves = read_csv(os.path.join(csv_dir, 'recovery_curves.csv'))
  if curves and os.path.exists(ladder_csv):
    for r in curves:
      r['tokens'], r['eval_loss'] = float(r['tokens']), float(r['eval_loss'])
    loss = {r['name']: float(r['loss']) for r in results.read_dicts(ladder_csv)}
    refs = {'teacher (651K, 13M tokens)': loss['N6.51e5_D1.3e7_lr7.81e-3'],
            '373K from scratch, 7.5M tokens': loss['N3.73e5_D7.45e6_lr7.81e-3']}  # fmt: skip
    pruned = {r['shape']: r['pruned_loss'] for r in summary.get('recovery', [])}
    out.append(os.path.join(csv_dir, 'recovery.png'))
    plot_recovery(curves, refs, pruned, out[-1])
  grad = read_csv(os.path.join(csv_dir, 'sparsity_gradual.csv'))
  if grad:
    fit = summary.get('sparse_law') or sparse_fit(grad)
    oneshot = read_csv(os.path.join(csv_dir, 'sparsity_oneshot.csv'))
    out.append(os.path.join(csv_dir, 'sparsity.png'))
    plot_sparsity(oneshot, grad, fit, out[-1])
  rows = read_csv(os.path.join(csv_dir, 'quantize.csv'))
  if rows:
    out.append(os.path.join(csv_dir, 'quantize.png'))
    plot_quantize(rows, out[-1])
  return out


# --- Calibrated quantization (GPTQ, AWQ) against RTN, and the scale rules -----------------------


def output_error(cfg, params: dict, deq: dict, stats: dict) -> float:
  """Mean over the compressible kernels of ||X W - X Q||^2 / ||X W||^2 on the calibration inputs
  (tr(dW^T H dW) / tr(W^T H W), H = X^T X from calibrated_quant.calibration_stats)."""
  from models import quantize, rtn

  errs = []
  for (name, w, axes), (_, q, _) in zip(quantize.leaves(cfg, params), quantize.leaves(cfg, deq)):
    if name in stats:
      w = np.asarray(w, np.float64).reshape(rtn.dims(axes, w.shape))
      d = w - np.asarray(q, np.float64).reshape(w.shape)
      h = np.asarray(stats[name]['hessian'], np.float64)
      errs.append(np.einsum('nio,nij,njo->', d, h, d) / np.einsum('nio,nij,njo->', w, h, w))
  return float(np.mean(errs))


def _gap(rows: list[dict], member: str, method: str, scheme: str, group: int, rule: str) -> str:
  got = [r for r in rows if (r['member'], r['method'], r['scheme'], r['group'], r['rule'])
         == (member, method, scheme, str(group), rule)]  # fmt: skip
  return f'{float(got[0]["loss"]) - float(got[0]["loss_float"]):+.4f}' if got else '—'


def calibrated_tables(rows: list[dict]) -> str:
  """Markdown tables of docs/compression.md from gptq_awq.csv: the loss gap (quantized - float)
  of RTN / GPTQ / AWQ per scheme and group, and of qwix's scale rule against the textbook one."""
  members = list(dict.fromkeys(r['member'] for r in rows))
  first = {m: next(r for r in rows if r['member'] == m) for m in members}
  size = lambda m: f'{int(first[m]["params"]):,} ({float(first[m]["tokens"]) / 1e6:.1f}M)'
  out = []
  for scheme in ('int4', 'int3'):
    head = [f'{scheme} {"per channel" if g == 0 else f"g{g}"} {m.upper()}'
            for g in (0, 16) for m in ('rtn', 'gptq', 'awq')]  # fmt: skip
    out += [
      '| params (tokens) | float | ' + ' | '.join(head) + ' |',
      '|---' * (2 + len(head)) + '|',
    ]
    for m in members:
      gaps = [_gap(rows, m, k, scheme, g, 'qwix') for g in (0, 16) for k in ('rtn', 'gptq', 'awq')]
      out.append(f'| {size(m)} | {float(first[m]["loss_float"]):.4f} | ' + ' | '.join(gaps) + ' |')
    out.append('')
  rules = [
    (s, g, r) for s, g in (('int8', 0), ('int4', 0), ('int4', 16)) for r in ('qwix', 'textbook')
  ]
  head = [f'{s} {"ch" if g == 0 else f"g{g}"} {r}' for s, g, r in rules]
  out += ['| params (tokens) | ' + ' | '.join(head) + ' |', '|---' * (1 + len(head)) + '|']
  for m in members:
    out.append(f'| {size(m)} | ' + ' | '.join(_gap(rows, m, 'rtn', *k) for k in rules) + ' |')
  return '\n'.join(out)


# --- W8A8: activation quantization and SmoothQuant -----------------------------------------------


def act_spread(stats: dict, smoothed: dict | None = None) -> float:
  """Mean over the compressible kernels and layers of max_j / median_j of the inputs' per-channel
  max |x_j| (calibration_stats' 'absmax'; divided by SmoothQuant's s_j when `smoothed` gives
  calibrated_quant.act_calibration's): how far the outlier channels stand out."""
  out = []
  for name, st in stats.items():
    a = np.asarray(st['absmax'], np.float64)
    if smoothed is not None:
      a = a / np.asarray(smoothed[name]['smooth'], np.float64)
    out.append(np.mean(a.max(1) / np.median(a, 1)))
  return float(np.mean(out))


W8A8_COLUMNS = (('none', '0.0', 'W only'), ('static', '0.0', 'static'),
                ('static', '0.5', 'static SQ'), ('token', '0.0', 'token'),
                ('token', '0.5', 'token SQ'))  # fmt: skip


def w8a8_tables(rows: list[dict], qat: list[dict]) -> str:
  """Markdown tables of docs/compression.md from w8a8.csv (the loss gap, W8A8 - float, per scheme,
  activation scale and SmoothQuant; the inputs' channel spread) and w8a8_qat.csv."""
  members = list(dict.fromkeys(r['member'] for r in rows))
  first = {m: next(r for r in rows if r['member'] == m) for m in members}
  size = lambda m: f'{int(first[m]["params"]):,} ({float(first[m]["tokens"]) / 1e6:.1f}M)'

  def gap(m: str, scheme: str, scale: str, smooth: str) -> str:
    got = [r for r in rows if (r['member'], r['scheme'], r['act_scale'], str(r['smooth']))
           == (m, scheme, scale, smooth)]  # fmt: skip
    return f'{float(got[0]["loss"]) - float(got[0]["loss_float"]):+.4f}' if got else '—'

  head = [f'{s} {label}' for s in ('int8', 'fp8') for _, _, label in W8A8_COLUMNS]
  out = ['| params (tokens) | float | spread (SQ) | ' + ' | '.join(head) + ' |',
         '|---' * (3 + len(head)) + '|']  # fmt: skip
  for m in members:
    smoothed = [r for r in rows if r['member'] == m and str(r['smooth']) == '0.5']
    sq = f' ({float(smoothed[0]["act_spread_smoothed"]):.1f})' if smoothed else ''
    gaps = [gap(m, s, a, sm) for s in ('int8', 'fp8') for a, sm, _ in W8A8_COLUMNS]
    out.append(f'| {size(m)} | {float(first[m]["loss_float"]):.4f} | '
               f'{float(first[m]["act_spread"]):.1f}{sq} | ' + ' | '.join(gaps) + ' |')  # fmt: skip
  if qat:
    out += ['', '| params | fine-tune | as trained | float | int8 W8A8 static | int8 W8A8 token |',
            '|---|---|---|---|---|---|']  # fmt: skip
    for r in qat:
      keys = ('loss_as_trained', 'loss_float', 'loss_w8a8_static', 'loss_w8a8_token')
      cells = [_vs(r[k], float(r['loss_member'])) for k in keys]
      tune = {'w8a8': 'int8 W8A8 QAT'}.get(r['fine_tune'], r['fine_tune'])
      out.append(f'| {int(r["params"]):,} | {tune} ({r["steps"]} steps) | '
                 + ' | '.join(cells) + ' |')  # fmt: skip
  return '\n'.join(out)


def _vs(loss: str, ref: float) -> str:
  """'1.2345 (+0.0012)': a loss and its difference to `ref`; '—' when empty."""
  return f'{float(loss):.4f} ({float(loss) - ref:+.4f})' if loss != '' else '—'


def plot_w8a8(rows: list[dict], png: str) -> None:
  """The W8A8 loss gap against params, one panel per format, a line per activation scale and
  SmoothQuant (symmetric log scale: gaps near 0 and of both signs)."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
  for ax, scheme in zip(axes, ('int8', 'fp8')):
    for i, (scale, smooth, label) in enumerate(W8A8_COLUMNS):
      sel = sorted((r for r in rows if (r['scheme'], r['act_scale'], str(r['smooth']))
                    == (scheme, scale, smooth)), key=lambda r: int(r['params']))  # fmt: skip
      xs = [int(r['params']) for r in sel]
      ys = [float(r['loss']) - float(r['loss_float']) for r in sel]
      ax.plot(xs, ys, 'o-' if 'SQ' not in label else 's--', color=f'C{i}', label=label, ms=4)
    ax.set_yscale('symlog', linthresh=1e-3)
    ax.axhline(0, color='k', lw=0.6)
    style.style_axis(ax, 'parameters N', None, f'W8A8 {scheme}: weights and dense inputs',
                     xlog=True)  # fmt: skip
  axes[0].set_ylabel('eval-loss gap to float (nats/byte)')
  style.ordered_legend(axes[0], fontsize=7, title='activation scale', title_fontsize=7)
  fig.tight_layout()
  fig.savefig(png, dpi=120)
  plt.close(fig)


if __name__ == '__main__':  # python -m scaling.studies.compression_report [DIR]: the plots again.
  import sys

  usage = 'usage: python -m scaling.studies.compression_report [DIR] (default docs/compression)'
  csv_dir = sys.argv[1] if len(sys.argv) > 1 else 'docs/compression'
  if csv_dir in ('-h', '--help'):
    sys.exit(usage)
  if not os.path.isdir(csv_dir):
    sys.exit(f'error: no such directory {csv_dir!r}; {usage}')
  print('\n'.join(replot(csv_dir)))
