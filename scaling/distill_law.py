"""The distillation scaling law of Busbridge et al. 2025 (arXiv 2502.08606): a student's loss from
its teacher's loss L_T, its size N_S and its distillation tokens D_S, with the capacity gap built
in; its fit with bootstrap intervals, held-out students, and the compute-optimal student.

  L_S = L_T + L_T^-c0 · (1 + (L_T / (L̃_S·d1))^(1/f1))^(-c1·f1) · (A·N_S^-α + B·D_S^-β)^γ

L̃_S is the student's supervised loss at (N_S, D_S): a Chinchilla fit (scaling/fit.py, approach 3)
to the supervised rows of the same CSV (teacher_loss empty). For a teacher much weaker than the
student could be alone (L_T >> L̃_S·d1) the student follows its teacher; past the transition
(capacity gap) a stronger teacher helps less and its student tends to its own supervised loss.
Rows: name, params (the student's), tokens (its distillation tokens), loss (its eval
cross-entropy), teacher_loss, teacher_params (empty for supervised runs).

  python -m scaling.fit --law=distillation --results=docs/distillation/law_runs.csv --bootstrap=100
  python -m scaling.predict --law=fit.json --teacher_loss=1.09 --teacher_params=6.5e5 --compute=1e13
"""

import dataclasses
import math
from collections.abc import Callable

import numpy as np
from scipy import optimize, stats

from scaling import checks
from scaling import results as results_lib

# scaling.fit's approach 3 (Runs -> {'constants': {E, A, B, alpha, beta}, ...}), passed in by the
# caller: scaling/fit.py dispatches --law=distillation here, so this module cannot import it.
ChinchillaFit = Callable[[results_lib.Runs], dict]
MIN_SUPERVISED = 5
NAMES = ('c0', 'c1', 'log_d1', 'log_f1', 'log_A', 'alpha', 'log_B', 'beta', 'gamma')
LOWER = np.array([0.0, 0.0, -3.0, -4.0, -10.0, 0.0, -10.0, 0.0, 0.05])
UPPER = np.array([6.0, 6.0, 3.0, 3.0, 40.0, 2.5, 40.0, 2.5, 4.0])
MIN_DISTILLED = 10  # rows the 9-parameter law needs at least.


@dataclasses.dataclass
class Rows:
  """A distillation CSV's runs: the supervised twins and the distilled students."""

  names: list
  params: np.ndarray
  tokens: np.ndarray
  loss: np.ndarray
  teacher_loss: np.ndarray  # nan for supervised rows.
  teacher_params: np.ndarray

  @property
  def distilled(self) -> np.ndarray:
    return np.isfinite(self.teacher_loss)

  def subset(self, idx: np.ndarray) -> 'Rows':
    idx = np.asarray(idx)
    if idx.dtype == bool:
      idx = np.flatnonzero(idx)
    return Rows([self.names[i] for i in idx], *(a[idx] for a in self.arrays()))

  def arrays(self) -> tuple:
    return self.params, self.tokens, self.loss, self.teacher_loss, self.teacher_params


def read(path: str, alpha: float = 1.0) -> Rows:
  """The CSV's supervised rows and its distilled rows at this `alpha` (when it has the column:
  the law is fitted to one objective, pure distillation by default) and seed 0 (repeats at other
  seeds measure the noise floor); ValueError naming the file
  and line for a missing or non-positive value."""
  rows = results_lib.read_dicts(path)
  rows = [r for r in rows if not (r.get('alpha') or '').strip() or float(r['alpha']) == alpha]
  rows = [r for r in rows if not (r.get('seed') or '').strip() or int(r['seed']) == 0]  # repeats.
  if not rows:
    raise ValueError(f'{path}: no rows')
  cols = {}
  for key in ('params', 'tokens', 'loss', 'teacher_loss', 'teacher_params'):
    vals = []
    for i, r in enumerate(rows, 2):
      text = (r.get(key) or '').strip()
      optional = key.startswith('teacher')
      if not text and optional:
        vals.append(math.nan)
        continue
      try:
        v = float(text)
      except ValueError:
        raise ValueError(f'{path}: line {i}: column {key!r} is {text!r}, not a number') from None
      if not v > 0:
        raise ValueError(f'{path}: line {i}: column {key!r} must be positive, got {v}')
      vals.append(v)
    cols[key] = np.array(vals)
  return Rows([r.get('name', str(i)) for i, r in enumerate(rows)], **cols)


def student_loss(theta: np.ndarray, l_t, n, d, l_sup) -> np.ndarray:
  """The law's L_S for teacher loss l_t, student size n, tokens d, supervised loss l_sup."""
  c0, c1, log_d1, log_f1, log_a, alpha, log_b, beta, gamma = theta
  f1 = np.exp(log_f1)
  gap = (1 + (l_t / (l_sup * np.exp(log_d1))) ** (1 / f1)) ** (-c1 * f1)
  power = (np.exp(log_a - alpha * np.log(n)) + np.exp(log_b - beta * np.log(d))) ** gamma
  return l_t + l_t**-c0 * gap * power


