"""The compression study's tables, fits and plots from its runs and CSVs (scaling/compression.py):
recovery curves and tokens-to-match, one-shot and gradual sparsity with the law of Frantar et al.
2023, and the weight-quantization gap against bits and tokens per parameter (Kumar et al. 2024)."""

import csv
import json
import os

import numpy as np
from scipy import optimize

# --- Frantar et al. 2023 at a fixed tokens-per-parameter ratio -----------------------------------


def sparse_law(p: np.ndarray, s: np.ndarray, n: np.ndarray) -> np.ndarray:
  """L(S, N) = (a_S·(1 - S)^b_S + c_S)·N^-b_N + E, their eq. 1 without the data term (every run
  here is at 20 tokens per parameter); p = (a_S, b_S, c_S, b_N, E), N in millions."""
  a_s, b_s, c_s, b_n, e = p
  return (a_s * (1 - s) ** b_s + c_s) * (n / 1e6) ** -b_n + e


def fit_sparse_law(s, n, loss, starts: int = 24, seed: int = 0) -> np.ndarray:
  """Least squares in log L from `starts` random starts; the best p."""
  s, n, loss = (np.asarray(v, float) for v in (s, n, loss))
  rng = np.random.default_rng(seed)
  best = None
  for _ in range(starts):
    p0 = [rng.uniform(0.1, 2), rng.uniform(0.1, 2), rng.uniform(0.1, 2), rng.uniform(0.05, 0.8),
          rng.uniform(0, loss.min())]  # fmt: skip
    res = optimize.least_squares(
      lambda p: np.log(sparse_law(p, s, n)) - np.log(loss),
      p0,
      bounds=([0, 0, 0, 0, 0], [50, 5, 50, 3, loss.min()]),
    )
    if best is None or res.cost < best.cost:
      best = res
  return best.x


def _rows(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return list(csv.DictReader(f))


def _write(path: str, rows: list[dict]) -> None:
  if not rows:
    return
  with open(path, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)


def _final_eval(workdir: str) -> float:
  """The last eval/loss in a run's metrics.jsonl."""
  last = float('nan')
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      m = json.loads(line)
      last = m.get('eval/loss', last)
  return last


def gradual(runs: dict, ladder: str, done: str) -> list[dict]:
  """Gradual-sparsity runs' final loss next to their dense twin's (the ladder member's); `runs`:
  {base: {sparsity: workdir}}, a run counted once its `done` marker exists."""
  rows = []
  for base, by_sparsity in runs.items():
    with open(os.path.join(ladder, base, 'result.json')) as f:
      dense = json.load(f)
    rows.append({'base': base, 'params': dense['params'], 'sparsity': 0.0, 'loss': dense['loss']})
    for s, run in by_sparsity.items():
      if os.path.exists(os.path.join(run, done)):
        rows.append(
          {'base': base, 'params': dense['params'], 'sparsity': s, 'loss': _final_eval(run)}
        )
  return rows
