"""Fits scaling laws to a results CSV: Chinchilla approaches 1, 2 and 3, Kaplan L(N) and L(N, D), with bootstrap.

Approach 3 follows Hoffmann et al. 2022 (arXiv 2203.15556, sec. 3.3 / appendix D.2) with the SUM of
Huber terms as Besiroglu et al. 2024 (arXiv 2404.10102) show is needed; approach 2 is the paper's
IsoFLOP-profile method (sec. 3.2); approach 1 (sec. 3.1) takes the lower envelope of loss-vs-FLOPs
curves (a sweep's curves.csv); the Kaplan forms are eqs. 1.1 and 1.5 of arXiv 2001.08361. The
compute-only law L(C) and the whole-curve law L(N, S1, S2) (scaling/laws.py) are fitted with the same
summed Huber loss on log L (fit_compute, fit_curve; scaling.validate uses them).

  python -m scaling.fit --results=runs.csv --law=chinchilla --bootstrap=200 --out=fit.json
  python -m scaling.fit --results=runs.csv --law=compute --pin_E=1.2 --flops_col=flops_attn_head
  python -m scaling.fit --results=W/curves.csv --law=curve      # every evaluation, not the finals
  python -m scaling.fit --results=kd_runs.csv --law=distillation --bootstrap=50  # scaling/distill_law.py
"""

import itertools
import json
import os
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from absl import flags

# L-BFGS-B on 5 parameters makes many tiny BLAS calls; with OpenBLAS threads on a busy machine each
# costs ~1 ms (10-20x slower fits). Takes effect only if set before scipy loads its OpenBLAS; an
# explicit user setting wins.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
from scipy import optimize  # after OPENBLAS_NUM_THREADS is set (above).

from scaling import checks, distill_law, laws
from scaling import results as results_lib
from train import cli

HUBER_DELTA = 1e-3
# The paper's grid of starts for (a, b, e, alpha, beta): 6 * 6 * 5 * 5 * 5 = 4500 points.
START_GRID = {
  'a': np.arange(0, 26, 5.0),
  'b': np.arange(0, 26, 5.0),
  'e': np.arange(-1, 1.01, 0.5),
  'alpha': np.arange(0, 2.01, 0.5),
  'beta': np.arange(0, 2.01, 0.5),
}
MIN_ROWS = {
  'chinchilla': 5, 'isoflop': 6, 'kaplan': 4, 'envelope': 4, 'compute': 3, 'curve': 7,
  'interaction': 7, 'farseer': 11,
}  # fmt: skip


def define_results_flags(flag_values: flags.FlagValues) -> None:
  """--results (the CSV) and --curve_areas, which scaling.fit and scaling.validate both take."""
  flags.DEFINE_string('results', None, 'results CSV, one run per row', flag_values=flag_values)
  flags.DEFINE_enum(
    'curve_areas',
    'tokens',
    ['tokens', 'steps'],
    "curve law: the lr areas S1, S2 per million tokens ('tokens': batches may differ) or per step",
    flag_values=flag_values,
  )


FLAGS = flags.FlagValues()  # this module's own: tools importing each other share flag names.
define_results_flags(FLAGS)
flags.DEFINE_enum(
  'law',
  'chinchilla',
  [
    'chinchilla',
    'isoflop',
    'kaplan',
    'envelope',
    'compute',
    'curve',
    'interaction',
    'farseer',
    'distillation',
  ],
  "'envelope' (approach 1) and 'curve' read a loss-curves CSV (a sweep's curves.csv); 'compute' "
  "fits the compute-optimal runs; 'distillation' a distillation CSV (scaling/distill_law.py)",
  flag_values=FLAGS,
)
flags.DEFINE_integer('bootstrap', 0, 'number of bootstrap resamples (0: none)', flag_values=FLAGS)
flags.DEFINE_integer('seed', 0, 'bootstrap seed', flag_values=FLAGS)
flags.DEFINE_string('out', '', 'also write the JSON here', flag_values=FLAGS)
flags.DEFINE_string(
  'params_col',
  None,
  "default 'params' ('non_embedding_params' for --law=kaplan)",
  flag_values=FLAGS,
)
flags.DEFINE_string(
  'tokens_col', 'tokens', "'' derives tokens from FLOPs as C/(6N)", flag_values=FLAGS
)
flags.DEFINE_string('loss_col', 'loss', 'loss column', flag_values=FLAGS)
flags.DEFINE_string('flops_col', 'flops', 'FLOPs column', flag_values=FLAGS)
flags.DEFINE_float(
  'budget_rtol',
  0.05,
  'isoflop: FLOPs within this relative tolerance form one budget',
  flag_values=FLAGS,
)
flags.DEFINE_integer(
  'n_polish', 16, 'chinchilla: grid starts polished by L-BFGS-B (0: all 4500)', flag_values=FLAGS
)
flags.DEFINE_string(
  'lr',
  'best',
  "lr sweeps: 'best' (lowest mean loss per (N, D)) or the transferred lr to use",
  flag_values=FLAGS,
)
flags.DEFINE_float('pin_E', None, 'compute: fix E to this loss', flag_values=FLAGS)
flags.mark_flag_as_required('results', flag_values=FLAGS)


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
  """Huber loss: quadratic for |r| <= delta, linear beyond."""
  ar = np.abs(r)
  return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


