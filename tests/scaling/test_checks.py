"""Fits that flag themselves (scaling/checks.py) and the laws in which size and data interact, each
on synthetic data drawn from a known law: the clean case raises nothing, each fault its warning."""

import json

import numpy as np
import pytest
from test_fit import grid_runs

from scaling import checks, distill_law, fit, laws, predict, results

# A ladder-shaped design: 5 sizes, 5 token counts each, the small sizes trained longer.
N = np.repeat([6e4, 1.3e5, 2.2e5, 3.4e5, 4.8e5], 5)
D = np.concatenate([np.geomspace(1e5, 1.6e6, 5) * k for k in (8, 4, 2, 1.4, 1)])
INTERACTION = laws.Interaction(E=0.8, A=60.0, alpha=0.35, B=300.0, beta=0.35, gamma=0.03)
FARSEER = laws.Farseer(
  a1=-0.5, b1=-0.5, g1=-0.15, a2=0.0, b2=5.7, g2=-0.5, a3=-3.5, b3=3.7, g3=0.04
)
HELD = (np.array([6.5e5, 1.06e6]), np.array([1.0e7, 6.3e6]))  # 10x the largest fitted compute.


def _runs(loss_fn, noise=0.0, seed=0):
  loss = loss_fn(N, D) * np.exp(noise * np.random.default_rng(seed).standard_normal(N.size))
  return results.Runs([f'm{i}' for i in range(N.size)], N, D, 6 * N * D, loss)


def test_interaction_fit_recovers_its_law_and_extrapolates():
  truth = lambda n, d: laws.interaction_loss(INTERACTION, n, d)
  out = fit.fit(_runs(truth), 'interaction')
  c = out['constants']
  assert c['gamma'] == pytest.approx(INTERACTION.gamma, abs=1e-3)
  assert c['beta'] == pytest.approx(INTERACTION.beta, abs=5e-3)
  got = laws.interaction_loss(laws.Interaction(**c), *HELD)
  np.testing.assert_allclose(got, truth(*HELD), rtol=1e-3)
  assert out['warnings'] == []
  p = predict.predict(out, params=HELD[0][0], tokens=HELD[1][0])  # scaling.predict reads it too.
  assert p['loss'] == pytest.approx(got[0]) and 'extrapolated' in ' '.join(p['warnings'])
  # Chinchilla cannot express the interaction: it misses the same members by more.
  ch = fit.fit(_runs(truth), 'chinchilla')['constants']
  chin = laws.Chinchilla(**{k: ch[k] for k in ('E', 'A', 'B', 'alpha', 'beta')})
  assert np.max(np.abs(laws.chinchilla_loss(chin, *HELD) / truth(*HELD) - 1)) > 3e-3


def test_farseer_fit_recovers_its_surface():
  """Farseer's 9 constants are not each identified by 25 points; its surface is."""
  truth = lambda n, d: laws.farseer_loss(FARSEER, n, d)
  out = fit.fit(_runs(truth), 'farseer')
  got = laws.farseer_loss(laws.Farseer(**out['constants']), *HELD)
  np.testing.assert_allclose(got, truth(*HELD), rtol=5e-3)


def test_a_clean_chinchilla_fit_raises_no_warning():
  out = fit.fit(grid_runs(0, 0.005, 8, 8), 'chinchilla', n_polish=4)
  assert out['warnings'] == []
  assert out['fitted_range']['params'] == [1e7, 1e10]


def test_each_fault_has_its_warning():
  w = checks.law_warnings(
    'x',
    {'c1': 6.0, 'alpha': 2.31, 'E': 0.0, 'beta': 0.3, 'A': 5.0, 'log_B': 3.0},
    bounds={'c1': (0.0, 6.0), 'beta': (0.0, 2.5)},
    exponents=('alpha', 'beta'),
    floor='E',
    lowest_loss=1.1,
    ci95={'A': [2.0, 40.0], 'beta': [0.1, 1.7], 'log_B': [2.0, 22.0]},
  )
  text = '\n'.join(w)
  assert 'c1 = 6 sits on its upper bound 6' in text
  assert 'alpha = 2.31 is outside the range scaling exponents' in text
  assert 'E = 0: the law has no loss floor' in text
  assert 'A is not identified' in text and 'beta is not identified' in text
  assert 'log_B is not identified' in text
  assert len(w) == 6 and all(x.startswith('x fit: ') for x in w)
  above = checks.law_warnings('x', {'E': 1.2}, floor='E', lowest_loss=1.1)
  assert above == ['x fit: E = 1.2 is at or above the lowest fitted loss 1.1']
  iso = checks.law_warnings('isoflop', {'b': -0.55}, **fit.CHECKS['isoflop'])
  assert iso and 'b = -0.55 is outside [0, 1]' in iso[0]


