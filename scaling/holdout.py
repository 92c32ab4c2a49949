"""Hold-out predictions of one law: fitted on some members, it predicts the final loss of the others,
with intervals that include the law's lack of fit (scaling.validate and scaling.rollout use it).

Laws: 'chinchilla' (approach 3, L(N, D)), 'kaplan' (L(N, D)), 'interaction' and 'farseer' (L(N, D)
with a size-dependent data exponent, scaling/laws.py), 'compute' (L(C) fitted on the
compute-optimal runs and checked on the compute-optimal held-out ones), 'curve' (scaling.laws.Curve
fitted on every evaluation of the fitted members; its points are a results.Curves and a member's
final evaluation is what it predicts).

Intervals ('prediction'): the percentile interval of refits on the fitted members resampled with
replacement (a whole curve at a time for 'curve': its evaluations are not independent), each side
widened in quadrature by t·s, s the root-mean-square log residual of the fitted members' final
points over n - k degrees of freedom (k: the constants only the members' spread fixes, all of them
but the curve law's B, beta, C, which each curve's shape fixes) and t Student's quantile there.
The variance of a new loss about its prediction is the prediction's own (the bootstrap) plus the
scatter of members about the law, seed noise and lack of fit together, which the bootstrap alone
leaves out; with no degrees of freedom left there is no interval. 'bootstrap': the percentile
interval alone. Refits from fewer than ~100 resamples make the percentile interval too narrow.
"""

import dataclasses
from collections.abc import Callable

import numpy as np
from scipy import stats

from scaling import checks, laws
from scaling import fit as fit_lib
from scaling import results as results_lib