def chinchilla_objective(
  theta: np.ndarray,
  log_n: np.ndarray,
  log_d: np.ndarray,
  log_l: np.ndarray,
  delta: float = HUBER_DELTA,
) -> tuple[float, np.ndarray]:
  """Sum over runs of Huber(LSE(a - alpha log N, b - beta log D, e) - log L), and its gradient.

  theta = (a, b, e, alpha, beta), with A, B, E = exp(a, b, e) (Hoffmann et al. 2022, eq. D.2).
  """
  a, b, e, al, be = theta
  t1, t2 = a - al * log_n, b - be * log_d
  m = np.maximum(np.maximum(t1, t2), e)
  e1, e2, e3 = np.exp(t1 - m), np.exp(t2 - m), np.exp(e - m)
  s = e1 + e2 + e3
  r = m + np.log(s) - log_l
  dr = np.clip(r, -delta, delta) / s  # d Huber / d r times 1/s (softmax weights are e_i / s).
  g1, g2 = dr * e1, dr * e2
  grad = np.array([g1.sum(), g2.sum(), (dr * e3).sum(), -(g1 @ log_n), -(g2 @ log_d)])
  return huber(r, delta).sum(), grad


def chinchilla_objective_batch(
  thetas: np.ndarray,
  log_n: np.ndarray,
  log_d: np.ndarray,
  log_l: np.ndarray,
  delta: float = HUBER_DELTA,
) -> np.ndarray:
  """chinchilla_objective's value for each row of thetas (S, 5), vectorised (for scoring the start grid)."""
  a, b, e, al, be = (thetas[:, i : i + 1] for i in range(5))
  pred = np.logaddexp(np.logaddexp(a - al * log_n, b - be * log_d), e)
  return huber(pred - log_l, delta).sum(-1)


def start_grid() -> np.ndarray:
  """The (4500, 5) grid of (a, b, e, alpha, beta) starting points."""
  g = START_GRID
  return np.array(list(itertools.product(g['a'], g['b'], g['e'], g['alpha'], g['beta'])))


def polish(
  objective: Callable, starts: npt.ArrayLike, args: tuple, law: str, bounds: Sequence | None = None
) -> optimize.OptimizeResult:
  """L-BFGS-B on objective(theta, *args) -> (value, gradient) from each start; the lowest finite
  optimum, or ValueError naming the law when none is finite."""
  best = None
  for x0 in np.atleast_2d(starts):
    res = optimize.minimize(
      objective,
      x0,
      args=args,
      jac=True,
      method='L-BFGS-B',
      bounds=bounds,
      options={'maxiter': 2000, 'ftol': 1e-15, 'gtol': 1e-12},
    )
    if np.all(np.isfinite(res.x)) and np.isfinite(res.fun) and (best is None or res.fun < best.fun):
      best = res
  if best is None:
    raise ValueError(f'{law} fit: no start converged to finite parameters')
  return best


def _chinchilla_constants(theta: np.ndarray):
  a, b, e, alpha, beta = (float(v) for v in theta)
  law = laws.Chinchilla(E=np.exp(e), A=np.exp(a), B=np.exp(b), alpha=alpha, beta=beta)
  g, fa, fb = laws.chinchilla_frontier_constants(law)
  return {
    'E': law.E,
    'A': law.A,
    'B': law.B,
    'alpha': alpha,
    'beta': beta,
    'a': fa,
    'b': fb,
    'G': float(g),
  }


def fit_chinchilla(
  runs: results_lib.Runs,
  delta: float = HUBER_DELTA,
  n_polish: int | None = 16,
  starts: npt.ArrayLike | None = None,
) -> dict:
  """Approach 3: L-BFGS-B on the summed Huber loss from the best n_polish grid starts.

  All 4500 starts are scored in one vectorised pass and the n_polish best are polished
  (n_polish=None polishes all, as in the paper). Extra starts (rows of theta) are always polished.
  """
  log_n, log_d, log_l = np.log(runs.params), np.log(runs.tokens), np.log(runs.loss)
  grid = start_grid()
  if n_polish is None or n_polish >= len(grid):
    chosen = grid
  else:
    values = np.concatenate(
      [chinchilla_objective_batch(g, log_n, log_d, log_l, delta) for g in np.array_split(grid, 10)]
    )
    chosen = grid[np.argsort(values, kind='stable')[:n_polish]]
  if starts is not None:
    chosen = np.concatenate([np.atleast_2d(starts), chosen])
  best = polish(chinchilla_objective, chosen, (log_n, log_d, log_l, delta), 'chinchilla')
  return {
    'law': 'chinchilla',
    'constants': _chinchilla_constants(best.x),
    'objective': float(best.fun),
    'theta': [float(v) for v in best.x],
  }


def group_budgets(flops: npt.ArrayLike, rtol: float = 0.05) -> np.ndarray:
  """Labels runs by compute budget: sorted FLOPs join a group while within rtol of its smallest."""
  flops = np.asarray(flops, float)
  order = np.argsort(flops, kind='stable')
  labels = np.empty(len(flops), int)
  group, first = -1, None
  for i in order:
    if first is None or flops[i] > first * (1 + rtol):
      group, first = group + 1, flops[i]
    labels[i] = group
  return labels


