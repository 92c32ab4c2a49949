"""Learning-rate transfer across width, from width sweeps with an lr axis (configs/sweeps/mup_transfer.py).

  python -m scaling.transfer --results=W/sp/results.csv,W/mup/results.csv,W/umup/results.csv \
      --out=docs/mup/transfer.png

For each parametrization (the `parametrization` column) and width (`d_model`): the final eval loss
of every peak lr, averaged over seeds; the optimal lr (lowest mean loss); how far that optimum moves
across the widths, in grid steps (max - min of its index in the sorted lr grid); and the loss at
the optimum. A member missing from results.csv (diverged, or not run) counts as no loss. Writes one
plot panel per parametrization (loss vs lr, a curve per width, seed range as a band) and ends
with one JSON object {parametrization: {"optimal_lr": {width: lr}, "shift_grid_steps": k,
"at_grid_edge": [widths], "loss_at_optimum": {width: loss}, "seeds": n}}.
"""

import collections
import json
import math
import os
from collections.abc import Sequence

import numpy as np
from absl import flags

from scaling import plot_style as style
from scaling import results
from train import cli

FLAGS = flags.FlagValues()  # this module's own: tools importing each other share flag names.
flags.DEFINE_list('results', None, 'comma-separated results.csv paths', flag_values=FLAGS)
flags.DEFINE_string('out', '', 'plot path (png); none if empty', flag_values=FLAGS)
flags.DEFINE_list(
  'labels',
  [],
  'one group label per results path (e.g. the setting of a base-width search; a label given '
  'twice pools those files, e.g. two seeds); default: the parametrization column',
  flag_values=FLAGS,
)
flags.DEFINE_enum(
  'axis',
  'd_model',
  ['d_model', 'n_layers'],
  'what the sweep varies: width (d_model) or depth (n_layers)',
  flag_values=FLAGS,
)
flags.DEFINE_string(
  'group_name',
  'setting',
  'what a --labels group is, with its unit (e.g. "training steps"): the legend title of a one-width plot',
  flag_values=FLAGS,
)
flags.DEFINE_string(
  'curves_out',
  '',
  "plot path (png) for the eval-loss curves of each width's optimum, read from the curves.csv "
  'beside each results.csv; none if empty',
  flag_values=FLAGS,
)
flags.mark_flag_as_required('results', flag_values=FLAGS)


def _rows(paths: Sequence[str], labels: Sequence[str], axis: str) -> list:
  """(group, results path, row) of every finite-loss row of the results CSVs."""
  if labels and len(labels) != len(paths):
    raise ValueError(f'--labels: {len(labels)} labels for {len(paths)} results paths')
  out = []
  for i, path in enumerate(paths):
    rows = results.read_dicts(path)
    for col in (axis, 'lr', 'loss'):
      if rows and col not in rows[0]:
        raise ValueError(f'{path}: missing column {col!r} (a width sweep with an lr axis?)')
    for r in rows:
      if math.isfinite(float(r['loss'])):
        out.append((labels[i] if labels else r.get('parametrization') or 'sp', path, r))
  return out


def read(paths: Sequence[str], labels: Sequence[str] = (), axis: str = 'd_model') -> dict:
  """{group: {(width, lr): [losses over seeds]}} from one or more results CSVs; the group is the
  path's label when `labels` are given (one per path), else the parametrization column. `axis`:
  the column that plays width ('n_layers' for a depth sweep)."""
  out = collections.defaultdict(lambda: collections.defaultdict(list))
  for group, _, r in _rows(paths, labels, axis):
    out[group][(int(r[axis]), float(r['lr']))].append(float(r['loss']))
  return out


def optimum_curves(
  paths: Sequence[str], labels: Sequence[str], summary: dict, axis: str = 'd_model'
) -> dict:
  """{group: {width: [(tokens, loss) arrays per seed]}}: the eval curves (curves.csv beside each
  results.csv, or X_curves.csv beside X.csv as committed under docs/) of the members at each
  width's optimal lr."""
  out = collections.defaultdict(lambda: collections.defaultdict(list))
  by_dir = collections.defaultdict(dict)
  for group, path, r in _rows(paths, labels, axis):
    w = int(r[axis])
    if float(r['lr']) == summary[group]['optimal_lr'].get(w):
      sibling = os.path.splitext(path)[0] + '_curves.csv'
      beside = (
        sibling if os.path.exists(sibling) else os.path.join(os.path.dirname(path), 'curves.csv')
      )
      by_dir[beside][r['name']] = (group, w)
  for curves_path, names in by_dir.items():
    rows = [r for r in results.read_dicts(curves_path) if r['name'] in names]
    for name, (group, w) in names.items():
      pts = sorted((float(r['tokens']), float(r['loss'])) for r in rows if r['name'] == name)
      out[group][w].append(np.array(pts))
  return out