def supervised(constants: dict, n, d) -> np.ndarray:
  """The Chinchilla law E + A·N^-α + B·D^-β of the supervised fit."""
  c = constants
  return (
    c['E']
    + c['A'] * np.asarray(n, float) ** -c['alpha']
    + c['B'] * np.asarray(d, float) ** -c['beta']
  )


def fit_supervised(rows: Rows, chinchilla: ChinchillaFit) -> dict:
  """Chinchilla approach 3 on the supervised rows (the students' own law)."""
  sup = rows.subset(~rows.distilled)
  if len(sup.loss) < MIN_SUPERVISED:
    raise ValueError(f'distillation fit: {len(sup.loss)} supervised rows; the student law needs 5')
  runs = results_lib.Runs(sup.names, sup.params, sup.tokens, 6 * sup.params * sup.tokens, sup.loss)
  return chinchilla(runs)['constants']


def fit_theta(rows: Rows, sup: dict, starts: int = 32, seed: int = 0, x0=None) -> np.ndarray:
  """Least squares on log L_S over the distilled rows from random starts (and x0); the best θ."""
  dist = rows.subset(rows.distilled)
  if len(dist.loss) < MIN_DISTILLED:
    raise ValueError(
      f'distillation fit: {len(dist.loss)} distilled rows; the law needs {MIN_DISTILLED}'
    )
  l_sup = supervised(sup, dist.params, dist.tokens)
  resid = lambda th: np.log(
    student_loss(th, dist.teacher_loss, dist.params, dist.tokens, l_sup)
  ) - np.log(dist.loss)
  rng = np.random.default_rng(seed)
  inits = [] if x0 is None else [np.asarray(x0)]
  inits += [LOWER + rng.uniform(0.05, 0.6, len(NAMES)) * (UPPER - LOWER) for _ in range(starts)]
  best = None
  for p0 in inits:
    with np.errstate(all='ignore'):
      res = optimize.least_squares(resid, np.clip(p0, LOWER, UPPER), bounds=(LOWER, UPPER))
    if np.isfinite(res.cost) and (best is None or res.cost < best.cost):
      best = res
  if best is None:
    raise ValueError('distillation fit: no start converged')
  return best.x


def fit(rows: Rows, chinchilla: ChinchillaFit, n_boot: int = 0, seed: int = 0) -> dict:
  """Supervised law, then the distillation law; with n_boot, refits on resampled rows (both
  kinds resampled within themselves) for standard errors and 95 % intervals of θ."""
  sup = fit_supervised(rows, chinchilla)
  theta = fit_theta(rows, sup)
  dist = rows.subset(rows.distilled)
  pred = student_loss(
    theta, dist.teacher_loss, dist.params, dist.tokens, supervised(sup, dist.params, dist.tokens)
  )
  out = {
    'law': 'distillation',
    'supervised': sup,
    'theta': theta.tolist(),
    'constants': dict(zip(NAMES, theta.tolist())),
    'n_distilled': len(dist.loss),
    'n_supervised': int((~rows.distilled).sum()),
    'mean_abs_rel_error': float(np.mean(np.abs(pred / dist.loss - 1))),
  }
  out['log_residual_rms'] = float(np.sqrt(np.mean(np.log(pred / dist.loss) ** 2)))
  if n_boot:
    out['bootstrap'] = _bootstrap(rows, chinchilla, theta, n_boot, seed)
  out['warnings'] = warnings_of(out, float(np.min(rows.loss)))
  return out


def warnings_of(out: dict, lowest_loss: float) -> list[str]:
  """scaling/checks.py's warnings for both parts: the supervised Chinchilla fit and θ (its
  least-squares box LOWER..UPPER, its exponents, its bootstrap intervals)."""
  sup = checks.law_warnings(
    'distillation (supervised part)',
    out['supervised'],
    exponents=('alpha', 'beta'),
    floor='E',
    lowest_loss=lowest_loss,
  )
  boot = out.get('bootstrap') or {}
  theta = checks.law_warnings(
    'distillation',
    out['constants'],
    exponents=('alpha', 'beta'),
    bounds={n: (lo, hi) for n, lo, hi in zip(NAMES, LOWER, UPPER)},
    ci95=boot.get('ci95'),
  )
  if boot.get('failed'):
    theta.append(f'distillation fit: bootstrap: {boot["failed_because"]}')
  return sup + theta


