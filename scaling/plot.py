"""Plots runs against a scaling-law fit: loss vs compute with the frontier, IsoFLOP profiles, observed vs fitted.

The IsoFLOP plot follows Hoffmann et al. 2022 (arXiv 2203.15556), Figure 3: loss vs params per budget,
a parabola in log N through each, and its minimum.

  python -m scaling.plot --results=runs.csv --fit=fit.json    # PNGs beside runs.csv
  python -m scaling.plot --results=docs/scaling/isoflop_tiny_results.csv \
      --fit=docs/scaling/isoflop_tiny_isoflop_fit.json --stem=isoflop_tiny   # docs/scaling/isoflop_tiny_*.png

A distillation sweep's results.csv (scaling/sweep.py with a `sweep.distill` axis: `mode`,
`teacher_params`, `teacher_loss` columns) plots without a fit: student loss vs student params,
supervised and distilled, with the teacher's loss as a horizontal line; the table goes to stdout.

  python -m scaling.plot --results=W/results.csv --distill   # W/results_distill.png
"""

import json
import os
from collections.abc import Sequence

import matplotlib
import numpy as np
from absl import flags

from scaling import fit as fit_lib
from scaling import laws, predict
from scaling import plot_style as style
from scaling import results as results_lib
from train import cli

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # after use('Agg'): no display needed.

FLAGS = flags.FlagValues()  # this module's own: tools importing each other share flag names.
flags.DEFINE_string('results', None, 'results CSV the fit was made from', flag_values=FLAGS)
flags.DEFINE_string(
  'fit', '', 'JSON written by scaling.fit (not with --distill)', flag_values=FLAGS
)
flags.DEFINE_bool(
  'distill',
  False,
  'a distillation sweep: plot student loss vs size (no fit needed)',
  flag_values=FLAGS,
)
flags.DEFINE_string('out_dir', '', 'default: the results CSV directory', flag_values=FLAGS)
flags.DEFINE_string(
  'stem', '', "PNG name prefix; default: the results CSV's name", flag_values=FLAGS
)
flags.mark_flag_as_required('results', flag_values=FLAGS)


def fitted_loss(runs: results_lib.Runs, fit: dict) -> np.ndarray:
  """The fit's loss for each run (isoflop: its budget's parabola), NaN where it has none."""
  c = fit['constants']
  if fit['law'] == 'chinchilla':
    law = laws.Chinchilla(E=c['E'], A=c['A'], B=c['B'], alpha=c['alpha'], beta=c['beta'])
    return laws.chinchilla_loss(law, runs.params, runs.tokens)
  if fit['law'] == 'kaplan':
    law = laws.KaplanJoint(
      alpha_N=c['joint_alpha_N'], alpha_D=c['joint_alpha_D'], N_c=c['joint_N_c'], D_c=c['joint_D_c']
    )
    return laws.kaplan_loss_joint(law, runs.params, runs.tokens)
  out = np.full(len(runs), np.nan)
  budgets = fit.get('budgets', [])
  if budgets:
    centres = np.log([b['flops'] for b in budgets])
    for i in range(len(runs)):
      j = int(np.argmin(np.abs(centres - np.log(runs.flops[i]))))
      if abs(centres[j] - np.log(runs.flops[i])) <= np.log1p(fit.get('budget_rtol', 0.05)):
        out[i] = np.polyval(budgets[j]['parabola_ln_params'], np.log(runs.params[i]))
  return out