def _width_colors(widths: set, plt: object) -> dict:
  """One color per width, the same in every panel."""
  ws = sorted(widths)
  return dict(zip(ws, plt.cm.viridis(np.linspace(0, 0.9, len(ws)))))


def plot_curves(curves: dict, path: str, axis: str = 'd_model') -> None:
  """One panel per group: eval loss vs tokens of each width's optimum (a line per seed)."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # after use('Agg'): no display needed.

  names = list(curves)
  color = _width_colors({w for c in curves.values() for w in c}, plt)
  fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.8), sharey=True)
  for ax, g in zip(np.atleast_1d(axes), names):
    for w in sorted(curves[g]):
      for i, pts in enumerate(curves[g][w]):
        ax.plot(pts[:, 0], pts[:, 1], color=color[w], label=f'{axis} {w}' if i == 0 else None)
    ax.legend(fontsize=8)
    ax.set_xscale('log')
    ax.set_title(f'{g}: the optimum per {axis}')
    ax.set_xlabel('tokens')
    ax.grid(alpha=0.3)
  np.atleast_1d(axes)[0].set_ylabel('eval loss (nats/byte)')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def summarize(curves: dict) -> dict:
  """The module docstring's summary for one parametrization's {(width, lr): losses}."""
  widths = sorted({w for w, _ in curves})
  lrs = sorted({lr for _, lr in curves})
  best, loss_at, edge = {}, {}, []
  for w in widths:
    mean = {lr: float(np.mean(curves[(w, lr)])) for lr in lrs if curves.get((w, lr))}
    lr = min(mean, key=mean.get)
    best[w], loss_at[w] = lr, round(mean[lr], 4)
    if lr in (lrs[0], lrs[-1]):
      edge.append(w)
  idx = [lrs.index(best[w]) for w in widths]
  return {
    'optimal_lr': best,
    'shift_grid_steps': max(idx) - min(idx),
    'at_grid_edge': edge,
    'loss_at_optimum': loss_at,
    'lr_grid': lrs,
    'seeds': max(len(v) for v in curves.values()),
  }


def plot(data: dict, path: str, axis: str = 'd_model', group_name: str = 'setting') -> None:
  """One panel per parametrization: mean loss vs lr per width, seed range as a band, optimum starred."""
  # Lazy: matplotlib is heavy and only needed with --out.
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # after use('Agg'): no display needed.

  names = list(data)
  if all(len({w for w, _ in c}) == 1 for c in data.values()):  # one width each: one panel.
    return _plot_groups(data, path, plt, group_name)
  colors = _width_colors({w for c in data.values() for w, _ in c}, plt)
  fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.8), sharey=True)
  for ax, p in zip(np.atleast_1d(axes), names):
    curves = data[p]
    for w in sorted({w for w, _ in curves}):
      color = colors[w]
      lrs = sorted(lr for ww, lr in curves if ww == w)
      mean = np.array([np.mean(curves[(w, lr)]) for lr in lrs])
      lo = np.array([np.min(curves[(w, lr)]) for lr in lrs])
      hi = np.array([np.max(curves[(w, lr)]) for lr in lrs])
      ax.plot(lrs, mean, marker='o', ms=3, color=color, label=f'{axis} {w}')
      ax.fill_between(lrs, lo, hi, color=color, alpha=0.2)
      i = int(np.argmin(mean))
      ax.plot([lrs[i]], [mean[i]], marker='*', ms=12, color=color, mec='k')
    ax.set_xscale('log', base=2)
    ax.set_title(p)
    ax.set_xlabel('peak learning rate')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  ax0 = np.atleast_1d(axes)[0]
  ax0.set_ylabel('final eval loss (nats/byte)')
  lo = min(min(np.mean(v) for v in c.values()) for c in data.values())
  ax0.set_ylim(lo - 0.05, lo + 1.0)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _plot_groups(data: dict, path: str, plt: object, group_name: str = 'setting') -> None:
  """Loss vs lr at one width, a curve per group (a base-width search's settings), seed range banded.

  Over 6 groups, only the 4 with the lowest optimum and 'default' keep a color and a legend entry;
  the rest are thin grey lines under one entry. The legend lists groups by their optimum.
  """
  fig, ax = plt.subplots(figsize=(7.5, 4.6))
  optimum = {g: min(np.mean(v) for v in c.values()) for g, c in data.items()}
  ranked = sorted(data, key=optimum.get)
  shown = ranked if len(data) <= 6 else [g for g in ranked if g in ranked[:4] or g == 'default']
  colors = dict(zip(shown, plt.cm.tab10(np.arange(len(shown)))))
  widths = sorted({w for c in data.values() for w, _ in c})
  for name in ranked[::-1]:  # the best drawn last, on top.
    curves = data[name]
    lrs = sorted(lr for _, lr in curves)
    losses = [curves[(w, lr)] for lr in lrs for w in {w for w, _ in curves}]
    mean = np.array([np.mean(x) for x in losses])
    if name not in colors:
      ax.plot(
        lrs, mean, color='0.75', lw=0.8, label=f'other {group_name}s ({len(data) - len(shown)})'
      )
      continue
    label = f'{name} (best {optimum[name]:.3f})'
    ax.plot(
      lrs,
      mean,
      marker='o',
      ms=3,
      color=colors[name],
      label=label,
      lw=2 if name == 'default' else 1.3,
    )
    ax.fill_between(
      lrs, [min(x) for x in losses], [max(x) for x in losses], color=colors[name], alpha=0.15
    )
  best = list(optimum.values())
  ax.set_ylim(
    min(best) - 0.05, max(min(best) + 0.6, max(best) + 0.4)
  )  # every group's optimum shows.
  title = f'Final loss vs peak lr, a curve per {group_name}'
  title += f' (d_model {widths[0]})' if len(widths) == 1 else ''
  style.style_axis(ax, 'peak learning rate', 'final eval loss (nats/byte)', title)
  ax.set_xscale('log', base=2)
  key = {f'{g} (best {optimum[g]:.3f})': optimum[g] for g in shown}
  style.ordered_legend(ax, 'value', key=lambda n: key.get(n, np.inf), title=group_name, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
  """The command line (module docstring); argv excludes the program name (None: sys.argv[1:])."""
  cli.parse(FLAGS, argv, __doc__)
  try:
    paths, labels = [x for x in FLAGS.results if x], [x for x in FLAGS.labels if x]
    data = read(paths, labels, FLAGS.axis)
  except (OSError, ValueError) as e:
    cli.fail(e)
  if not data:
    cli.fail(f'no finished members in {",".join(FLAGS.results)}')
  summary = {name: summarize(curves) for name, curves in data.items()}
  for name, s in summary.items():
    print(
      f'{name}: optimum moves {s["shift_grid_steps"]} grid step(s) across widths '
      f'({s["seeds"]} seed(s); grid {s["lr_grid"][0]:.3g} .. {s["lr_grid"][-1]:.3g}, x2)'
    )
    for w, lr in s['optimal_lr'].items():
      edge = '  (grid edge)' if w in s['at_grid_edge'] else ''
      print(f'  {FLAGS.axis} {w:>5}: best lr {lr:.3g}, loss {s["loss_at_optimum"][w]:.4f}{edge}')
  if FLAGS.out:
    plot(data, FLAGS.out, FLAGS.axis, FLAGS.group_name)
  if FLAGS.curves_out:
    try:
      plot_curves(optimum_curves(paths, labels, summary, FLAGS.axis), FLAGS.curves_out, FLAGS.axis)
    except (OSError, KeyError) as e:
      cli.fail(f'--curves_out: no curves.csv rows for the optima ({e})')
  print(
    json.dumps(
      {
        k: {
          **v,
          'optimal_lr': {str(w): lr for w, lr in v['optimal_lr'].items()},
          'loss_at_optimum': {str(w): x for w, x in v['loss_at_optimum'].items()},
        }
        for k, v in summary.items()
      }
    ),
    flush=True,
  )


if __name__ == '__main__':
  main()