def isoflop_profiles(
  runs: results_lib.Runs, rtol: float = 0.05, min_sizes: int = 3, strict: bool = True
) -> list[dict]:
  """Per budget, a parabola of loss vs ln N and its minimum (Hoffmann et al. 2022, sec. 3.2).

  Raises ValueError for a budget with fewer than min_sizes model sizes or a parabola opening
  downward; with strict=False such budgets are skipped instead.
  """
  labels = group_budgets(runs.flops, rtol)
  out = []
  for g in range(labels.max() + 1):
    idx = np.flatnonzero(labels == g)
    c = float(np.exp(np.log(runs.flops[idx]).mean()))
    x, y = np.log(runs.params[idx]), runs.loss[idx]
    sizes = len(np.unique(np.round(x, 9)))
    err = None
    if sizes < min_sizes:
      err = f'budget {c:.3g} FLOPs has {sizes} model sizes, need at least {min_sizes}'
    else:
      p = np.polyfit(x, y, 2)
      if not p[0] > 0:
        err = f'budget {c:.3g} FLOPs: parabola of loss vs log N opens downward (no minimum)'
    if err:
      if strict:
        raise ValueError(err)
      continue
    x_opt = -p[1] / (2 * p[0])
    n_opt = float(np.exp(x_opt))
    out.append(
      {
        'flops': c,
        'n_runs': len(idx),
        'n_sizes': sizes,
        'params_opt': n_opt,
        'tokens_opt': c / (6 * n_opt),
        'loss_opt': float(np.polyval(p, x_opt)),
        'parabola_ln_params': [float(v) for v in p],
        'extrapolated': bool(not x.min() <= x_opt <= x.max()),
      }
    )
  return out


def _power_law(x: np.ndarray, y: np.ndarray):
  """Least-squares y = k x^p in log-log space; returns (k, p)."""
  p, lk = np.polyfit(np.log(x), np.log(y), 1)
  return float(np.exp(lk)), float(p)


def fit_isoflop(runs: results_lib.Runs, rtol: float = 0.05) -> dict:
  """Approach 2: N_opt = k_N C^a, D_opt = k_D C^b (D_opt = C / 6 N_opt), L_opt = k_L C^gamma."""
  prof = isoflop_profiles(runs, rtol)
  if len(prof) < 2:
    raise ValueError(f'isoflop fit needs at least 2 compute budgets, got {len(prof)}')
  c = np.array([p['flops'] for p in prof])
  k_n, a = _power_law(c, [p['params_opt'] for p in prof])
  k_d, b = _power_law(c, [p['tokens_opt'] for p in prof])
  k_l, gamma = _power_law(c, [p['loss_opt'] for p in prof])
  return {
    'law': 'isoflop',
    'budget_rtol': rtol,
    'budgets': prof,
    'constants': {'k_N': k_n, 'a': a, 'k_D': k_d, 'b': b, 'k_L': k_l, 'gamma': gamma},
  }