def _bootstrap(rows: Rows, chinchilla: ChinchillaFit, theta: np.ndarray, k: int, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  groups = [np.flatnonzero(rows.distilled), np.flatnonzero(~rows.distilled)]
  samples, reasons = [], []
  for _ in range(k):
    idx = np.concatenate([rng.choice(g, len(g)) for g in groups])
    try:
      sub = rows.subset(idx)
      samples.append(fit_theta(sub, fit_supervised(sub, chinchilla), starts=2, seed=seed, x0=theta))
    except ValueError as e:
      reasons.append(str(e))
  if len(samples) < 2:
    raise ValueError(f'distillation bootstrap: {checks.failures(reasons, k)}')
  s = np.array(samples)
  return {
    'k': k,
    'failed': len(reasons),
    'failed_because': checks.failures(reasons, k) if reasons else '',
    'se': dict(zip(NAMES, s.std(0, ddof=1).tolist())),
    'ci95': {n: np.percentile(s[:, i], [2.5, 97.5]).tolist() for i, n in enumerate(NAMES)},
    'samples': s.tolist(),
  }


def predict(fitted: dict, teacher_loss, params, tokens) -> np.ndarray:
  """L_S from a fit() result."""
  sup = supervised(fitted['supervised'], params, tokens)
  return student_loss(np.asarray(fitted['theta']), np.asarray(teacher_loss, float), np.asarray(params, float),
                      np.asarray(tokens, float), sup)  # fmt: skip


def held_out(
  rows: Rows, hold: np.ndarray, chinchilla: ChinchillaFit, n_boot: int = 0, seed: int = 0
) -> list[dict]:
  """Fit without the distilled rows in `hold`, predict them: validate's row format (rel_error =
  predicted / observed - 1; lo, hi when asked: the 95 % interval of the bootstrap refits, each side
  widened in quadrature by t·s, s the fitted students' RMS log residual over n - 9 degrees of
  freedom, as scaling/holdout.py does: the bootstrap alone leaves their scatter about the law out)."""
  fitted = fit(rows.subset(~hold), chinchilla, n_boot, seed)
  held = rows.subset(hold & rows.distilled)
  pred = predict(fitted, held.teacher_loss, held.params, held.tokens)
  lo = hi = [None] * len(pred)
  if n_boot:
    draws = np.array([student_loss(np.array(th), held.teacher_loss, held.params, held.tokens,
                                   supervised(fitted['supervised'], held.params, held.tokens))
                      for th in fitted['bootstrap']['samples']])  # fmt: skip
    dof = fitted['n_distilled'] - len(NAMES)
    ts = 0.0
    if dof >= 1:
      rms = fitted['log_residual_rms'] * math.sqrt(fitted['n_distilled'] / dof)
      ts = float(stats.t.ppf(0.975, dof) * rms)
    lo, hi = checks.widen(pred, *np.percentile(draws, [2.5, 97.5], 0), ts)
    lo, hi = lo.tolist(), hi.tolist()
  return [
    {
      'name': n,
      'params': float(p),
      'tokens': float(d),
      'flops': 6.0 * p * d,
      'observed': float(o),
      'predicted': float(q),
      'rel_error': float(q / o - 1),
      'lo': a,
      'hi': b,
    }  # fmt: skip
    for n, p, d, o, q, a, b in zip(held.names, held.params, held.tokens, held.loss, pred, lo, hi)
  ]


def compute_optimal(
  fitted: dict,
  teacher_loss: float,
  compute: float,
  teacher_params: float = 0.0,
  params_range: tuple[float, float] | None = None,
) -> dict:
  """The student (N, D) with the lowest predicted loss at `compute` FLOPs, C = 6·N·D plus the
  teacher's forward passes 2·N_T·D when teacher_params is given (0: a teacher whose logits are
  already paid for); next to the supervised optimum at C = 6·N·D and which is lower. N is searched
  in `params_range` (default 100 .. C/60): keep it to the sizes the fit saw to avoid extrapolating."""
  sup = fitted['supervised']

  def tokens(log_n: float, teacher: float) -> float:
    return compute / (6 * math.exp(log_n) + 2 * teacher)

  def distilled(log_n: float) -> float:
    return float(predict(fitted, teacher_loss, math.exp(log_n), tokens(log_n, teacher_params)))

  def alone(log_n: float) -> float:
    return float(supervised(sup, math.exp(log_n), tokens(log_n, 0.0)))

  out = {'compute': compute, 'teacher_loss': teacher_loss, 'teacher_params': teacher_params}
  for key, f, teacher in (('distilled', distilled, teacher_params), ('supervised', alone, 0.0)):
    lo, hi = params_range or (1e2, compute / 6 / 10)
    log_n = _argmin(f, math.log(lo), math.log(min(hi, compute / 6 / 10)))
    out[key] = {'params': math.exp(log_n), 'tokens': tokens(log_n, teacher), 'loss': f(log_n)}
  out['distillation_wins'] = out['distilled']['loss'] < out['supervised']['loss']
  return out


def _argmin(f, lo: float, hi: float) -> float:
  """The minimiser of f on [lo, hi] (log N): a coarse grid, then bounded Brent around its best."""
  grid = np.linspace(lo, hi, 200)
  vals = [f(x) for x in grid]
  i = int(np.nanargmin(vals))
  a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
  res = optimize.minimize_scalar(f, bounds=(a, b), method='bounded', options={'xatol': 1e-6})
  return float(res.x) if res.fun <= vals[i] else float(grid[i])
