"""Hold-out validation of scaling laws: fit on the smaller-compute runs, predict the larger ones.

  python -m scaling.validate --results=W/results.csv --fit_below=1e12 --bootstrap=100 \
      --out=W/holdout.png

Each law that predicts a run's loss from (N, D) is fitted on the runs with FLOPs <= --fit_below and
predicts every run above it: Chinchilla's parametric law (approach 3, total params) and Kaplan's
L(N, D) (non-embedding params when the CSV has them). With --bootstrap=K the fit set is resampled K
times and each held-out prediction gets the 2.5 / 97.5 percentile interval of its refits. lr / seed
sweeps are collapsed first (scaling.results.select_lr: best lr per (N, D), mean over seeds).
Prints a table and ends with one JSON object {law: [{"name", "params", "tokens", "flops",
"observed", "predicted", "rel_error", "lo", "hi"}, ...]}, one row per held-out run, rel_error =
predicted / observed - 1.
"""

import csv
import json
from collections.abc import Sequence

import numpy as np
from absl import flags

from scaling import cli, laws
from scaling import fit as fit_lib
from scaling import results as results_lib

LAWS = ('chinchilla', 'kaplan')

FLAGS = flags.FlagValues()  # this module's own: tools importing each other share flag names.
flags.DEFINE_string('results', None, 'results CSV, one run per row', flag_values=FLAGS)
flags.DEFINE_float('fit_below', None, 'fit on runs with FLOPs <= this', flag_values=FLAGS)
flags.DEFINE_list(
  'laws', list(LAWS), f'laws to validate, any of {",".join(LAWS)}', flag_values=FLAGS
)
flags.DEFINE_integer('bootstrap', 0, 'resamples of the fit set (0: none)', flag_values=FLAGS)
flags.DEFINE_integer('seed', 0, 'bootstrap seed', flag_values=FLAGS)
flags.DEFINE_string('params_col', 'params', 'N for Chinchilla', flag_values=FLAGS)
flags.DEFINE_string(
  'kaplan_params_col',
  'non_embedding_params',
  'N for Kaplan (falls back to --params_col if the CSV lacks it)',
  flag_values=FLAGS,
)
flags.DEFINE_string('lr', 'best', "lr sweeps: 'best' or the transferred lr", flag_values=FLAGS)
flags.DEFINE_string('out', '', 'plot path (png)', flag_values=FLAGS)
flags.mark_flags_as_required(['results', 'fit_below'], flag_values=FLAGS)


def _fit(law: str, runs: results_lib.Runs, starts: Sequence | None = None, n_polish: int = 16):
  """(predict(N, D) -> loss, starts for refits) of `law` fitted on `runs`."""
  if law == 'chinchilla':
    out = fit_lib.fit_chinchilla(runs, n_polish=n_polish, starts=starts)
    c = out['constants']
    fitted = laws.Chinchilla(E=c['E'], A=c['A'], B=c['B'], alpha=c['alpha'], beta=c['beta'])
    return (lambda n, d: laws.chinchilla_loss(fitted, n, d)), out['theta']
  if law == 'kaplan':
    fitted = fit_lib.fit_kaplan_joint(runs.params, runs.tokens, runs.loss)
    return (lambda n, d: laws.kaplan_loss_joint(fitted, n, d)), None
  raise ValueError(f'unknown law {law!r}: expected one of {LAWS}')


def split(runs: results_lib.Runs, fit_below: float) -> tuple[results_lib.Runs, results_lib.Runs]:
  """(fit runs, held-out runs): FLOPs <= fit_below vs above; ValueError if either is too small."""
  below = np.flatnonzero(runs.flops <= fit_below)
  above = np.flatnonzero(runs.flops > fit_below)
  if len(below) < fit_lib.MIN_ROWS['chinchilla']:
    raise ValueError(
      f'--fit_below={fit_below:g}: only {len(below)} runs to fit (need '
      f'{fit_lib.MIN_ROWS["chinchilla"]}); FLOPs range {runs.flops.min():.3g} .. '
      f'{runs.flops.max():.3g}'
    )
  if not len(above):
    raise ValueError(
      f'--fit_below={fit_below:g}: no run above it to predict (largest '
      f'{runs.flops.max():.3g} FLOPs)'
    )
  return runs.subset(below), runs.subset(above)


