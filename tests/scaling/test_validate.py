"""Tests for the ladder's estimators (scaling/laws.py, fit.py, holdout.py, rollout.py, validate.py):
the lr areas of curves.csv by hand, the compute-only and whole-curve laws recovered from simulated
runs, held-out bias and interval coverage in simulation, the rollout, and scaling.validate's flags.

Simulated ladders follow laws.Curve (Tissue et al. 2024 with an N term) under the conventions of a
sweep's curves.csv: cosine schedules at 20 tokens per parameter, S1 / S2 from laws.lr_areas, each
member's losses scaled by exp(its seed offset + per-evaluation noise).
"""

import dataclasses
import functools
import json
import math
import re
import types

import ml_collections
import numpy as np
import pytest

from scaling import fit, holdout, laws, results, rollout, validate

TRUE_CURVE = laws.Curve(E=1.5, A=30.0, alpha=0.3, B=0.8, beta=0.5, C=0.3)
TRUE_COMPUTE = laws.Compute(E=1.2, A=50.0, alpha=0.12)
SIZES = np.geomspace(5e4, 2e6, 8)
TOKENS_PER_STEP = 4096


# --- the lr areas ------------------------------------------------------------------------------------


def test_lr_areas_by_hand():
  """S1 and S2 of six steps worked out by hand (decay 0.5; the 2 warmup steps count as the peak)."""
  s1, s2 = laws.lr_areas([0.0, 0.5, 1.0, 1.0, 0.5, 0.25], warmup=2, decay=0.5)
  np.testing.assert_allclose(s1, [0, 0.5, 1.5, 2.5, 3.0, 3.25])
  # drops 0, 0, 0, 0, 0.5, 0.25 -> m = 0, 0, 0, 0, 0.5, 0.5*0.5 + 0.25 -> S2 = cumulative sum.
  np.testing.assert_allclose(s2, [0, 0, 0, 0, 0.5, 1.0])


def _hand_lrs(schedule: str, steps: int, peak: float = 3e-3, warmup: int = 10) -> list:
  """lr of steps 1..steps (schedule count = step - 1) from the formulas, without optax; floor
  0.1 of the peak, WSD decay over round(0.25 steps)."""
  out, rest = [], steps - warmup
  decay = round(0.25 * steps)
  for count in range(steps):
    c = count - warmup
    if c < 0:
      out.append(peak * count / warmup)
    elif schedule == 'cosine':
      out.append(peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * c / rest))))
    else:
      out.append(peak - 0.9 * peak * min(max(c - (rest - decay), 0), decay) / decay)
  return out


def _hand_areas(lrs: list, warmup: int, lam: float = 0.999) -> tuple[list, list]:
  s1, s2, m, total = [], [], 0.0, 0.0
  flat = [lrs[warmup]] * warmup + lrs[warmup:]
  for i in range(len(lrs)):
    m = lam * m + (flat[max(i - 1, 0)] - flat[i])
    total += m
    s1.append(sum(lrs[: i + 1]))
    s2.append(total)
  return s1, s2


@pytest.mark.parametrize('schedule', ['cosine', 'wsd'])
def test_curve_columns_of_a_schedule_by_hand(schedule):
  """curves.csv's lr_now / lr_sum / lr_anneal come from train.optimizer's schedule: equal to the
  hand formulas, S2 0 through warmup (and WSD's stable phase) and positive once the lr falls."""
  opt = dict(lr=3e-3, schedule=schedule, warmup_steps=10, min_lr_ratio=0.1, decay_fraction=0.25)
  config = ml_collections.ConfigDict({'optimizer': opt})
  member = types.SimpleNamespace(config=config, info={'steps': 120})
  lrs, s1, s2 = results.schedule_areas(member)
  hand = _hand_lrs(schedule, 120)
  np.testing.assert_allclose(lrs, hand, rtol=1e-6, atol=1e-12)
  hand_s1, hand_s2 = _hand_areas(hand, 10)
  np.testing.assert_allclose(s1, hand_s1, rtol=1e-6)
  np.testing.assert_allclose(s2, hand_s2, rtol=1e-4, atol=1e-10)
  flat_until = 11 if schedule == 'cosine' else 120 - 30 + 1  # the first step whose lr fell.
  assert np.all(s2[:flat_until] == 0) and np.all(np.diff(s2[flat_until - 1 :]) > 0)


# --- simulated ladders -------------------------------------------------------------------------------


