"""Leave-future-out ("rollout") errors of a law: for each k, fitted on the members of the k smallest
sizes, it predicts the final loss of every larger member; error and interval coverage against the
extrapolation ratio (a held-out member's FLOPs / the largest fitted member's FLOPs)."""

import numpy as np

from scaling import holdout

RATIO_BINS = (1.0, 3.0, 10.0, 30.0, 100.0, np.inf)


def rollout(law: str, pts: holdout.Points, opts: holdout.Options, min_sizes: int = 2) -> dict:
  """{'rows': one per (k, held-out member): validate's row plus k, ratio and covered; 'skipped':
  [{k, reason}] where the fit on k sizes failed; 'by_ratio': summary(rows)}."""
  sizes = np.unique(pts.params)
  flops = holdout.member_flops(pts)
  rows, skipped = [], []
  for k in range(min_sizes, len(sizes)):
    in_fit = pts.params <= sizes[k - 1]
    try:
      result = holdout.held_out(law, pts, in_fit, opts)
    except ValueError as e:
      skipped.append({'k': k, 'reason': str(e)})
      continue
    largest = float(flops[in_fit].max())
    for r in result.rows:
      covered = None if r['lo'] is None else bool(r['lo'] <= r['observed'] <= r['hi'])
      rows.append(
        {'k': k, 'fitted_flops': largest, 'ratio': r['flops'] / largest, **r, 'covered': covered}
      )
  return {'rows': rows, 'skipped': skipped, 'by_ratio': summary(rows)}


def summary(rows: list) -> list:
  """Per extrapolation-ratio bin: count, mean and max |rel error|, mean signed error, coverage."""
  out = []
  for lo, hi in zip(RATIO_BINS[:-1], RATIO_BINS[1:]):
    inside = [r for r in rows if lo < r['ratio'] <= hi]
    if not inside:
      continue
    err = np.array([r['rel_error'] for r in inside])
    cov = [r['covered'] for r in inside if r['covered'] is not None]
    out.append(
      {
        'ratio': [lo, None if np.isinf(hi) else hi],
        'n': len(inside),
        'mean_abs_error': float(np.abs(err).mean()),
        'max_abs_error': float(np.abs(err).max()),
        'mean_error': float(err.mean()),
        'coverage': float(np.mean(cov)) if cov else None,
      }
    )
  return out


def table(law: str, out: dict) -> str:
  """The rollout as text: one line per (k, member), then the summary by ratio."""
  lines = [f'{law} rollout (fit on the k smallest sizes, predict every larger member):']
  for s in out['skipped']:
    lines.append(f'  k={s["k"]}: not fitted ({s["reason"]})')
  for r in out['rows']:
    ci = (
      ''
      if r['lo'] is None
      else f' [{r["lo"]:.4f}, {r["hi"]:.4f}]' + (' inside' if r['covered'] else ' OUTSIDE')
    )
    lines.append(
      f'  k={r["k"]} {r["name"]:<28} x{r["ratio"]:<8.3g} observed {r["observed"]:.4f} '
      f'predicted {r["predicted"]:.4f} ({r["rel_error"]:+.2%}){ci}'
    )
  for b in out['by_ratio']:
    hi = '' if b['ratio'][1] is None else f'{b["ratio"][1]:g}'
    cov = '' if b['coverage'] is None else f', coverage {b["coverage"]:.0%}'
    lines.append(
      f'  ratio ({b["ratio"][0]:g}, {hi or "inf"}]: {b["n"]} predictions, mean |error| '
      f'{b["mean_abs_error"]:.2%} (max {b["max_abs_error"]:.2%}, mean {b["mean_error"]:+.2%}){cov}'
    )
  return '\n'.join(lines)