def envelope(
  runs: results_lib.Runs, n_points: int = 200, min_sizes: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Approach 1's lower envelope of loss vs FLOPs (Hoffmann et al. 2022, sec. 3.1).

  `runs` holds points of loss curves (one row per evaluation of a run, its FLOPs so far). Each
  model size's curve is interpolated (log loss vs log FLOPs) on n_points log-spaced FLOP values;
  at each value covered by at least min_sizes sizes the size with the lowest loss is the
  compute-optimal one there. Returns (flops, params_opt, loss_opt) arrays."""
  curves = {}
  for n in np.unique(runs.params):
    idx = np.flatnonzero(runs.params == n)
    c, l = np.log(runs.flops[idx]), np.log(runs.loss[idx])
    order = np.argsort(c, kind='stable')
    c, l = c[order], l[order]
    keep = np.concatenate([[True], np.diff(c) > 0])  # one point per FLOP value (the first).
    if keep.sum() >= 2:
      curves[float(n)] = (c[keep], np.minimum.accumulate(l[keep]))
  if len(curves) < min_sizes:
    raise ValueError(
      f'envelope fit needs loss curves of at least {min_sizes} model sizes '
      f'(several evaluations each), got {len(curves)}'
    )
  grid = np.linspace(
    min(c[0] for c, _ in curves.values()), max(c[-1] for c, _ in curves.values()), n_points
  )
  sizes = np.array(list(curves))
  interp = np.full((len(sizes), n_points), np.inf)
  for i, (c, l) in enumerate(curves.values()):
    inside = (grid >= c[0]) & (grid <= c[-1])
    interp[i, inside] = np.interp(grid[inside], c, l)
  covered = np.isfinite(interp).sum(0) >= min_sizes
  if covered.sum() < 2:
    raise ValueError(
      'envelope fit: fewer than 2 FLOP values are covered by '
      f'{min_sizes} model sizes; the curves do not overlap in compute'
    )
  best = np.argmin(interp[:, covered], axis=0)
  return np.exp(grid[covered]), sizes[best], np.exp(interp[best, np.flatnonzero(covered)])


def fit_envelope(runs: results_lib.Runs, n_points: int = 200) -> dict:
  """Approach 1: N_opt = k_N C^a, D_opt = C / 6 N_opt = k_D C^b, L_opt = k_L C^gamma on the envelope."""
  c, n_opt, l_opt = envelope(runs, n_points)
  # Where the smallest or largest size wins, the optimum may lie outside the sizes tried: censored.
  interior = (n_opt > runs.params.min()) & (n_opt < runs.params.max())
  if len(np.unique(n_opt[interior])) < 2:
    raise ValueError(
      'envelope fit: fewer than 2 sizes are optimal inside the range of sizes '
      f'tried ({runs.params.min():.3g} .. {runs.params.max():.3g}); add sizes'
    )
  censored = int((~interior).sum())
  c, n_opt, l_opt = c[interior], n_opt[interior], l_opt[interior]
  k_n, a = _power_law(c, n_opt)
  k_d, b = _power_law(c, c / (6 * n_opt))
  k_l, gamma = _power_law(c, l_opt)
  return {
    'law': 'envelope',
    'n_points': int(len(c)),
    'censored_points': censored,
    'flops_range': [float(c[0]), float(c[-1])],
    'optimal_sizes': sorted(float(x) for x in np.unique(n_opt)),
    'constants': {'k_N': k_n, 'a': a, 'k_D': k_d, 'b': b, 'k_L': k_l, 'gamma': gamma},
  }


def fit_kaplan_n(params: np.ndarray, loss: np.ndarray) -> laws.KaplanN:
  """Kaplan L(N) = (N_c/N)^alpha_N by log-log least squares on each size's lowest loss."""
  sizes = np.unique(params)
  if len(sizes) < 2:
    raise ValueError('kaplan L(N) fit needs at least 2 distinct model sizes')
  best = np.array([loss[params == s].min() for s in sizes])
  slope, icpt = np.polyfit(np.log(sizes), np.log(best), 1)
  alpha = -slope
  return laws.KaplanN(alpha_N=float(alpha), N_c=float(np.exp(icpt / alpha)))


def fit_kaplan_joint(
  params: np.ndarray,
  tokens: np.ndarray,
  loss: np.ndarray,
  starts: Sequence[Sequence[float]] | None = None,
) -> laws.KaplanJoint:
  """Kaplan L(N, D) by least squares on log loss, from a few starts (incl. the published constants)."""
  log_l = np.log(loss)

  def resid(th: np.ndarray) -> np.ndarray:
    law = laws.KaplanJoint(alpha_N=th[2], alpha_D=th[3], N_c=np.exp(th[0]), D_c=np.exp(th[1]))
    return laws.kaplan_log_loss_joint(law, params, tokens) - log_l

  p = laws.KAPLAN_JOINT
  x0s = [[np.log(p.N_c), np.log(p.D_c), p.alpha_N, p.alpha_D]] + list(starts or [])
  x0s += [
    [np.log(nc), np.log(dc), an, ad]
    for nc in (1e10, 1e14)
    for dc in (1e10, 1e14)
    for an, ad in ((0.05, 0.1), (0.3, 0.3))
  ]
  best = None
  for x0 in x0s:
    res = optimize.least_squares(
      resid, x0, bounds=([-50, -50, 1e-4, 1e-4], [200, 200, 5, 5]), x_scale=[10, 10, 0.1, 0.1]
    )
    if best is None or res.cost < best.cost:
      best = res
  th = best.x
  return laws.KaplanJoint(
    alpha_N=float(th[2]), alpha_D=float(th[3]), N_c=float(np.exp(th[0])), D_c=float(np.exp(th[1]))
  )


def fit_kaplan(runs: results_lib.Runs) -> dict:
  """Kaplan L(N) (alpha_N, N_c) and joint L(N, D) (joint_*) constants."""
  ln = fit_kaplan_n(runs.params, runs.loss)
  j = fit_kaplan_joint(runs.params, runs.tokens, runs.loss)
  return {
    'law': 'kaplan',
    'constants': {
      'alpha_N': ln.alpha_N,
      'N_c': ln.N_c,
      'joint_alpha_N': j.alpha_N,
      'joint_alpha_D': j.alpha_D,
      'joint_N_c': j.N_c,
      'joint_D_c': j.D_c,
    },
  }


# --- sums of power laws: the compute-only law L(C) and the whole-curve law L(N, S1, S2) -------------

TINY = 1e-30  # a prediction at or below 0 counts as this (its log residual is then huge).


def signed_sum_objective(
  theta: np.ndarray,
  log_x: np.ndarray,
  signs: np.ndarray,
  free: np.ndarray,
  base: np.ndarray,
  log_l: np.ndarray,
  delta: float = HUBER_DELTA,
) -> tuple[float, np.ndarray]:
  """Sum of Huber(log sum_k s_k exp(c_k - p_k log x_k) - log L) and its gradient in the free entries.

  base = (c_1..c_K, p_1..p_K) takes theta in its `free` entries (the others stay pinned); log_x is
  (K, n), signs (K,) of +-1 (approach 3's objective, with signed terms and pinned entries)."""
  full = base.copy()
  full[free] = theta
  k = len(signs)
  t = signs[:, None] * np.exp(full[:k, None] - full[k:, None] * log_x)
  pred = t.sum(0)
  ok = pred > TINY
  r = np.log(np.where(ok, pred, TINY)) - log_l
  w = np.where(ok, np.clip(r, -delta, delta) / np.where(ok, pred, 1.0), 0.0)  # dHuber/dpred.
  grad = np.concatenate([t @ w, -(t * log_x) @ w])
  return float(huber(r, delta).sum()), grad[free]


def _projection_starts(
  args: tuple, p_grid: np.ndarray, n_best: int, delta: float = HUBER_DELTA
) -> np.ndarray:
  """Starts by variable projection: at each row of p_grid (the free exponents) the non-negative
  least-squares coefficients of L on the terms; the n_best of them by the objective (free entries)."""
  log_x, signs, free, base, log_l = args
  k, y = len(signs), np.exp(log_l)
  free_c, free_p = free[:k], k + np.flatnonzero(free[k:])
  found = []
  for ps in p_grid:
    full = base.copy()
    full[free_p] = ps
    terms = signs[:, None] * np.exp(-full[k:, None] * log_x)
    pinned = (np.exp(full[:k, None]) * terms)[~free_c].sum(0)
    scale = np.maximum(np.abs(terms[free_c]).max(1), TINY)
    coef = optimize.nnls((terms[free_c] / scale[:, None]).T, y - pinned)[0] / scale
    c = full[:k]
    c[free_c] = np.log(np.maximum(coef, 1e-9 * y.mean() / scale))
    found.append((signed_sum_objective(full[free], *args, delta)[0], full[free]))
  found.sort(key=lambda vt: vt[0])
  return np.array([t for _, t in found[:n_best]])


def fit_signed_sum(
  args: tuple, p_grid: np.ndarray, law: str, starts: npt.ArrayLike | None = None, n_best: int = 3
) -> tuple[np.ndarray, float]:
  """(full theta, objective): signed_sum_objective minimised from the projection starts (and the
  full-theta `starts`, e.g. a previous optimum), exponents bounded to (0, 10]."""
  log_x, signs, free, base, log_l = args
  k = len(signs)
  x0 = np.empty((0, int(free.sum())))
  if n_best:
    x0 = _projection_starts(args, p_grid, n_best)
  if starts is not None:
    x0 = np.concatenate([np.atleast_2d(starts)[:, free], x0])
  bounds = [(-300.0, 300.0)] * k + [(1e-4, 10.0)] * k
  best = polish(signed_sum_objective, x0, args, law, [b for b, f in zip(bounds, free) if f])
  full = base.copy()
  full[free] = best.x
  return full, float(best.fun)


def compute_optimal(runs: results_lib.Runs) -> np.ndarray:
  """Indices of the compute-optimal runs: no other run reaches a lower loss with at most its FLOPs."""
  order = np.lexsort((runs.loss, runs.flops))
  keep, best = [], np.inf
  for i in order:
    if runs.loss[i] < best:
      keep.append(i)
      best = runs.loss[i]
  return np.sort(np.array(keep, int))


def fit_compute(
  runs: results_lib.Runs,
  pin_E: float | None = None,
  starts: npt.ArrayLike | None = None,
  n_best: int = 3,
) -> dict:
  """L(C) = E + A C^-alpha on the runs given (pass compute_optimal ones), summed Huber on log L;
  pin_E fixes E (Marin's ladders: stable where a free E is not)."""
  if pin_E is not None and not 0 < pin_E < runs.loss.min():
    raise ValueError(f'pin_E={pin_E:g} must lie in (0, the lowest fitted loss {runs.loss.min():g})')
  log_c = np.log(runs.flops)
  log_x = np.stack([np.zeros_like(log_c), log_c])
  base = np.array([np.log(pin_E) if pin_E else 0.0, 0.0, 0.0, 0.0])
  free = np.array([pin_E is None, True, False, True])
  args = (log_x, np.ones(2), free, base, np.log(runs.loss))
  grid = np.geomspace(0.005, 2.0, 40)[:, None]
  theta, fun = fit_signed_sum(args, grid, 'compute', starts, n_best)
  e, a, _, alpha = (float(v) for v in theta)
  return {
    'law': 'compute',
    'constants': {'E': pin_E or float(np.exp(e)), 'A': float(np.exp(a)), 'alpha': alpha},
    'pinned_E': pin_E,
    'objective': fun,
    'theta': [float(v) for v in theta],
  }


CURVE_GRID = np.array(list(itertools.product(np.geomspace(0.02, 2, 12), np.geomspace(0.05, 2, 12))))


def fit_curve(
  curves: results_lib.Curves, starts: npt.ArrayLike | None = None, n_best: int = 3
) -> dict:
  """laws.Curve on every evaluation given: summed Huber on log L over (N, S1, S2) rows, polished
  from the n_best grid starts (and `starts`). E, A, alpha are fixed by the sizes alone: 3 needed."""
  sizes = len(np.unique(curves.params))
  if sizes < 3:
    raise ValueError(f'curve fit: members of {sizes} sizes, need at least 3 (E + A·N^-alpha)')
  log_n = np.log(curves.params)
  log_x = np.stack(
    [np.zeros_like(log_n), log_n, np.log(curves.lr_sum), np.log(np.maximum(curves.lr_anneal, TINY))]
  )
  base = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])  # p = -1: the S2 term is C·S2.
  free = np.array([True] * 4 + [False, True, True, False])
  args = (log_x, np.array([1.0, 1.0, 1.0, -1.0]), free, base, np.log(curves.loss))
  theta, fun = fit_signed_sum(args, CURVE_GRID, 'curve', starts, n_best)
  e, a, b, c, _, alpha, beta, _ = (float(v) for v in theta)
  constants = {'E': e, 'A': a, 'alpha': alpha, 'B': b, 'beta': beta, 'C': c}
  for key in ('E', 'A', 'B', 'C'):
    constants[key] = float(np.exp(constants[key]))
  return {
    'law': 'curve',
    'constants': constants,
    'objective': fun,
    'theta': list(map(float, theta)),
  }