@functools.cache
def _schedules() -> tuple:
  """Per size: (eval steps after warmup, S1 and S2 there) of a cosine run at 20 tokens/param."""
  out = []
  for n in SIZES:
    steps = int(round(20 * n / TOKENS_PER_STEP))
    warmup = max(5, round(0.05 * steps))
    c = np.arange(steps - warmup)
    eta = 3e-3 * np.concatenate(
      [np.arange(warmup) / warmup, 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * c / (steps - warmup)))]
    )
    s1, s2 = laws.lr_areas(eta, warmup)
    ev = np.unique(np.round(np.linspace(steps / 12, steps, 12)).astype(int))
    ev = ev[ev > warmup]
    out.append((ev, s1[ev - 1], s2[ev - 1], warmup))
  return tuple(out)


def ladder(rng, member_noise=0.005, eval_noise=0.002, seeds=(0,)) -> results.Curves:
  """A ladder's curves on TRUE_CURVE; each (size, seed) member has its own offset."""
  cols = {k: [] for k in ('names', 'params', 'step', 'lr_sum', 'lr_anneal', 'loss')}
  for n, (ev, s1, s2, _) in zip(SIZES, _schedules()):
    for seed in seeds:
      off = member_noise * rng.standard_normal()
      loss = laws.curve_loss(TRUE_CURVE, n, s1, s2)
      cols['loss'] += list(loss * np.exp(off + eval_noise * rng.standard_normal(len(ev))))
      cols['names'] += [f'N{n:.3g}' + (f'_s{seed}' if seed else '')] * len(ev)
      cols['params'] += [n] * len(ev)
      cols['step'] += list(ev)
      cols['lr_sum'] += list(s1)
      cols['lr_anneal'] += list(s2)
  a = {k: np.array(v, float) for k, v in cols.items() if k != 'names'}
  tokens = a['step'] * TOKENS_PER_STEP
  return results.Curves(
    cols['names'], a['params'], tokens, 6 * a['params'] * tokens, a['loss'],
    step=a['step'], lr_sum=a['lr_sum'], lr_anneal=a['lr_anneal'],
  )  # fmt: skip


def compute_runs(rng, noise=0.005) -> results.Runs:
  """Compute-optimal runs on TRUE_COMPUTE over 1e13..1e18 FLOPs (N = sqrt(C / 120), D = 20 N)."""
  c = np.geomspace(1e13, 1e18, 10)
  n = np.sqrt(c / 120)
  loss = laws.compute_loss(TRUE_COMPUTE, c) * np.exp(noise * rng.standard_normal(len(c)))
  return results.Runs([f'r{i}' for i in range(len(c))], n, 20 * n, c, loss)


def test_compute_law_recovers_its_constants():
  """Exact data give the law back; with 0.2 % noise E and alpha come back close, closer with E
  pinned; only the compute-optimal runs are fitted; a pinned E above the losses is refused."""
  rng = np.random.default_rng(0)
  exact = fit.fit_compute(compute_runs(rng, noise=0.0))['constants']
  for k, v in dataclasses.asdict(TRUE_COMPUTE).items():
    assert exact[k] == pytest.approx(v, rel=1e-4), k
  runs = compute_runs(rng, noise=0.002)
  free = fit.fit_compute(runs)['constants']
  pinned = fit.fit_compute(runs, pin_E=TRUE_COMPUTE.E)['constants']
  assert abs(free['E'] - 1.2) < 0.05 and abs(free['alpha'] - 0.12) < 0.01
  assert pinned['E'] == 1.2 and abs(pinned['alpha'] - 0.12) < 0.003
  assert pinned['A'] == pytest.approx(50.0, rel=0.05)
  worse = results.Runs(
    runs.names + ['slow'], *(np.append(x, y) for x, y in
                             [(runs.params, 1.0), (runs.tokens, 1.0), (runs.flops, 2e17), (runs.loss, 9.0)])
  )  # fmt: skip
  assert 'slow' not in [worse.names[i] for i in fit.compute_optimal(worse)]
  assert len(fit.compute_optimal(worse)) == len(runs)
  with pytest.raises(ValueError, match='pin_E=5'):
    fit.fit_compute(runs, pin_E=5.0)


def test_curve_law_recovers_its_constants():
  """From every evaluation of 8 sizes: exact curves give the 6 constants back; with seed offsets
  (0.3 %) and evaluation noise (0.1 %) the exponents and C come back close."""
  exact = fit.fit_curve(ladder(np.random.default_rng(0), 0.0, 0.0))['constants']
  for k, v in dataclasses.asdict(TRUE_CURVE).items():
    assert exact[k] == pytest.approx(v, rel=1e-3), k
  noisy = fit.fit_curve(ladder(np.random.default_rng(1), 0.003, 0.001))['constants']
  assert abs(noisy['beta'] - 0.5) < 0.03 and abs(noisy['C'] - 0.3) < 0.03
  assert abs(noisy['alpha'] - 0.3) < 0.1 and abs(noisy['B'] - 0.8) < 0.08


