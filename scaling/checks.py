"""Fits that flag themselves: a fitted law's constants on (or near) their bounds, exponents outside
the range LM scaling laws have been measured in, an irreducible loss at zero or above the data,
and constants the bootstrap does not pin down, as WARNING lines and a `warnings` list in the JSON.

A fit that lands on a bound or at E = 0 has not found a minimum of the law's form, and its
extrapolation is the bound's, not the data's; an exponent of 2 says the fitted range is too narrow
to tell the power law from something else. Published exponents lie in EXPONENTS: Kaplan et al.
2020 α_N 0.076, α_D 0.095; Hoffmann et al. 2022 α 0.34, β 0.28; Besiroglu et al. 2024 0.35, 0.37.
"""

import math
import sys
from collections.abc import Mapping, Sequence

import numpy as np

EXPONENTS = (0.02, 1.0)  # a fitted scaling exponent outside this is flagged.
NEAR = 1e-3  # within this share of a bound's range (or relative to a bound of 0) is on it.
SPAN = (
  10.0  # a positive constant whose bootstrap 95 % interval spans more than 10x: not identified.
)
EXPONENT_SPAN = 0.5  # an exponent whose interval is wider than this: not identified.


def on_bound(name: str, value: float, lo: float | None, hi: float | None) -> str | None:
  """'name = v sits on its lower/upper bound b' or None."""
  width = (hi - lo) if lo is not None and hi is not None and math.isfinite(hi - lo) else None
  for side, b in (('lower', lo), ('upper', hi)):
    if b is None or not math.isfinite(b):
      continue
    tol = NEAR * (width if width else max(abs(b), 1.0))
    if abs(value - b) <= tol:
      return (
        f'{name} = {value:.4g} sits on its {side} bound {b:.4g}: the fit did not find a minimum'
      )
  return None


def law_warnings(
  law: str,
  constants: Mapping[str, float],
  *,
  bounds: Mapping[str, tuple] | None = None,
  exponents: Sequence[str] = (),
  ranges: Mapping[str, tuple] | None = None,
  floor: str | None = None,
  lowest_loss: float | None = None,
  ci95: Mapping[str, Sequence[float]] | None = None,
) -> list[str]:
  """The warnings of one fit: `bounds` {name: (lo, hi)} the optimizer's box, `exponents` the names
  to hold to EXPONENTS, `floor` the irreducible loss's name (checked against 0 and lowest_loss),
  `ranges` {name: (lo, hi, why)} other plausible ranges, `ci95` the bootstrap's intervals
  (non-identified constants)."""
  out = []
  for name, (lo, hi) in (bounds or {}).items():
    if name in constants and (w := on_bound(name, float(constants[name]), lo, hi)):
      out.append(w)
  lo_e, hi_e = EXPONENTS
  for name in exponents:
    v = constants.get(name)
    if v is not None and math.isfinite(v) and not lo_e <= v <= hi_e:
      out.append(
        f'{name} = {v:.4g} is outside the range scaling exponents are measured in '
        f'[{lo_e:g}, {hi_e:g}]: the fitted range cannot tell this power law apart'
      )
  for name, (lo, hi, why) in (ranges or {}).items():
    v = constants.get(name)
    if v is not None and math.isfinite(v) and not lo <= v <= hi:
      out.append(f'{name} = {v:.4g} is outside [{lo:g}, {hi:g}] ({why})')
  if floor is not None and floor in constants:
    e = float(constants[floor])
    if lowest_loss is not None and e <= NEAR * lowest_loss:
      out.append(f'{floor} = {e:.4g}: the law has no loss floor (degenerate: E absorbed elsewhere)')
    elif lowest_loss is not None and e >= lowest_loss:
      out.append(f'{floor} = {e:.4g} is at or above the lowest fitted loss {lowest_loss:.4g}')
  for name, iv in (ci95 or {}).items():
    if name not in constants or len(iv) != 2 or not all(map(math.isfinite, iv)):
      continue
    lo, hi = float(iv[0]), float(iv[1])
    if name in exponents and hi - lo > EXPONENT_SPAN:
      out.append(f'{name} is not identified: its bootstrap 95 % interval is [{lo:.3g}, {hi:.3g}]')
    elif name.startswith('log_') and hi - lo > math.log(SPAN):
      out.append(f'{name} is not identified: its bootstrap 95 % interval is [{lo:.3g}, {hi:.3g}]')
    elif name not in exponents and lo > 0 and hi / lo > SPAN:
      out.append(f'{name} is not identified: its bootstrap 95 % interval is [{lo:.3g}, {hi:.3g}]')
  return [f'{law} fit: {w}' for w in out]


def failures(reasons: Sequence[str], k: int) -> str:
  """'n of k resamples could not be fitted: 150 x <reason>; 36 x <reason>' (most common first)."""
  counts = {}
  for r in reasons:
    counts[r] = counts.get(r, 0) + 1
  top = sorted(counts.items(), key=lambda kv: -kv[1])
  return (
    f'{len(reasons)} of {k} resamples could not be fitted: '
    + '; '.join(f'{n} x {r}' for r, n in top[:3])
    + (f'; {len(top) - 3} other reasons' if len(top) > 3 else '')
  )


def fitted_range(params: np.ndarray, tokens: np.ndarray, flops: np.ndarray) -> dict:
  """{params, tokens, flops: [min, max]} of the rows a law was fitted on (scaling.predict's check)."""
  return {
    k: [float(np.min(v)), float(np.max(v))]
    for k, v in (('params', params), ('tokens', tokens), ('flops', flops))
  }


def beyond(fitted: Mapping[str, Sequence[float]], **asked: float) -> list[str]:
  """Warnings for each asked quantity (params=, tokens=, flops=) outside the fitted range."""
  out = []
  for key, v in asked.items():
    if v is None or key not in fitted:
      continue
    lo, hi = fitted[key]
    if v > hi * (1 + NEAR):
      out.append(f'{key} {v:.4g} is {v / hi:.3g}x the largest fitted ({hi:.4g}): extrapolated')
    elif v < lo * (1 - NEAR):
      out.append(f'{key} {v:.4g} is below the smallest fitted ({lo:.4g}): extrapolated')
  return out


def widen(
  pred: np.ndarray, lo: np.ndarray, hi: np.ndarray, ts: float
) -> tuple[np.ndarray, np.ndarray]:
  """The bootstrap interval [lo, hi] around pred, each side widened in quadrature by ts (log): a
  prediction interval includes the fitted rows' scatter (validate, predict, the distillation law)."""
  lp = np.log(pred)
  down = np.hypot(np.maximum(lp - np.log(lo), 0.0), ts)
  up = np.hypot(np.maximum(np.log(hi) - lp, 0.0), ts)
  return pred * np.exp(-down), pred * np.exp(up)


def emit(warnings: Sequence[str]) -> None:
  """Each warning as one 'WARNING: ...' line on stderr."""
  for w in warnings:
    print(f'WARNING: {w}', file=sys.stderr, flush=True)