# --- laws in which size and data interact (scaling/laws.py) -----------------------------------------

INTERACTION_NAMES = ('E', 'A', 'alpha', 'B', 'beta', 'gamma')
# theta = (log E, log A, alpha, log B, beta, gamma); the box keeps exponents in (0, 3).
INTERACTION_BOX = ([-10.0, -10.0, 0.0, -10.0, 0.0, -1.0], [3.0, 40.0, 3.0, 40.0, 3.0, 1.0])
FARSEER_NAMES = ('a1', 'b1', 'g1', 'a2', 'b2', 'g2', 'a3', 'b3', 'g3')
FARSEER_BOX = ([-20.0, -20.0, -3.0, -20.0, -20.0, -3.0, -20.0, -20.0, -3.0],
               [20.0, 20.0, 3.0, 20.0, 40.0, 3.0, 20.0, 20.0, 3.0])  # fmt: skip


def _robust(resid: Callable, starts: Sequence, box: tuple, law: str) -> np.ndarray:
  """The best of scipy's bounded least squares with a Huber loss on the log residuals (the
  summed-Huber objective of approach 3) from each start."""
  best = None
  lo, hi = np.asarray(box[0]), np.asarray(box[1])
  for x0 in starts:
    with np.errstate(all='ignore'):
      try:
        res = optimize.least_squares(
          resid, np.clip(x0, lo + 1e-9, hi - 1e-9), bounds=box, loss='huber', f_scale=HUBER_DELTA
        )
      except ValueError:  # a start where the law is not finite.
        continue
    if (
      np.all(np.isfinite(res.x))
      and np.isfinite(res.cost)
      and (best is None or res.cost < best.cost)
    ):
      best = res
  if best is None:
    raise ValueError(f'{law} fit: no start converged to finite parameters')
  return best.x


