"""Hold-out validation of scaling laws: fit on the smaller-compute runs, predict the larger ones.

  python -m scaling.validate --results=W/results.csv --fit_below=1e12 --bootstrap=100 \
      --out=W/holdout.png
  python -m scaling.validate --results=W/results.csv --curves=W/curves.csv --fit_below=1e12 \
      --laws=chinchilla,kaplan,compute,curve --bootstrap=100 --rollout --rollout_out=W/rollout.json

Each law in --laws is fitted on the members with FLOPs <= --fit_below and predicts every member above
it: 'chinchilla' (approach 3, N = --params_col), 'kaplan' (L(N, D), N = --kaplan_params_col when
the CSV has it), 'compute' (L(C) = E + A·C^-alpha on the compute-optimal runs, predicting the
compute-optimal held-out ones; --pin_E fixes E) and 'curve' (L = E + A·N^-alpha + B·S1^-beta - C·S2,
Tissue et al. 2024 with an N term, fitted on every post-warmup evaluation in --curves of the fitted
members, predicting the held-out members' final evaluations). C is --flops_col ('flops': 6·N·D by
the sweep's count; 'flops_attn_head': with attention and the head, Porian et al. 2024;
'flops_chinchilla'). With --bootstrap=K each prediction gets a 95 % interval: by default
(--interval=prediction) the percentile interval of K refits on resampled members widened by the
fit's residual scatter (scaling/holdout.py), with --interval=bootstrap the percentile interval alone.
lr / seed sweeps are collapsed first (best lr per (N, D), mean over seeds; curves keep every seed).
--rollout adds, per law, the fit on the k smallest sizes for each k with the error and coverage of
every larger member against its extrapolation ratio (printed; --rollout_out writes them as JSON).
Before the laws it prints the members flagged as suspect (under --min_steps steps, or a WSD cooldown
under --min_cooldown of the steps; --drop_suspect leaves them out) and the seed noise floor.
Ends with one JSON object {law: [{"name", "params", "tokens", "flops", "observed", "predicted",
"rel_error", "lo", "hi"}, ...]}, one row per held-out run, rel_error = predicted / observed - 1.

  python -m scaling.validate --results=kd_runs.csv --laws=distillation --distill_holdout=teacher

--laws=distillation (alone) reads a distillation CSV (scaling/distill_law.py) and holds out the
largest student, the strongest teacher's students, or the students above --fit_below FLOPs.
"""

import json
from collections.abc import Sequence

import numpy as np
from absl import flags

from scaling import diagnostics, distill_law, holdout
from scaling import fit as fit_lib
from scaling import plot_style as style
from scaling import results as results_lib
from scaling import rollout as rollout_lib
from train import cli

LAWS = holdout.LAWS
DEFAULT_LAWS = ('chinchilla', 'kaplan')
MIN_MEMBERS = {**fit_lib.MIN_ROWS, 'curve': 2}  # fitted members each law needs at least.