def _coverage(law, draw, in_fit, truth, n_rep, n_boot, pin_E=None) -> dict:
  """Over n_rep simulated data sets: held-out error against the truth, and how often the observed
  loss falls inside the prediction interval and inside the bootstrap's own interval."""
  err, inside, boot_inside, width = [], [], [], []
  for rep in range(n_rep):
    pts = draw(np.random.default_rng(100 + rep))
    opts = holdout.Options(n_boot=n_boot, seed=rep, pin_E=pin_E)
    r = holdout.held_out(law, pts, in_fit(pts), opts)
    for i, row in enumerate(r.rows):
      err.append(row['predicted'] / truth(row) - 1)
      inside.append(row['lo'] <= row['observed'] <= row['hi'])
      boot_inside.append(r.boot[0][i] <= row['observed'] <= r.boot[1][i])
      width.append((row['hi'] - row['lo']) / 2 / row['predicted'])
  return {
    'bias': float(np.mean(err)),
    'rms': float(np.sqrt(np.mean(np.square(err)))),
    'coverage': float(np.mean(inside)),
    'boot_coverage': float(np.mean(boot_inside)),
    'half_width': float(np.median(width)),
  }


@pytest.mark.slow  # (15 s; by default: the validate CLI's held-out rows and rollout, test_fit's bootstrap)
def test_compute_law_held_out_bias_and_coverage_in_simulation():
  """E pinned (Marin), fitted on the 6 smallest of 10 runs, predicting 3.6x to 170x beyond: no
  bias, errors at the 0.5 % noise, and the interval covers at least ~95 % while staying narrow;
  the bootstrap alone (the fit's own uncertainty, not the runs' scatter about the law) covers less."""
  s = _coverage(
    'compute', compute_runs, lambda p: np.arange(len(p)) < 6,
    lambda row: laws.compute_loss(TRUE_COMPUTE, row['flops']), 30, 40, pin_E=TRUE_COMPUTE.E,
  )  # fmt: skip
  assert abs(s['bias']) < 0.002 and s['rms'] < 0.008, s
  assert 0.88 <= s['coverage'] <= 1.0 and s['half_width'] < 0.025, s
  assert s['boot_coverage'] < s['coverage'], s


@pytest.mark.slow  # (65 s: 40 simulated ladders; the compute law's simulation above is faster)
def test_curve_law_held_out_bias_and_coverage_in_simulation():
  """The whole-curve law fitted on every evaluation of the 6 smallest sizes predicts the final
  loss of the 2 largest (up to 7x the fitted compute): small bias, near-nominal coverage."""
  s = _coverage(
    'curve', ladder, lambda p: p.params <= SIZES[5],
    lambda row: laws.curve_loss(TRUE_CURVE, row['params'], *_final_areas(row['params'])), 24, 40,
  )  # fmt: skip
  assert abs(s['bias']) < 0.006 and s['rms'] < 0.025, s
  assert 0.85 <= s['coverage'] <= 1.0 and s['half_width'] < 0.08, s


def _final_areas(n: float) -> tuple:
  ev, s1, s2, _ = _schedules()[int(np.argmin(np.abs(SIZES - n)))]
  return s1[-1], s2[-1]


# --- the rollout and the command line ----------------------------------------------------------------


def test_rollout_rows_and_summary():
  """k = 4..7 smallest sizes fitted, every larger size predicted: 10 rows with their ratio and
  coverage, summarised by ratio bin; the fit on more sizes predicts the next size better. k = 2
  cannot fix E + A·N^-alpha, k = 3 fixes it exactly (no scatter left to measure): skipped, saying
  why."""
  pts = ladder(np.random.default_rng(3), 0.003, 0.001)
  out = rollout.rollout('curve', pts, holdout.Options(n_boot=6))
  rows = out['rows']
  assert len(rows) == sum(8 - k for k in range(4, 8))
  assert [s['k'] for s in out['skipped']] == [2, 3]
  assert '2 sizes' in out['skipped'][0]['reason']
  assert 'no degrees of freedom' in out['skipped'][1]['reason']
  for r in rows:
    assert r['ratio'] > 1 and isinstance(r['covered'], bool)
    assert r['fitted_flops'] * r['ratio'] == pytest.approx(r['flops'])
    assert set(r) >= {'name', 'params', 'observed', 'predicted', 'rel_error', 'lo', 'hi', 'k'}
  assert sum(b['n'] for b in out['by_ratio']) == len(rows)
  next_size = {r['k']: abs(r['rel_error']) for r in rows if r['params'] == SIZES[r['k']]}
  assert next_size[7] < next_size[4]
  assert 'ratio (1, 3]' in rollout.table('curve', out)