def _interaction_law(theta: Sequence[float]) -> laws.Interaction:
  e, a, alpha, b, beta, gamma = theta
  return laws.Interaction(np.exp(e), np.exp(a), alpha, np.exp(b), beta, gamma)


def fit_interaction(runs: results_lib.Runs, starts: Sequence | None = None) -> dict:
  """laws.Interaction on the runs, from Chinchilla's optimum with gamma in a small grid (and
  `starts`: thetas, e.g. a previous optimum)."""
  log_l = np.log(runs.loss)

  def resid(th):
    return (
      np.log(
        np.maximum(laws.interaction_loss(_interaction_law(th), runs.params, runs.tokens), 1e-30)
      )
      - log_l
    )

  x0 = [np.asarray(t, float) for t in (starts or [])]
  if not starts:
    a, b, e, alpha, beta = fit_chinchilla(runs, n_polish=4)['theta']
    x0 += [np.array([e, a, alpha, b, beta, g]) for g in (0.0, 0.02, 0.05, -0.02)]
  theta = _robust(resid, x0, INTERACTION_BOX, 'interaction')
  return {
    'law': 'interaction',
    'constants': dict(
      zip(INTERACTION_NAMES, (float(v) for v in _interaction_law(theta).__dict__.values()))
    ),
    'theta': [float(v) for v in theta],
  }


def fit_farseer(runs: results_lib.Runs, starts: Sequence | None = None) -> dict:
  """laws.Farseer on the runs, from starts built on Chinchilla's optimum (the N term as the size
  term, the data term with N-flat scale and exponent) and `starts`."""
  log_l = np.log(runs.loss)

  def resid(th):
    pred = laws.farseer_loss(laws.Farseer(*th), runs.params, runs.tokens)
    return np.log(np.where(np.isfinite(pred) & (pred > 0), pred, 1e-30)) - log_l

  x0 = [np.asarray(t, float) for t in (starts or [])]
  if not starts:
    c = fit_chinchilla(runs, n_polish=4)['constants']
    e = max(c['E'], 1e-3)
    at_ref = c['A'] * laws.N_REF ** -c['alpha']
    for g2, g1 in ((0.1, 0.1), (-0.1, 0.1), (0.1, -0.1), (0.3, 0.3)):
      x0.append(np.array([0.0, np.log(max(c['beta'], 1e-3)), g1, 0.0, np.log(c['B']), g2,
                          np.log1p(at_ref / e), np.log(e), -c['alpha']]))  # fmt: skip
  theta = _robust(resid, x0, FARSEER_BOX, 'farseer')
  return {
    'law': 'farseer',
    'constants': dict(zip(FARSEER_NAMES, (float(v) for v in theta))),
    'theta': [float(v) for v in theta],
  }


