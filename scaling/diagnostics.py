"""What to know about a results CSV before trusting a fit to it: the seed noise floor (the spread of
the loss across seeds at one (N, D, lr)) and members too short to be in the laws' regime."""

import os

import numpy as np

from scaling import results as results_lib

MIN_STEPS = 200
MIN_COOLDOWN = 0.1  # WSD: the cooldown's share of the steps (Hägele et al. 2024 use 10-20 %).


def noise_floor(path: str | os.PathLike, params_col: str = 'params') -> dict | None:
  """Per (N, D, lr) run with 2+ seeds the loss's std over seeds (ddof 1) and the pooled std,
  absolute and relative to the mean; None when no (N, D, lr) has several seeds."""
  header, rows = results_lib.read_rows(path)
  if 'seed' not in header or params_col not in header:
    return None
  groups = {}
  for r in rows:
    key = tuple((r.get(c) or '').strip() for c in (params_col, 'tokens', 'lr'))
    groups.setdefault(key, {})[(r.get('seed') or '').strip()] = float(r['loss'])
  out = []
  for (n, d, lr), by_seed in groups.items():
    if len(by_seed) > 1:
      loss = np.array(list(by_seed.values()))
      std = float(np.std(loss, ddof=1))
      out.append(
        {
          'params': n,
          'tokens': d,
          'lr': lr,
          'seeds': len(loss),
          'std': std,
          'rel_std': std / float(loss.mean()),
        }
      )
  if not out:
    return None
  dof = np.array([g['seeds'] - 1 for g in out])
  pool = lambda key: float(np.sqrt(np.sum(dof * np.square([g[key] for g in out])) / dof.sum()))
  return {'groups': out, 'pooled_std': pool('std'), 'pooled_rel_std': pool('rel_std')}


def _reasons(r: dict, min_steps: int, min_cooldown: float) -> list:
  """Why one results row is suspect (empty: it is not)."""
  why = []
  try:
    steps = int(float(r['steps']))
  except (KeyError, TypeError, ValueError):
    return why
  if steps < min_steps:
    why.append(f'{steps} steps < {min_steps}')
  try:  # a WSD branch: the cooldown runs from branch_tokens to the end.
    cooldown = steps - float(r['branch_tokens']) / float(r['tokens_per_step'])
  except (KeyError, TypeError, ValueError, ZeroDivisionError):
    return why
  if cooldown < min_cooldown * steps:
    why.append(
      f'cooldown {cooldown:.0f} steps = {cooldown / steps:.0%} of {steps} < {min_cooldown:.0%}'
    )
  return why


def suspects(
  path: str | os.PathLike, min_steps: int = MIN_STEPS, min_cooldown: float = MIN_COOLDOWN
) -> list:
  """[{name, reason}] of the members with fewer than min_steps steps or (WSD branches) a cooldown
  shorter than min_cooldown of their steps."""
  out = []
  for r in results_lib.read_rows(path)[1]:
    why = _reasons(r, min_steps, min_cooldown)
    if why:
      out.append({'name': (r.get('name') or '').strip(), 'reason': '; '.join(why)})
  return out