FLAGS = flags.FlagValues()  # this module's own: tools importing each other share flag names.
fit_lib.define_results_flags(FLAGS)
flags.DEFINE_float('fit_below', None, 'fit on runs with FLOPs <= this', flag_values=FLAGS)
flags.DEFINE_list(
  'laws',
  list(DEFAULT_LAWS),
  f'laws to validate, any of {",".join(LAWS)}; or distillation alone',
  flag_values=FLAGS,
)
flags.DEFINE_string(
  'curves', '', "curves CSV (a sweep's curves.csv), for --laws=curve", flag_values=FLAGS
)
flags.DEFINE_integer(
  'bootstrap',
  0,
  'resamples of the fit set (0: none; 100+: fewer give too narrow intervals)',
  flag_values=FLAGS,
)
flags.DEFINE_integer('seed', 0, 'bootstrap seed', flag_values=FLAGS)
flags.DEFINE_enum(
  'interval', 'prediction', list(holdout.INTERVALS), 'interval kind (see above)', flag_values=FLAGS
)
flags.DEFINE_string('params_col', 'params', 'N for Chinchilla and the curve law', flag_values=FLAGS)
flags.DEFINE_string(
  'kaplan_params_col',
  'non_embedding_params',
  'N for Kaplan (falls back to --params_col if the CSV lacks it)',
  flag_values=FLAGS,
)
flags.DEFINE_string(
  'flops_col', 'flops', 'C: the FLOPs column (--fit_below, compute law)', flag_values=FLAGS
)
flags.DEFINE_float('pin_E', None, 'compute law: fix E to this loss', flag_values=FLAGS)
flags.DEFINE_bool(
  'rollout', False, 'also fit on the k smallest sizes for each k', flag_values=FLAGS
)
flags.DEFINE_string(
  'rollout_out', '', 'write the rollout (and diagnostics) as JSON here', flag_values=FLAGS
)
flags.DEFINE_list(
  'rollout_score_ks',
  [],
  'score each law by its mean |error| over the rollout fits on these k (default: every k)',
  flag_values=FLAGS,
)
flags.DEFINE_integer(
  'min_steps', diagnostics.MIN_STEPS, 'suspect below this many steps', flag_values=FLAGS
)
flags.DEFINE_float(
  'min_cooldown',
  diagnostics.MIN_COOLDOWN,
  'suspect: WSD cooldown share below this',
  flag_values=FLAGS,
)
flags.DEFINE_bool('drop_suspect', False, 'leave suspect members out', flag_values=FLAGS)
flags.DEFINE_string('lr', 'best', "lr sweeps: 'best' or the transferred lr", flag_values=FLAGS)
flags.DEFINE_string('out', '', 'plot path (png)', flag_values=FLAGS)
flags.DEFINE_string(
  'rollout_png', '', 'with --rollout: plot |error| against extrapolation ratio', flag_values=FLAGS
)
flags.DEFINE_string(
  'curves_png',
  '',
  "with 'curve' in --laws: plot the members' observed and predicted curves",
  flag_values=FLAGS,
)
flags.DEFINE_enum(
  'distill_holdout',
  'student',
  ['student', 'teacher', 'flops'],
  "--laws=distillation: hold out the largest student, the strongest teacher's students, or the "
  'students with 6·N·D above --fit_below',
  flag_values=FLAGS,
)
flags.mark_flags_as_required(['results'], flag_values=FLAGS)


def split(
  pts: holdout.Points, fit_below: float, need: int = fit_lib.MIN_ROWS['chinchilla']
) -> tuple[holdout.Points, holdout.Points]:
  """(fit points, held-out final points): members with FLOPs <= fit_below vs above; ValueError if
  fewer than `need` members are fitted or none is held out."""
  flops = holdout.member_flops(pts)
  below = np.flatnonzero(flops <= fit_below)
  n_below = len(np.unique(holdout.member_ids(pts)[below]))
  if n_below < need:
    raise ValueError(
      f'--fit_below={fit_below:g}: only {n_below} runs to fit (need {need}); FLOPs range '
      f'{flops.min():.3g} .. {flops.max():.3g}'
    )
  if not (flops > fit_below).any():
    raise ValueError(
      f'--fit_below={fit_below:g}: no run above it to predict (largest {flops.max():.3g} FLOPs)'
    )
  held = [i for i in holdout.finals(pts) if flops[i] > fit_below]
  return pts.subset(below), pts.subset(held)


def validate(
  pts: holdout.Points,
  fit_below: float,
  law: str,
  n_boot: int = 0,
  seed: int = 0,
  pin_E: float | None = None,
  interval: str = 'prediction',
) -> tuple[list[dict], tuple[np.ndarray, np.ndarray]]:
  """(rows, fitted): one row per held-out run (see the module docstring; lo / hi are None without
  bootstrap) and (observed, predicted) losses of the fitted points."""
  split(pts, fit_below, MIN_MEMBERS[law])
  opts = holdout.Options(n_boot, seed, pin_E, interval)
  result = holdout.held_out(law, pts, holdout.member_flops(pts) <= fit_below, opts)
  return result.rows, result.fitted