def bootstrap(
  runs: results_lib.Runs,
  fit_fn: Callable[[results_lib.Runs], dict],
  k: int,
  seed: int = 0,
  groups: Sequence[np.ndarray] | None = None,
  whole: np.ndarray | None = None,
) -> dict:
  """Refits on k resamples of the runs (with replacement, within each group when given; with
  `whole`, one label per row, the labels are drawn and each brings all of its rows).

  Resamples whose fit raises ValueError (e.g. a budget left with < 3 sizes) are skipped and counted.
  Returns {k, seed, failed, se, ci95, samples}, with se the standard deviation over resamples and
  ci95 the 2.5 / 97.5 percentiles.
  """
  rng = np.random.default_rng(seed)
  groups = [np.arange(len(runs))] if groups is None else groups
  samples, reasons = {}, []
  if whole is not None:  # resample labels, each bringing its rows.
    groups = [np.flatnonzero(whole == w) for w in np.unique(whole)]
  for _ in range(k):
    if whole is None:
      idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
    else:
      idx = np.concatenate([groups[g] for g in rng.choice(len(groups), size=len(groups))])
    try:
      consts = fit_fn(runs.subset(idx))['constants']
    except ValueError as e:
      reasons.append(str(e))
      continue
    for name, v in consts.items():
      samples.setdefault(name, []).append(float(v))
  failed = len(reasons)
  if failed > k // 2:
    raise ValueError(f'bootstrap: {checks.failures(reasons, k)}')
  se = {n: float(np.std(v, ddof=1)) if len(v) > 1 else None for n, v in samples.items()}
  ci = {n: [float(q) for q in np.percentile(v, [2.5, 97.5])] for n, v in samples.items()}
  out = {'k': k, 'seed': seed, 'failed': failed, 'se': se, 'ci95': ci, 'samples': samples}
  if failed:
    out['failed_because'] = checks.failures(reasons, k)
  return out


# What each law's constants must look like (scaling/checks.py): its exponents, other ranges, its
# loss floor and the optimizer's box {name: (lo, hi)} in the constants' own units.
CHECKS = {
  'chinchilla': {'exponents': ('alpha', 'beta'), 'floor': 'E'},
  'isoflop': {
    'ranges': {
      'a': (0.0, 1.0, 'N_opt ∝ C^a: a model grows with compute, but not faster'),
      'b': (0.0, 1.0, 'D_opt ∝ C^b: tokens grow with compute, but not faster'),
    }
  },
  'envelope': {'ranges': {'a': (0.0, 1.0, 'N_opt ∝ C^a'), 'b': (0.0, 1.0, 'D_opt ∝ C^b')}},
  'kaplan': {
    'exponents': ('alpha_N', 'joint_alpha_N', 'joint_alpha_D'),
    'bounds': {'joint_alpha_N': (1e-4, 5.0), 'joint_alpha_D': (1e-4, 5.0)},
  },
  'compute': {'exponents': ('alpha',), 'floor': 'E', 'bounds': {'alpha': (1e-4, 10.0)}},
  'interaction': {
    'exponents': ('alpha', 'beta'),
    'floor': 'E',
    'bounds': dict(zip(INTERACTION_NAMES[2:], [(0.0, 3.0), (None, None), (0.0, 3.0), (-1.0, 1.0)])),
  },
  'farseer': {'bounds': dict(zip(FARSEER_NAMES, zip(*FARSEER_BOX)))},
  'curve': {
    'exponents': ('alpha',),
    'floor': 'E',
    'bounds': {'alpha': (1e-4, 10.0), 'beta': (1e-4, 10.0)},
  },
}


def warnings_of(out: dict, lowest_loss: float) -> list[str]:
  """scaling/checks.py's warnings for a fit's JSON (its law, constants and bootstrap)."""
  law = out['law']
  ci = (out.get('bootstrap') or {}).get('ci95')
  found = checks.law_warnings(
    law, out['constants'], lowest_loss=lowest_loss, ci95=ci, **CHECKS.get(law, {})
  )
  for b in out.get('budgets', []):  # isoflop: an optimum outside its own budget's sizes.
    if b.get('extrapolated'):
      found.append(
        f'{law} fit: the budget {b.get("flops", 0):.3g} FLOPs has its optimum outside the sizes '
        'it trained (extrapolated): add sizes around it'
      )
  if (out.get('bootstrap') or {}).get('failed'):
    found.append(f'{law} fit: bootstrap: {out["bootstrap"]["failed_because"]}')
  return found


def _scatter(law: str, c: dict, runs: results_lib.Runs) -> tuple[float, int]:
  """(RMS log residual of the fitted rows over their degrees of freedom, the degrees of freedom)
  of an L(N, D) law: scaling.predict widens a bootstrap interval by it (scaling/holdout.py)."""
  if law == 'chinchilla':
    f = laws.Chinchilla(E=c['E'], A=c['A'], B=c['B'], alpha=c['alpha'], beta=c['beta'])
    pred, k = laws.chinchilla_loss(f, runs.params, runs.tokens), 5
  elif law == 'interaction':
    pred, k = laws.interaction_loss(laws.Interaction(**c), runs.params, runs.tokens), 6
  elif law == 'farseer':
    pred, k = laws.farseer_loss(laws.Farseer(**c), runs.params, runs.tokens), 9
  else:
    j = laws.KaplanJoint(
      alpha_N=c['joint_alpha_N'], alpha_D=c['joint_alpha_D'], N_c=c['joint_N_c'], D_c=c['joint_D_c']
    )
    pred, k = laws.kaplan_loss_joint(j, runs.params, runs.tokens), 4
  dof = len(runs) - k
  rss = float(np.sum(np.log(pred / runs.loss) ** 2))
  return (float(np.sqrt(rss / dof)) if dof > 0 else None), dof