def validate(
  runs: results_lib.Runs, fit_below: float, law: str, n_boot: int = 0, seed: int = 0
) -> tuple[list[dict], tuple[np.ndarray, np.ndarray]]:
  """(rows, fitted): one row per held-out run (see the module docstring; lo / hi are None without
  bootstrap) and (observed, predicted) losses of the fitted runs."""
  fit_runs, held = split(runs, fit_below)
  predict, starts = _fit(law, fit_runs)
  pred = predict(held.params, held.tokens)
  fitted = (fit_runs.loss, predict(fit_runs.params, fit_runs.tokens))
  lo = hi = [None] * len(held)
  if n_boot:
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_boot):
      idx = rng.choice(len(fit_runs), size=len(fit_runs), replace=True)
      try:
        p, _ = _fit(law, fit_runs.subset(idx), starts=starts, n_polish=2)
      except ValueError:
        continue
      sample = p(held.params, held.tokens)
      if np.all(np.isfinite(sample)):  # a degenerate refit (e.g. NaN) counts as failed.
        samples.append(sample)
    if len(samples) < n_boot // 2:
      raise ValueError(f'bootstrap: only {len(samples)} of {n_boot} resamples could be fitted')
    lo, hi = np.percentile(np.array(samples), [2.5, 97.5], axis=0)
  return [
    {
      'name': held.names[i],
      'params': float(held.params[i]),
      'tokens': float(held.tokens[i]),
      'flops': float(held.flops[i]),
      'observed': float(held.loss[i]),
      'predicted': float(pred[i]),
      'rel_error': float(pred[i] / held.loss[i] - 1.0),
      'lo': None if lo[i] is None else float(lo[i]),
      'hi': None if hi[i] is None else float(hi[i]),
    }
    for i in range(len(held))
  ], fitted


def plot(report: dict, fit_runs: dict, path: str) -> None:
  """Predicted vs observed loss per law: fitted runs, held-out runs with their intervals."""
  # Lazy: matplotlib is heavy and only needed with --out.
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # after use('Agg'): no display needed.

  fig, axes = plt.subplots(1, len(report), figsize=(4.6 * len(report), 4.2))
  for ax, (law, rows) in zip(np.atleast_1d(axes), report.items()):
    obs = np.array([r['observed'] for r in rows])
    pred = np.array([r['predicted'] for r in rows])
    f_obs, f_pred = fit_runs[law]
    ax.scatter(f_obs, f_pred, s=12, color='0.6', label='fitted runs')
    if rows[0]['lo'] is not None:
      err = np.array([[p - r['lo'], r['hi'] - p] for p, r in zip(pred, rows)]).T
      ax.errorbar(obs, pred, yerr=err, fmt='o', color='C3', ms=4, label='held out (95% CI)')
    else:
      ax.scatter(obs, pred, color='C3', s=16, label='held out')
    span = [min(obs.min(), pred.min(), f_obs.min()), max(obs.max(), pred.max(), f_obs.max())]
    ax.plot(span, span, 'k--', lw=0.8)
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
    ax.set_xlabel('observed loss')
    ax.set_ylabel('predicted loss')
    ax.set_title(law)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
  """The command line (module docstring); argv excludes the program name (None: sys.argv[1:])."""
  cli.parse(FLAGS, argv, __doc__)
  laws_asked = [x for x in FLAGS.laws if x]
  if not laws_asked or any(x not in LAWS for x in laws_asked):
    cli.usage_error(f'--laws={",".join(FLAGS.laws)}: expected one or more of {",".join(LAWS)}')
  report, fitted = {}, {}
  try:
    with open(FLAGS.results, newline='', encoding='utf-8-sig') as f:
      header = [h.strip() for h in next(csv.reader(f), [])]
    for law in laws_asked:
      col = FLAGS.params_col
      if law == 'kaplan' and FLAGS.kaplan_params_col in header:
        col = FLAGS.kaplan_params_col
      runs = results_lib.read_results(FLAGS.results, params_col=col, lr=FLAGS.lr)
      report[law], fitted[law] = validate(runs, FLAGS.fit_below, law, FLAGS.bootstrap, FLAGS.seed)
      largest = runs.flops[runs.flops <= FLAGS.fit_below].max()
  except (OSError, ValueError) as e:
    cli.fail(e)
  for law, rows in report.items():
    inside = [r['lo'] <= r['observed'] <= r['hi'] for r in rows if r['lo'] is not None]
    print(
      f'{law}: fitted on runs up to {largest:.3g} FLOPs; {len(rows)} held-out runs up to '
      f'{max(r["flops"] for r in rows) / largest:.3g}x that; mean |rel error| '
      f'{np.mean([abs(r["rel_error"]) for r in rows]):.2%}'
      + (f'; {sum(inside)}/{len(inside)} observed inside the 95% interval' if inside else '')
    )
    for r in rows:
      ci = '' if r['lo'] is None else f'  [{r["lo"]:.4f}, {r["hi"]:.4f}]'
      print(
        f'  {r["name"]:<28} {r["flops"]:9.3g} observed {r["observed"]:.4f} predicted '
        f'{r["predicted"]:.4f} ({r["rel_error"]:+.2%}){ci}'
      )
  if FLAGS.out:
    plot(report, fitted, FLAGS.out)
  print(json.dumps(report), flush=True)


if __name__ == '__main__':
  main()