def plot(report: dict, fit_runs: dict, path: str, fit_flops: dict | None = None) -> None:
  """Predicted vs observed loss per law: fitted runs, held-out runs with their intervals (and,
  given each law's largest fitted FLOPs, each held-out run's ratio to it)."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(report), figsize=(4.6 * len(report), 4.2))
  for ax, (law, rows) in zip(np.atleast_1d(axes), report.items()):
    obs = np.array([r['observed'] for r in rows])
    pred = np.array([r['predicted'] for r in rows])
    f_obs, f_pred = fit_runs[law]
    err = None
    if rows[0]['lo'] is not None:
      err = np.array([[p - r['lo'], r['hi'] - p] for p, r in zip(pred, rows)]).T
    held = 'held out (95% interval)' if err is not None else 'held out'
    style.fitted_and_held_out(ax, f_obs, f_pred, obs, pred, err, 'fitted runs', held)
    largest = (fit_flops or {}).get(law)
    for o, p, r in zip(obs, pred, rows):  # how far each held-out point extrapolates.
      if largest:
        ax.annotate(f'{r["flops"] / largest:.3g}x', (o, p), fontsize=6, xytext=(3, -8),
                    textcoords='offset points', color='C3')  # fmt: skip
    span = [min(obs.min(), pred.min(), f_obs.min()), max(obs.max(), pred.max(), f_obs.max())]
    ax.plot(span, span, 'k--', lw=0.8, label='predicted = observed')
    # Axes fit the points; an interval reaching far beyond them (a degenerate refit) is cut.
    pad = 0.15 * (span[1] - span[0])
    ax.set_ylim(span[0] - pad, span[1] + pad)
    cut = [o for o, r in zip(obs, rows) if r['hi'] is not None and r['hi'] > span[1] + pad]
    if cut:
      ax.plot(
        cut,
        [span[1] + 0.9 * pad] * len(cut),
        '^',
        color='C3',
        ms=5,
        label='interval beyond the axis',
      )
    unit = '(nats/byte)'
    style.style_axis(ax, f'observed loss {unit}', f'predicted loss {unit}', law, max_ticks=5)
    style.ordered_legend(ax, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _pyplot():
  """matplotlib's pyplot on the Agg backend (lazy: heavy, and only needed for plots)."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # after use('Agg'): no display needed.

  return plt