def fit(
  runs: results_lib.Runs,
  law: str,
  n_boot: int = 0,
  seed: int = 0,
  budget_rtol: float = 0.05,
  n_polish: int | None = 16,
  pin_E: float | None = None,
) -> dict:
  """Fits `law` (the --law choices) and optionally bootstraps; returns a JSON-able dict. 'compute'
  keeps the compute-optimal runs; 'curve' takes results.Curves and resamples whole members."""
  whole = None
  if law == 'chinchilla':
    out = fit_chinchilla(runs, n_polish=n_polish)
    # Resamples start from the full-data optimum plus the best few grid starts: much cheaper, same optimum.
    boot_fn = lambda r: fit_chinchilla(r, n_polish=2, starts=out['theta'])
    groups = None
  elif law == 'isoflop':
    out = fit_isoflop(runs, budget_rtol)
    boot_fn = lambda r: fit_isoflop(r, budget_rtol)
    labels = group_budgets(runs.flops, budget_rtol)
    groups = [np.flatnonzero(labels == g) for g in range(labels.max() + 1)]
  elif law == 'kaplan':
    out = fit_kaplan(runs)
    boot_fn, groups = fit_kaplan, None
  elif law == 'envelope':
    out = fit_envelope(runs)
    # Resample evaluation points within each size's curve; every size stays (the envelope needs it).
    boot_fn = fit_envelope
    groups = [np.flatnonzero(runs.params == n) for n in np.unique(runs.params)]
  elif law == 'compute':
    runs = runs.subset(compute_optimal(runs))
    out = fit_compute(runs, pin_E)
    boot_fn, groups = (lambda r: fit_compute(r, pin_E, out['theta'], 0)), None
  elif law == 'interaction':
    out = fit_interaction(runs)
    boot_fn, groups = (lambda r: fit_interaction(r, [out['theta']])), None
  elif law == 'farseer':
    out = fit_farseer(runs)
    boot_fn, groups = (lambda r: fit_farseer(r, [out['theta']])), None
  elif law == 'curve':
    out = fit_curve(runs)
    boot_fn, groups = (lambda r: fit_curve(r, out['theta'], 0)), None
    whole = np.unique(runs.names, return_inverse=True)[1]  # a curve's evaluations go together.
  else:
    raise ValueError(f'unknown law {law!r}: expected one of {", ".join(MIN_ROWS)}')
  out['n_runs'] = len(runs)
  if n_boot:
    out['bootstrap'] = bootstrap(runs, boot_fn, n_boot, seed, groups, whole)
  out['fitted_range'] = checks.fitted_range(runs.params, runs.tokens, runs.flops)
  if law in ('chinchilla', 'kaplan', 'interaction', 'farseer'):  # scaling.predict's intervals.
    out['log_residual_rms'], out['dof'] = _scatter(law, out['constants'], runs)
  out['warnings'] = warnings_of(out, float(np.min(runs.loss)))
  return out


def main(argv: Sequence[str] | None = None) -> None:
  """The command line (module docstring); argv excludes the program name (None: sys.argv[1:])."""
  cli.parse(FLAGS, argv, __doc__)
  if FLAGS.law == 'distillation':
    _main_distillation()
    return
  params_col = FLAGS.params_col or ('non_embedding_params' if FLAGS.law == 'kaplan' else 'params')
  if FLAGS.pin_E is not None and FLAGS.law != 'compute':
    cli.usage_error(f'--pin_E={FLAGS.pin_E:g}: for --law=compute')
  try:
    if FLAGS.law == 'curve':
      runs = results_lib.read_curves(
        FLAGS.results, params_col, FLAGS.flops_col, lr=FLAGS.lr, areas=FLAGS.curve_areas
      )
    else:
      runs = results_lib.read_results(
        FLAGS.results,
        params_col=params_col,
        tokens_col=FLAGS.tokens_col,
        loss_col=FLAGS.loss_col,
        flops_col=FLAGS.flops_col,
        min_rows=MIN_ROWS[FLAGS.law],
        lr=None if FLAGS.law == 'envelope' else FLAGS.lr,
      )
    out = fit(
      runs,
      FLAGS.law,
      FLAGS.bootstrap,
      FLAGS.seed,
      FLAGS.budget_rtol,
      FLAGS.n_polish or None,
      FLAGS.pin_E,
    )
  except ValueError as e:
    cli.fail(e)
  out['results'] = FLAGS.results
  out['selection'] = runs.selection
  out['columns'] = {
    'params': params_col,
    'tokens': FLAGS.tokens_col,
    'loss': FLAGS.loss_col,
    'flops': FLAGS.flops_col,
  }
  _emit(out)


def _emit(out: dict) -> None:
  """The fit as JSON: to --out with a one-line summary on stdout, else the JSON on stdout."""
  text = json.dumps(out, indent=2, default=float)
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      f.write(text + '\n')
    consts = out.get('constants', {})
    consts = ', '.join(f'{k}={v:.4g}' for k, v in consts.items() if isinstance(v, (int, float)))
    n = out.get('n_runs', out.get('n_distilled', '?'))
    print(f'{FLAGS.law} fit of {n} runs: {consts} -> {FLAGS.out}')
  else:
    print(text)
  checks.emit(out['warnings'])


def _main_distillation() -> None:
  """--law=distillation: the student law on the supervised rows, then Busbridge et al.'s."""
  try:
    out = distill_law.fit(
      distill_law.read(FLAGS.results), fit_chinchilla, FLAGS.bootstrap, FLAGS.seed
    )
  except (OSError, ValueError) as e:
    cli.fail(e)
  out['results'] = FLAGS.results
  _emit(out)


if __name__ == '__main__':
  main()