def test_a_failed_bootstrap_says_why():
  runs = grid_runs(0, 0.01, 4, 4)
  calls = iter(range(100))

  def flaky(r):
    i = next(calls)
    if i % 4:
      raise ValueError('budget 1e+20 FLOPs has 2 model sizes, need at least 3' if i % 2 else 'nan')
    return {'constants': {'x': float(i)}}

  with pytest.raises(ValueError, match=r'15 of 20 resamples could not be fitted: 10 x budget'):
    fit.bootstrap(runs, flaky, 20)


def test_predict_warns_beyond_the_fitted_range_and_carries_the_fits_warnings(tmp_path, capsys):
  out = fit.fit(grid_runs(0, 0.01, 6, 6), 'chinchilla', n_boot=20, n_polish=4)
  out['warnings'] = ['chinchilla fit: E = 0: the law has no loss floor']
  path = tmp_path / 'fit.json'
  path.write_text(json.dumps(out))
  predict.main([f'--law={path}', '--params=1e9', '--tokens=2e11'])  # inside: no range warning.
  err = capsys.readouterr().err
  assert err.count('WARNING') == 1 and 'the fit flagged: chinchilla fit: E = 0' in err
  predict.main([f'--law={path}', '--compute=1e25'])
  err = capsys.readouterr().err
  assert 'WARNING: flops 1e+25 is' in err and 'the largest fitted' in err
  p = predict.predict(out, params=1e9, tokens=2e11)
  lo, hi = p['ci95']['loss']
  assert lo < p['loss'] < hi and 'scatter' in p['ci95_includes']


@pytest.mark.slow  # 32 starts of the 9-constant law per refit: ~15 s.
def test_distillation_intervals_include_the_residual_scatter():
  """Held-out students' intervals are the bootstrap's widened by t·s (never narrower)."""
  rng = np.random.default_rng(0)
  n_s = np.repeat([1e5, 2e5, 4e5], 6)
  d_s = np.tile(np.geomspace(1e6, 1e7, 6), 3)
  t_loss = np.tile([1.2, 1.5], 9)
  sup = {'E': 0.8, 'A': 60.0, 'B': 300.0, 'alpha': 0.35, 'beta': 0.35}
  theta = np.array([0.5, 1.0, 0.0, 0.0, 3.0, 0.3, 4.0, 0.3, 1.0])
  l_sup = distill_law.supervised(sup, n_s, d_s)
  loss = distill_law.student_loss(theta, t_loss, n_s, d_s, l_sup) * np.exp(
    0.01 * rng.standard_normal(n_s.size)
  )
  n_sup = np.repeat([1e5, 2e5, 4e5], 3)
  d_sup = np.tile([1e6, 3e6, 1e7], 3)
  rows = distill_law.Rows(
    [f'r{i}' for i in range(27)],
    np.concatenate([n_s, n_sup]),
    np.concatenate([d_s, d_sup]),
    np.concatenate([loss, distill_law.supervised(sup, n_sup, d_sup)]),
    np.concatenate([t_loss, np.full(9, np.nan)]),
    np.concatenate([np.full(18, 1e6), np.full(9, np.nan)]),
  )
  hold = np.zeros(27, bool)
  hold[12:18] = True  # the largest student.
  out = distill_law.held_out(rows, hold, fit.fit_chinchilla, n_boot=8)
  ts = [np.log(r['hi'] / r['predicted']) for r in out]
  assert all(t > 0.01 for t in ts)  # at least t·s (s ~ the 1 % noise), not the bootstrap alone.


def test_the_ptq_gap_law_flags_a_gap_that_shrinks_with_tokens():
  """Kumar et al.'s δ_PTQ ∝ D^γD / N^γN on its own synthetic data: recovered, no warning; a gap
  that falls with tokens (γ_D < 0) or three members only are flagged."""
  from scaling.studies import compression_report as rep

  def rows(gamma_d, sizes=(1e5, 3e5, 1e6), tokens=(2e6, 8e6, 3.2e7)):
    return [
      {
        'scheme': 'int4',
        'group': '0',
        'params': n,
        'tokens': d,
        'loss_float': 2.0,
        'loss': 2.0 + 5.0 * d**gamma_d / n**0.4,
      }  # fmt: skip
      for n in sizes
      for d in tokens
    ]

  clean = rep.kumar_fit(rows(0.3), 'int4', '0')
  assert abs(clean['gamma_D'] - 0.3) < 1e-6 and abs(clean['gamma_N'] - 0.4) < 1e-6
  assert clean['warnings'] == []
  shrinking = rep.kumar_fit(rows(-0.3), 'int4', '0')
  assert any('gamma_D' in w for w in shrinking['warnings'])
  few = rep.kumar_fit(rows(0.3, sizes=(1e5,)), 'int4', '0')
  assert any('too few' in w for w in few['warnings'])