def plot_rollout(rolls: dict, path: str) -> None:
  """Per law, each rollout prediction's signed error against its extrapolation ratio (log x),
  its 95 % interval as a bar, and the ±2 % band."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(rolls), figsize=(4.6 * len(rolls), 5.0), sharey=True)
  for ax, (law, out) in zip(np.atleast_1d(axes), rolls.items()):
    ax.axhspan(-2, 2, color='0.9', label='±2 %')
    ax.axhline(0, color='k', lw=0.6)
    ks = sorted({r['k'] for r in out['rows']})
    for j, k in enumerate(ks):
      rows = [r for r in out['rows'] if r['k'] == k]
      x = np.array([r['ratio'] for r in rows])
      y = 100 * np.array([r['rel_error'] for r in rows])
      if rows[0]['lo'] is not None:
        lo = 100 * np.array([r['lo'] / r['observed'] - 1 for r in rows])
        hi = 100 * np.array([r['hi'] / r['observed'] - 1 for r in rows])
        ax.vlines(x, lo, hi, color=f'C{j}', alpha=0.35, lw=1.5)
      ax.plot(x, y, 'o', color=f'C{j}', ms=4, label=f'fit on {k} sizes')
    x_all = [r['ratio'] for r in out['rows']]
    ax.set_xlim(min(x_all) / 1.3, max(x_all) * 1.3)
    style.shade_extrapolated(ax, 1.0, ax.get_xlim()[1], 'extrapolated (> largest fitted)')
    xlabel = 'held-out FLOPs / largest fitted FLOPs'
    style.style_axis(ax, xlabel, None, law, xlog=True, rotate=30)
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f'{v:g}x'))
    style.ordered_legend(ax, fontsize=7, loc='upper center', bbox_to_anchor=(0.5, -0.3), ncol=2)
  np.atleast_1d(axes)[0].set_ylabel('predicted / observed - 1 (%)')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_curves(
  pts: holdout.Points, in_fit: np.ndarray, predict: holdout.Predict, path: str
) -> None:
  """The curve law's fit: every member's evaluations (dots) and the law at them (lines), loss
  against tokens; fitted members faint, held-out ones bold."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7.0, 4.8))
  sizes = np.unique(pts.params)
  pred = predict(pts)
  for name in dict.fromkeys(pts.names):
    idx = np.flatnonzero(np.asarray(pts.names) == name)
    idx = idx[np.argsort(pts.tokens[idx])]
    color = plt.cm.viridis(np.searchsorted(sizes, pts.params[idx[0]]) / max(len(sizes) - 1, 1))
    fitted = bool(in_fit[idx[0]])
    mk = {'marker': '.', 'ms': 3, 'alpha': 0.35} if fitted else {'marker': 'D', 'ms': 2.5}
    ax.plot(pts.tokens[idx], pts.loss[idx], ls='none', color=color, **mk)
    ax.plot(pts.tokens[idx], pred[idx], '-', color=color, lw=0.8 if fitted else 1.6)
  for i, n in enumerate(sizes):
    held = not in_fit[np.flatnonzero(pts.params == n)[0]]
    color = plt.cm.viridis(i / max(len(sizes) - 1, 1))
    ax.plot([], [], '-', color=color, label=f'N {n:.3g}' + (' (held out)' if held else ''))
  title = 'curve law fitted on the faint members (dots: evaluations, diamonds: held out)'
  style.style_axis(ax, 'training tokens (bytes)', 'eval loss (nats/byte)', title, xlog=True)
  ax.title.set_fontsize(9)
  style.ordered_legend(ax, fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _check_flags() -> list:
  """The laws asked for; a usage error (one line, exit 2) for flags that do not go together."""
  laws_asked = [x for x in FLAGS.laws if x]
  if 'distillation' in laws_asked:
    if laws_asked != ['distillation']:
      cli.usage_error('--laws=distillation reads a distillation CSV: validate it alone')
    if FLAGS.distill_holdout == 'flops' and FLAGS.fit_below is None:
      cli.usage_error('--distill_holdout=flops needs --fit_below')
    return laws_asked
  if FLAGS.fit_below is None and not FLAGS.rollout:
    cli.usage_error("--fit_below is required (or --rollout alone: the fit set's own rollout)")
  if not laws_asked or any(x not in LAWS for x in laws_asked):
    cli.usage_error(f'--laws={",".join(FLAGS.laws)}: expected one or more of {",".join(LAWS)}')
  if 'curve' in laws_asked and not FLAGS.curves:
    cli.usage_error("--laws=curve needs --curves=<a sweep's curves.csv>")
  if FLAGS.pin_E is not None and (FLAGS.pin_E <= 0 or 'compute' not in laws_asked):
    cli.usage_error(f'--pin_E={FLAGS.pin_E:g}: a positive loss, for --laws=compute')
  if (FLAGS.rollout_out or FLAGS.rollout_png) and not FLAGS.rollout:
    cli.usage_error('--rollout_out and --rollout_png need --rollout')
  if FLAGS.curves_png and 'curve' not in laws_asked:
    cli.usage_error('--curves_png needs --laws=...,curve')
  return laws_asked


def _points(law: str, header: Sequence[str], drop: set) -> holdout.Points:
  """The law's points: the results CSV with its N and C columns, or the curves CSV ('curve'),
  without the members in drop."""
  col = FLAGS.params_col
  if law == 'kaplan' and FLAGS.kaplan_params_col in header:
    col = FLAGS.kaplan_params_col
  if law == 'curve':
    pts = results_lib.read_curves(
      FLAGS.curves,
      col,
      FLAGS.flops_col,
      lr=FLAGS.lr,
      areas=FLAGS.curve_areas,
      fit_below=FLAGS.fit_below,
    )
  else:
    pts = results_lib.read_results(  # held-out members take the fit set's lr (no leak).
      FLAGS.results,
      params_col=col,
      flops_col=FLAGS.flops_col,
      lr=FLAGS.lr,
      fit_below=FLAGS.fit_below,
    )
  keep = [i for i, n in enumerate(pts.names) if n not in drop]
  return pts if len(keep) == len(pts) else pts.subset(keep)


def _law(law: str, pts: holdout.Points, opts: holdout.Options) -> tuple:
  """(hold-out result, summary line, rollout or None, largest fitted FLOPs) of one law."""
  split(pts, FLAGS.fit_below, MIN_MEMBERS[law])
  flops = holdout.member_flops(pts)
  in_fit = flops <= FLAGS.fit_below
  result = holdout.held_out(law, pts, in_fit, opts)
  rows, largest = result.rows, flops[in_fit].max()
  inside = [r['lo'] <= r['observed'] <= r['hi'] for r in rows if r['lo'] is not None]
  line = (
    f'{law}: fitted on runs up to {largest:.3g} FLOPs; {len(rows)} held-out runs up to '
    f'{max(r["flops"] for r in rows) / largest:.3g}x that; mean |rel error| '
    f'{np.mean([abs(r["rel_error"]) for r in rows]):.2%}'
    + (f'; {sum(inside)}/{len(inside)} observed inside the 95% interval' if inside else '')
  )
  if law == 'curve':  # the held-out members' whole curves, not only their final evaluations.
    held = pts.subset(np.flatnonzero(~in_fit))
    err = np.abs(result.predict(held) / held.loss - 1)
    line += f'; their whole curves: mean |rel error| {err.mean():.2%} over {len(held)} evaluations'
  for r in rows:
    ci = '' if r['lo'] is None else f'  [{r["lo"]:.4f}, {r["hi"]:.4f}]'
    line += (
      f'\n  {r["name"]:<28} {r["flops"]:9.3g} observed {r["observed"]:.4f} predicted '
      f'{r["predicted"]:.4f} ({r["rel_error"]:+.2%}){ci}'
    )
  roll = rollout_lib.rollout(law, pts, opts) if FLAGS.rollout else None
  return result, line, roll, float(largest)


def _diagnostics(suspect: list, floor: dict | None) -> str:
  """The suspect members and the seed noise floor, as text."""
  lines = []
  if suspect:
    how = 'left out' if FLAGS.drop_suspect else 'kept; --drop_suspect leaves them out'
    lines.append(f'suspect members ({how}):')
    lines += [f'  {s["name"]}: {s["reason"]}' for s in suspect]
  if floor is None:
    lines.append('seed noise floor: not measured (no (N, D, lr) with several seeds)')
    return '\n'.join(lines)
  lines.append(
    f'seed noise floor: pooled std {floor["pooled_std"]:.4f} ({floor["pooled_rel_std"]:.2%} of '
    f'the loss) over {len(floor["groups"])} (N, D, lr) with several seeds'
  )
  lines += [
    f'  N {g["params"]}, D {g["tokens"]}, lr {g["lr"]}: std {g["std"]:.4f} ({g["rel_std"]:.2%}) '
    f'over {g["seeds"]} seeds'
    for g in floor['groups']
  ]
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  """The command line (module docstring); argv excludes the program name (None: sys.argv[1:])."""
  cli.parse(FLAGS, argv, __doc__)
  laws_asked = _check_flags()
  if laws_asked == ['distillation']:
    _distillation()
    return
  opts = holdout.Options(FLAGS.bootstrap, FLAGS.seed, FLAGS.pin_E, FLAGS.interval)
  report, fitted, rolls, biggest, lines = {}, {}, {}, {}, []
  try:
    header = results_lib.read_rows(FLAGS.results)[0]
    suspect = diagnostics.suspects(FLAGS.results, FLAGS.min_steps, FLAGS.min_cooldown)
    floor = diagnostics.noise_floor(FLAGS.results, FLAGS.params_col)
    drop = {s['name'] for s in suspect} if FLAGS.drop_suspect else set()
    for law in laws_asked:
      pts = _points(law, header, drop)
      if FLAGS.fit_below is None:  # --rollout alone: no held-out split, the fit set's rollout.
        rolls[law] = rollout_lib.rollout(law, pts, opts)
        continue
      result, line, rolls[law], biggest[law] = _law(law, pts, opts)
      report[law], fitted[law] = result.rows, result.fitted
      lines.append(line)
      if law == 'curve' and FLAGS.curves_png:
        in_fit = holdout.member_flops(pts) <= FLAGS.fit_below
        plot_curves(pts, in_fit, result.predict, FLAGS.curves_png)
  except (OSError, ValueError) as e:
    cli.fail(e)
  print(_diagnostics(suspect, floor))
  print('\n'.join(lines))
  if FLAGS.rollout:
    print('\n'.join(rollout_lib.table(law, rolls[law]) for law in laws_asked))
    ks = {int(k) for k in FLAGS.rollout_score_ks}
    for law in laws_asked:
      errs = [abs(r['rel_error']) for r in rolls[law]['rows'] if not ks or r['k'] in ks]
      errs = [e if np.isfinite(e) else np.inf for e in errs]  # a non-finite prediction failed.
      score = f'{np.mean(errs):.3%} over {len(errs)} predictions' if errs else 'no prediction'
      print(f'rollout score {law}: mean |error| {score} (k in {sorted(ks) or "all"})')
  if FLAGS.rollout_out:
    out = {'laws': rolls, 'suspect': suspect, 'noise_floor': floor, 'interval': FLAGS.interval}
    with open(FLAGS.rollout_out, 'w') as f:
      f.write(json.dumps(out, indent=1) + '\n')
  if FLAGS.out and report:
    plot(report, fitted, FLAGS.out, biggest)
  if FLAGS.rollout_png:
    plot_rollout(rolls, FLAGS.rollout_png)
  print(json.dumps(report), flush=True)


def _distillation() -> None:
  """--laws=distillation: Busbridge et al.'s law fitted without the held-out students, which it
  then predicts (scaling/distill_law.py); the same JSON rows as the other laws."""
  try:
    rows = distill_law.read(FLAGS.results)
    kd = rows.distilled
    hold = {
      'student': kd & (rows.params == rows.params[kd].max()),
      'teacher': kd & (rows.teacher_loss == np.nanmin(rows.teacher_loss)),
      'flops': kd & (6 * rows.params * rows.tokens > (FLAGS.fit_below or np.inf)),
    }[FLAGS.distill_holdout]
    out = distill_law.held_out(rows, hold, fit_lib.fit_chinchilla, FLAGS.bootstrap, FLAGS.seed)
  except (OSError, ValueError) as e:
    cli.fail(e)
  errs = np.abs([r['rel_error'] for r in out])
  covered = sum(r['lo'] is not None and r['lo'] <= r['observed'] <= r['hi'] for r in out)
  print(f'distillation ({FLAGS.distill_holdout} held out): {len(out)} students, mean |err| '
        f'{100 * errs.mean():.2f} %, max {100 * errs.max():.2f} %, covered {covered}/{len(out)}')  # fmt: skip
  print(json.dumps({'distillation': out}), flush=True)


if __name__ == '__main__':
  main()