def _write_ladder(tmp_path, seeds_at=2) -> tuple:
  """results.csv and curves.csv of a simulated ladder, a second seed for the `seeds_at` smallest
  sizes, one WSD branch with a 5 % cooldown."""
  pts = ladder(np.random.default_rng(4), 0.003, 0.001, seeds=(0, 1))
  keep = [
    i for i, n in enumerate(pts.names) if '_s1' not in n or pts.params[i] <= SIZES[seeds_at - 1]
  ]
  pts = pts.subset(keep)
  curve_rows, result_rows = [], []
  for i, name in enumerate(pts.names):
    seed = int('_s1' in name)
    row = {'name': name, 'params': pts.params[i], 'non_embedding_params': 0.9 * pts.params[i],
           'tokens': pts.tokens[i], 'flops': pts.flops[i], 'loss': pts.loss[i], 'lr': 3e-3,
           'seed': seed, 'step': pts.step[i], 'lr_sum': pts.lr_sum[i], 'lr_anneal': pts.lr_anneal[i],
           'warmup_steps': 5, 'steps': pts.step[i], 'tokens_per_step': TOKENS_PER_STEP}  # fmt: skip
    curve_rows.append(row)
  for i in results.final_rows(pts).values():
    result_rows.append(dict(curve_rows[i]))
  result_rows[-1]['branch_tokens'] = 0.95 * result_rows[-1]['tokens']
  cols = list(curve_rows[0]) + ['branch_tokens']
  results.write_csv(tmp_path / 'results.csv', result_rows, cols)
  results.write_csv(tmp_path / 'curves.csv', curve_rows, cols)
  return result_rows


def test_validate_cli_new_laws_rollout_and_diagnostics(tmp_path, capsys):
  """--laws with the new laws, --curves, --pin_E, --rollout / --rollout_out: the final JSON keeps
  its rows, the rollout file holds every law's rows and summary, the suspect members and the seed
  noise floor are printed."""
  rows = _write_ladder(tmp_path)
  cut = sorted(float(r['flops']) for r in rows)[-3] * 1.01
  validate.main([
    f'--results={tmp_path / "results.csv"}', f'--curves={tmp_path / "curves.csv"}',
    '--laws=kaplan,compute,curve', f'--fit_below={cut}', '--bootstrap=4', '--min_steps=300',
    '--pin_E=1.5', '--rollout', f'--rollout_out={tmp_path / "rollout.json"}',
    f'--rollout_png={tmp_path / "rollout.png"}', f'--curves_png={tmp_path / "curves.png"}',
  ])  # fmt: skip
  assert all((tmp_path / f).stat().st_size > 10_000 for f in ('rollout.png', 'curves.png'))
  out = capsys.readouterr().out
  report = json.loads(out.strip().splitlines()[-1])
  assert set(report) == {'kaplan', 'compute', 'curve'}
  keys = {'name', 'params', 'tokens', 'flops', 'observed', 'predicted', 'rel_error', 'lo', 'hi'}
  assert all(set(r) == keys for rows_ in report.values() for r in rows_)
  assert len(report['curve']) == 2 and all(r['lo'] < r['hi'] for r in report['curve'])
  assert f'N{SIZES[0]:.3g}: 244 steps < 300' in out and 'cooldown' in out
  assert 'seed noise floor: pooled std' in out and 'over 2 (N, D, lr) with several seeds' in out
  assert 'whole curves: mean |rel error|' in out and 'curve rollout' in out
  roll = json.loads((tmp_path / 'rollout.json').read_text())
  assert set(roll['laws']) == {'kaplan', 'compute', 'curve'} and len(roll['suspect']) == 3
  curve = roll['laws']['curve']
  ks = [r['k'] for r in curve['rows']]
  assert sorted(set(ks) | {s['k'] for s in curve['skipped']}) == list(range(2, 8))
  assert all(ks.count(k) == 8 - k for k in set(ks)) and 7 in ks
  assert roll['noise_floor']['pooled_std'] > 0
  assert all(r['covered'] in (True, False) for r in roll['laws']['compute']['rows'])
  # --rollout alone (no --fit_below): the fit set's own rollout and a score per law, to choose one.
  validate.main([f'--results={tmp_path / "results.csv"}', '--laws=kaplan,interaction', '--rollout',
                 '--rollout_score_ks=3,4'])  # fmt: skip
  out = capsys.readouterr().out
  assert re.search(r'rollout score kaplan: mean \|error\| [0-9.]+% over \d+ predictions', out)
  assert 'rollout score interaction: mean |error|' in out