LAWS = ('chinchilla', 'kaplan', 'compute', 'curve', 'interaction', 'farseer')
INTERVALS = ('prediction', 'bootstrap')
MEMBER_CONSTANTS = {  # k above.
  'chinchilla': 5, 'kaplan': 4, 'compute': 3, 'curve': 3, 'interaction': 6, 'farseer': 9,
}  # fmt: skip
Points = results_lib.Runs  # or results_lib.Curves (law 'curve').
Predict = Callable[[Points], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Options:
  """How predictions are made: bootstrap refits, seed, pinned E (compute law), interval kind."""

  n_boot: int = 0
  seed: int = 0
  pin_E: float | None = None
  interval: str = 'prediction'
  level: float = 0.95


@dataclasses.dataclass
class Result:
  """One hold-out: output rows (scaling.validate's format), the fitted points' (observed,
  predicted) losses, the fitted law's predict function and the bootstrap's own (lo, hi)."""

  rows: list
  fitted: tuple
  predict: Predict
  boot: tuple | None = None


def fit_law(
  law: str, pts: Points, starts: list | None = None, quick: bool = False, pin_E: float | None = None
) -> tuple[Predict, list | None]:
  """(predict(points) -> loss, theta to start refits from) of `law` fitted on `pts`; `quick`
  (bootstrap refits) polishes fewer starts: for compute / curve only `starts` when given."""
  n_best = 0 if quick and starts is not None else 3
  if law == 'chinchilla':
    out = fit_lib.fit_chinchilla(pts, n_polish=2 if quick else 16, starts=starts)
    c = out['constants']
    f = laws.Chinchilla(E=c['E'], A=c['A'], B=c['B'], alpha=c['alpha'], beta=c['beta'])
    return (lambda r: laws.chinchilla_loss(f, r.params, r.tokens)), out['theta']
  if law == 'kaplan':
    k = fit_lib.fit_kaplan_joint(pts.params, pts.tokens, pts.loss)
    return (lambda r: laws.kaplan_loss_joint(k, r.params, r.tokens)), None
  if law == 'compute':
    out = fit_lib.fit_compute(pts, pin_E, starts, n_best)
    cl = laws.Compute(**out['constants'])
    return (lambda r: laws.compute_loss(cl, r.flops)), out['theta']
  if law == 'interaction':
    out = fit_lib.fit_interaction(pts, [starts] if quick and starts is not None else None)
    f = laws.Interaction(**out['constants'])
    return (lambda r: laws.interaction_loss(f, r.params, r.tokens)), out['theta']
  if law == 'farseer':
    out = fit_lib.fit_farseer(pts, [starts] if quick and starts is not None else None)
    fs = laws.Farseer(**out['constants'])
    return (lambda r: laws.farseer_loss(fs, r.params, r.tokens)), out['theta']
  if law == 'curve':
    out = fit_lib.fit_curve(pts, starts, n_best)
    cv = laws.Curve(**out['constants'])
    return (lambda r: laws.curve_loss(cv, r.params, r.lr_sum, r.lr_anneal)), out['theta']
  raise ValueError(f'unknown law {law!r}: expected one of {", ".join(LAWS)}')


def member_ids(pts: Points) -> np.ndarray:
  """Each point's member number: by name for curves, one member per row otherwise."""
  if isinstance(pts, results_lib.Curves):
    return np.unique(pts.names, return_inverse=True)[1]
  return np.arange(len(pts))


def finals(pts: Points) -> np.ndarray:
  """Indices of each member's final point (every row of a results CSV)."""
  if isinstance(pts, results_lib.Curves):
    return np.sort(np.array(list(results_lib.final_rows(pts).values()), int))
  return np.arange(len(pts))


def member_flops(pts: Points) -> np.ndarray:
  """Per point, its member's final FLOPs."""
  ids = member_ids(pts)
  last = np.zeros(ids.max() + 1 if len(ids) else 0)
  np.maximum.at(last, ids, pts.flops)
  return last[ids]


def fit_and_held(law: str, pts: Points, in_fit: np.ndarray) -> tuple[Points, Points]:
  """(points to fit, final points to predict) for a per-point mask of the fitted members; the
  compute law keeps the compute-optimal runs on both sides."""
  fit_pts = pts.subset(np.flatnonzero(in_fit))
  held = [i for i in finals(pts) if not in_fit[i]]
  if law == 'compute':
    fit_pts = fit_pts.subset(fit_lib.compute_optimal(fit_pts))
    optimal = set(fit_lib.compute_optimal(pts).tolist())
    held = [i for i in held if i in optimal]
  need = fit_lib.MIN_ROWS[law]
  if len(fit_pts) < need:
    raise ValueError(f'{law}: {len(fit_pts)} points to fit, need at least {need}')
  if not held:
    raise ValueError(f'{law}: no held-out run to predict')
  return fit_pts, pts.subset(held)


def _bootstrap(
  law: str, fit_pts: Points, held: Points, starts: list | None, opts: Options
) -> tuple[np.ndarray, np.ndarray]:
  """Percentile interval of the held-out predictions over refits on resampled members (a resample
  the law cannot be fitted to, e.g. the curve law on fewer than 3 sizes, is skipped)."""
  rng = np.random.default_rng(opts.seed)
  ids = member_ids(fit_pts)
  groups = [np.flatnonzero(ids == g) for g in range(ids.max() + 1)]
  samples = []
  for _ in range(opts.n_boot):
    pick = rng.choice(len(groups), size=len(groups), replace=True)
    idx = np.concatenate([groups[g] for g in pick])
    try:
      p, _ = fit_law(law, fit_pts.subset(idx), starts, quick=True, pin_E=opts.pin_E)
    except ValueError:
      continue
    with np.errstate(all='ignore'):  # a degenerate refit may overflow.
      sample = p(held)
    if np.all(np.isfinite(sample)):  # a degenerate refit (e.g. NaN) counts as failed.
      samples.append(sample)
  if len(samples) < opts.n_boot // 2:
    raise ValueError(f'bootstrap: only {len(samples)} of {opts.n_boot} resamples could be fitted')
  tail = 50 * (1 - opts.level)
  lo, hi = np.percentile(np.array(samples), [tail, 100 - tail], axis=0)
  return lo, hi


def scatter(law: str, fit_pts: Points, fitted: tuple, opts: Options) -> float:
  """t·s: Student's quantile times the RMS log residual of the fitted members' final points over
  their degrees of freedom (module docstring); ValueError when none are left."""
  n_const = MEMBER_CONSTANTS[law] - (law == 'compute' and opts.pin_E is not None)
  last = finals(fit_pts)  # one point per member (seeds count apart).
  resid = np.log(fitted[0][last]) - np.log(fitted[1][last])
  dof = len(resid) - n_const
  if dof < 1:
    raise ValueError(
      f'{law}: {len(resid)} fitted members, {n_const} constants fixed by them: no degrees of '
      'freedom left to measure their scatter about the law (fit more, or --interval=bootstrap)'
    )
  return float(stats.t.ppf(0.5 + opts.level / 2, dof) * np.sqrt(np.sum(resid**2) / dof))


def _rows(held: Points, pred: np.ndarray, lo: np.ndarray | None, hi: np.ndarray | None) -> list:
  return [
    {
      'name': held.names[i],
      'params': float(held.params[i]),
      'tokens': float(held.tokens[i]),
      'flops': float(held.flops[i]),
      'observed': float(held.loss[i]),
      'predicted': float(pred[i]),
      'rel_error': float(pred[i] / held.loss[i] - 1.0),
      'lo': None if lo is None else float(lo[i]),
      'hi': None if hi is None else float(hi[i]),
    }
    for i in range(len(held))
  ]


def held_out(law: str, pts: Points, in_fit: np.ndarray, opts: Options | None = None) -> Result:
  """`law` fitted on the members where in_fit (per point) predicts the others' final losses."""
  opts = opts or Options()
  fit_pts, held = fit_and_held(law, pts, in_fit)
  predict, starts = fit_law(law, fit_pts, pin_E=opts.pin_E)
  pred, fitted = predict(held), (fit_pts.loss, predict(fit_pts))
  lo = hi = boot = None
  if opts.n_boot:
    ts = scatter(law, fit_pts, fitted, opts) if opts.interval == 'prediction' else None
    lo, hi = boot = _bootstrap(law, fit_pts, held, starts, opts)
    if ts is not None:
      lo, hi = checks.widen(pred, lo, hi, ts)
  return Result(_rows(held, pred, lo, hi), fitted, predict, boot)