def plot_loss_vs_compute(runs: results_lib.Runs, fit: dict, path: str) -> None:
  """Every run's loss against its FLOPs, with the fit's compute-optimal loss L_opt(C): solid over
  the fitted runs, dashed (and the range shaded) where it extrapolates beyond them."""
  fig, ax = plt.subplots(figsize=(6.4, 4.5))
  sc = ax.scatter(runs.flops, runs.loss, c=np.log10(runs.params), s=14, cmap='viridis', zorder=3)
  fig.colorbar(sc, ax=ax, label='log10 params')
  top = (fit.get('fitted_range') or {}).get('flops', [None, runs.flops.max()])[1]
  cs = np.logspace(np.log10(runs.flops.min()) - 0.5, np.log10(runs.flops.max()) + 1, 100)
  frontier = [predict.predict_point(fit, compute=c)['loss'] for c in cs]
  label = f'{fit["law"]} compute-optimal frontier'
  style.fit_line(ax, cs, frontier, top, label=label, color='k', lw=1.2)
  style.shade_extrapolated(ax, top, cs[-1])
  ax.set_xlim(cs[0], cs[-1])
  style.style_axis(
    ax, 'training compute (FLOPs, 6ND)', 'eval loss (nats/byte)', 'Loss vs compute', xlog=True
  )
  style.ordered_legend(ax, labels=[label], fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_isoflops(runs: results_lib.Runs, fit: dict, path: str) -> bool:
  """Loss vs params per compute budget, with each budget's parabola in log N and its minimum.

  Returns False (and writes nothing) when no budget has a profile.
  """
  if fit['law'] == 'isoflop':
    profiles = fit['budgets']
    rtol = fit.get('budget_rtol', 0.05)
  else:
    rtol = 0.05
    profiles = fit_lib.isoflop_profiles(runs, rtol, strict=False)
  if not profiles:
    return False
  labels = fit_lib.group_budgets(runs.flops, rtol)
  cmap = plt.get_cmap('plasma')
  fig, ax = plt.subplots(figsize=(6, 4.5))
  for i, prof in enumerate(profiles):
    colour = cmap(i / max(1, len(profiles) - 1) * 0.85)
    g = labels[np.argmin(np.abs(np.log(runs.flops) - np.log(prof['flops'])))]
    idx = labels == g
    ax.scatter(
      runs.params[idx], runs.loss[idx], color=colour, s=14, label=f'{prof["flops"]:.2g} FLOPs'
    )
    x = np.linspace(np.log(runs.params[idx].min()), np.log(runs.params[idx].max()), 100)
    ax.plot(np.exp(x), np.polyval(prof['parabola_ln_params'], x), color=colour, lw=1)
    ax.plot(prof['params_opt'], prof['loss_opt'], 'k*', ms=8)
  style.style_axis(
    ax, 'params', 'eval loss (nats/byte)', 'IsoFLOP profiles (* = minimum)', xlog=True
  )
  style.ordered_legend(ax, fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def plot_observed_vs_fitted(runs: results_lib.Runs, fit: dict, path: str) -> None:
  """Observed loss against the fit's loss per run (every run here is a fitted one), with y = x."""
  pred = fitted_loss(runs, fit)
  ok = np.isfinite(pred)
  fig, ax = plt.subplots(figsize=(5, 5))
  ax.plot(pred[ok], runs.loss[ok], label=f'fitted runs ({int(ok.sum())})', **style.FITTED)
  lo, hi = min(pred[ok].min(), runs.loss.min()), max(pred[ok].max(), runs.loss.max())
  pad = 0.03 * (hi - lo)
  ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], 'k--', lw=1, label='observed = fitted')
  ax.set_xlim(lo - pad, hi + pad)
  ax.set_ylim(lo - pad, hi + pad)
  rmse = float(np.sqrt(np.mean((np.log(pred[ok]) - np.log(runs.loss[ok])) ** 2)))
  style.style_axis(
    ax,
    f'fitted loss, {fit["law"]} law (nats/byte)',
    'observed eval loss (nats/byte)',
    f'Observed vs fitted (RMS log error {rmse:.3g})',
  )
  style.ordered_legend(ax, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_all(runs: results_lib.Runs, fit: dict, out_dir: str, stem: str) -> list[str]:
  """Writes the PNGs and returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  base = os.path.join(out_dir, stem)
  paths = [f'{base}_loss_vs_compute.png']
  plot_loss_vs_compute(runs, fit, paths[0])
  if plot_isoflops(runs, fit, f'{base}_isoflops.png'):
    paths.append(f'{base}_isoflops.png')
  paths.append(f'{base}_observed_vs_fitted.png')
  plot_observed_vs_fitted(runs, fit, paths[-1])
  return paths


def _float(text: str | None):
  try:
    return float(text)
  except (TypeError, ValueError):
    return float('nan')


def read_distill_rows(results_csv: str) -> list[dict]:
  """The rows of a distillation sweep's CSV: dicts with name, mode, params, tokens, loss, teacher_*.

  Raises ValueError when the CSV has no `mode` column or no supervised/distill rows.
  """
  header, table = results_lib.read_rows(results_csv)
  if 'mode' not in header:
    raise ValueError(f'{results_csv}: no `mode` column (not a distillation sweep)')
  rows = []
  for r in table:
    if r.get('mode') not in ('supervised', 'distill'):
      continue
    rows.append(
      {
        'name': r.get('name', ''),
        'mode': r['mode'],
        'params': _float(r.get('params')),
        'tokens': _float(r.get('tokens')),
        'loss': _float(r.get('loss')),
        'teacher_params': _float(r.get('teacher_params')),
        'teacher_loss': _float(r.get('teacher_loss')),
      }
    )
  if not rows:
    raise ValueError(f'{results_csv}: no supervised or distill rows')
  return rows


def distill_table(rows: Sequence[dict]) -> list[dict]:
  """One dict per (tokens, params): supervised and distilled loss and their difference (NaN if absent)."""
  by_key = {}
  for r in rows:
    by_key.setdefault((r['tokens'], r['params']), {})[r['mode']] = r
  out = []
  for (tokens, params), modes in sorted(by_key.items()):
    sup = modes.get('supervised', {}).get('loss', float('nan'))
    dis = modes.get('distill', {}).get('loss', float('nan'))
    t = modes.get('distill', {})
    out.append(
      {
        'params': params,
        'tokens': tokens,
        'supervised': sup,
        'distill': dis,
        'diff': dis - sup,
        'teacher_params': t.get('teacher_params', float('nan')),
        'teacher_loss': t.get('teacher_loss', float('nan')),
      }
    )
  return out


def _seed_stats(rows: Sequence[dict], mode: str, tokens: float) -> tuple:
  """(params, mean loss, seed std, seeds per point) of one mode and token budget, params ascending."""
  by = {}
  for r in rows:
    if r['mode'] == mode and r['tokens'] == tokens and np.isfinite(r['loss']):
      by.setdefault(r['params'], []).append(r['loss'])
  xs = sorted(by)
  return (
    np.array(xs),
    np.array([np.mean(by[x]) for x in xs]),
    np.array([np.std(by[x], ddof=1) if len(by[x]) > 1 else 0.0 for x in xs]),
    [len(by[x]) for x in xs],
  )


def plot_distill_sweep(results_csv: str, out_path: str) -> list[dict]:
  """Student eval loss vs student params, supervised and distilled, with the teacher's loss line.

  One line per mode (and per token budget when the sweep has several); seeds of one (mode, params,
  tokens) are averaged, with ±1 std error bars (the legend says how many seeds). Returns
  distill_table(rows).
  """
  rows = read_distill_rows(results_csv)
  token_budgets = sorted({r['tokens'] for r in rows})
  styles = {
    'supervised': ('tab:blue', 'o', 'supervised (from scratch)'),
    'distill': ('tab:orange', 's', 'distilled'),
  }
  fig, ax = plt.subplots(figsize=(6.4, 4.5))
  for k, tokens in enumerate(token_budgets):
    for mode, (colour, marker, label) in styles.items():
      x, y, err, seeds = _seed_stats(rows, mode, tokens)
      if not len(x):
        continue
      if len(token_budgets) > 1:
        label = f'{label}, {tokens:.3g} tokens'
      n = f'{min(seeds)}' if min(seeds) == max(seeds) else f'{min(seeds)}-{max(seeds)}'
      label += f' ({n} seed{"s, ±1 std" if max(seeds) > 1 else ": no error bar"})'
      ls = ('-', '--', ':', '-.')[k % 4]
      ax.errorbar(x, y, yerr=err, marker=marker, color=colour, ls=ls, capsize=3, label=label)
  teachers = {
    (r['teacher_params'], r['teacher_loss'])
    for r in rows
    if r['mode'] == 'distill' and np.isfinite(r['teacher_loss'])
  }
  for tp, tl in sorted(teachers):
    size = f'{tp / 1e6:.3g}M params' if np.isfinite(tp) else 'params unknown'
    ax.axhline(tl, color='k', ls='--', lw=1, label=f'teacher ({size}): {tl:.3f}')
  style.style_axis(
    ax,
    'student params',
    'student eval loss (nats/byte)',
    'Distillation sweep: student loss vs size',
    xlog=True,
  )
  style.ordered_legend(ax, fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  fig.savefig(out_path, dpi=120)
  plt.close(fig)
  return distill_table(rows)


def format_distill_table(table: Sequence[dict]) -> str:
  """A Markdown table of distill_table()'s rows."""
  lines = [
    '| student params | tokens | supervised loss | distilled loss | distilled − supervised '
    '| teacher params | teacher loss |',
    '|---|---|---|---|---|---|---|',
  ]
  for r in table:
    tp = f'{r["teacher_params"]:,.0f}' if np.isfinite(r['teacher_params']) else ''
    lines.append(
      f'| {r["params"]:,.0f} | {r["tokens"]:,.0f} | {r["supervised"]:.3f} | '
      f'{r["distill"]:.3f} | {r["diff"]:+.3f} | {tp} | {r["teacher_loss"]:.3f} |'
    )
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  """The command line (module docstring); argv excludes the program name (None: sys.argv[1:])."""
  cli.parse(FLAGS, argv, __doc__)
  out_dir = FLAGS.out_dir or os.path.dirname(os.path.abspath(FLAGS.results))
  stem = FLAGS.stem or os.path.splitext(os.path.basename(FLAGS.results))[0]
  if FLAGS.distill:
    out_path = os.path.join(out_dir, f'{stem}_distill.png')
    try:
      table = plot_distill_sweep(FLAGS.results, out_path)
    except ValueError as e:
      cli.fail(e)
    print(format_distill_table(table))
    print(out_path)
    return
  if not FLAGS.fit:
    cli.usage_error('--fit is required (or pass --distill)')
  try:
    with open(FLAGS.fit) as f:
      fit = json.load(f)
    cols = fit.get('columns', {})
    runs = results_lib.read_results(
      FLAGS.results,
      params_col=cols.get('params', 'params'),
      tokens_col=cols.get('tokens', 'tokens'),
      loss_col=cols.get('loss', 'loss'),
      flops_col=cols.get('flops', 'flops'),
    )
  except (OSError, ValueError) as e:
    cli.fail(e)
  for path in plot_all(runs, fit, out_dir, stem):
    print(path)


if __name__ == '__main__':
  main()