def test_validate_cli_errors_and_old_curves(tmp_path, capsys):
  """One `error:` line, exit 2: --laws=curve without --curves, --pin_E without the compute law, a
  curves.csv from before the lr areas (which approach 1's reader still takes)."""
  _write_ladder(tmp_path)
  base = [f'--results={tmp_path / "results.csv"}', '--fit_below=1e14']
  old = tmp_path / 'old_curves.csv'
  header, curve_rows = results.read_rows(tmp_path / 'curves.csv')
  results.write_csv(old, curve_rows, [c for c in header if c not in results.CURVE_LAW_COLUMNS])
  assert len(results.read_results(old, lr=None)) == len(curve_rows)
  for argv, needle in [
    (['--laws=curve'], '--curves'),
    (['--laws=kaplan', '--pin_E=1.0'], '--pin_E'),
    (['--laws=kaplan', '--rollout_png=x.png'], '--rollout'),
    (['--laws=kaplan', '--curves_png=x.png'], '--curves_png'),
    (['--laws=curve', f'--curves={old}'], "missing column 'step'"),
  ]:
    with pytest.raises(SystemExit) as e:
      validate.main(base + argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and needle in err and err.count('\n') == 1, err


def test_fit_cli_compute_and_curve_laws(tmp_path, capsys):
  """scaling.fit --law=compute (compute-optimal runs, --pin_E) and --law=curve (a curves.csv;
  bootstrap over whole members) give their law's constants back from a simulated ladder."""
  runs = compute_runs(np.random.default_rng(0), noise=0.001)
  results.write_results(tmp_path / 'runs.csv', runs)
  fit.main([f'--results={tmp_path / "runs.csv"}', '--law=compute', '--pin_E=1.2'])
  out = json.loads(capsys.readouterr().out)
  assert out['pinned_E'] == 1.2 and out['n_runs'] == len(runs)
  assert out['constants']['alpha'] == pytest.approx(TRUE_COMPUTE.alpha, rel=0.05)
  _write_ladder(tmp_path)
  fit.main([f'--results={tmp_path / "curves.csv"}', '--law=curve', '--bootstrap=4'])
  out = json.loads(capsys.readouterr().out)
  c = out['constants']
  assert c['alpha'] == pytest.approx(TRUE_CURVE.alpha, abs=0.1), c
  assert c['E'] == pytest.approx(TRUE_CURVE.E, rel=0.1), c
  assert len(out['bootstrap']['samples']['E']) + out['bootstrap']['failed'] == 4
  with pytest.raises(SystemExit) as e:
    fit.main([f'--results={tmp_path / "runs.csv"}', '--law=kaplan', '--pin_E=1.0'])
  assert e.value.code == 2 and '--pin_E' in capsys.readouterr().err


def test_curve_areas_per_token_put_members_with_different_batches_on_one_scale(tmp_path):
  """areas='tokens': S1 and S2 weighted by each member's tokens per step (per million), so two
  members with the same lr schedule in tokens get the same areas whatever their batch."""
  rows = []
  for name, per_step in (('small_batch', 1024), ('large_batch', 2048)):
    for step in (100, 200, 400):
      s = step * 1024 // per_step  # the same tokens: half the steps at twice the batch.
      rows.append({'name': name, 'params': 1e5, 'tokens': s * per_step, 'flops': 1.0, 'loss': 2.0,
                   'step': s, 'lr_sum': 0.01 * s, 'lr_anneal': 0.0, 'lr': 0.01})  # fmt: skip
  results.write_csv(tmp_path / 'c.csv', rows, list(rows[0]))
  by_tokens = results.read_curves(tmp_path / 'c.csv', skip_warmup=False, lr=None)
  by_steps = results.read_curves(tmp_path / 'c.csv', skip_warmup=False, lr=None, areas='steps')
  small, large = by_tokens.lr_sum[:3], by_tokens.lr_sum[3:]
  np.testing.assert_allclose(small, large)  # one scale in tokens,
  np.testing.assert_allclose(by_steps.lr_sum[:3], 2 * by_steps.lr_sum[3:])  # two in steps.
  np.testing.assert_allclose(small, [0.01 * s * 1024 / 1e6 for s in (100, 200, 400)])
  with pytest.raises(ValueError, match="areas must be 'tokens' or 'steps'"):
    results.read_curves(tmp_path / 'c.csv', lr=None, areas='bytes')
