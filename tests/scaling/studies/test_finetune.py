"""scaling/studies/finetune.py's laws on their own synthetic data: Zhang et al.'s multiplicative law
recovered and extrapolated to a held-out base size, the scratch power law inverted into
effective data (Hernandez et al.), and the study's plan."""

import os

import numpy as np
import pytest

from scaling.studies import finetune

TRUE = np.array([np.log(40.0), 0.25, 0.15, 0.6])  # A = 40, alpha, beta, E


def _rows(noise: float, seed: int = 0) -> list[dict]:
  rng = np.random.default_rng(seed)
  rows = []
  for x in (7.5e4, 1.75e5, 3.7e5, 6.5e5):
    for d in (125, 500, 2000, 5000):
      for method, p in (('full', TRUE), ('lora4', TRUE + [0.1, 0, 0.02, 0.05])):
        loss = finetune.multiplicative(p, x, d) * (1 + noise * rng.standard_normal())
        rows.append({'name': f'{x:g}_{d}_{method}', 'base': f'b{x:g}', 'base_params': x,
                     'examples': d, 'method': method, 'task_loss': loss})  # fmt: skip
      scratch = finetune.power(np.array([np.log(30.0), 0.3, 0.9]), d)
      rows.append({'name': f'{x:g}_{d}_s', 'base': f'b{x:g}', 'base_params': x, 'examples': d,
                   'method': 'scratch', 'task_loss': scratch})  # fmt: skip
  return rows


def test_multiplicative_law_recovers_and_predicts_a_held_out_base():
  rows = _rows(noise=0.003)
  report = finetune.fit_report(rows, holdout_base='b650000')
  law = report['laws']['full']
  assert law['alpha'] == pytest.approx(0.25, abs=0.05) and law['beta'] == pytest.approx(
    0.15, abs=0.03
  )
  assert law['E'] == pytest.approx(0.6, abs=0.1)
  held = report['held_out']['full']
  assert len(held) == 4 and max(abs(h['rel_error']) for h in held) < 0.015
  assert report['laws']['lora4']['E'] == pytest.approx(0.65, abs=0.1)
  # noiseless: exact recovery of the generating parameters.
  exact = finetune.fit_report(_rows(noise=0.0), holdout_base='b650000')['laws']['full']
  np.testing.assert_allclose(
    [np.log(exact['A']), exact['alpha'], exact['beta'], exact['E']], TRUE, rtol=1e-3, atol=1e-3
  )


def test_effective_data_inverts_the_scratch_law():
  p = np.array([np.log(30.0), 0.3, 0.9])
  for d in (100.0, 3000.0):
    assert finetune.effective_examples(p, float(finetune.power(p, d))) == pytest.approx(d, rel=1e-6)
  assert finetune.effective_examples(p, 0.8) == float('inf')  # below the law's E
  report = finetune.fit_report(_rows(noise=0.0), holdout_base='b650000')
  # scratch rows are the same at every size here, so the fitted inverse is the generating one.
  t = next(t for t in report['transfer'] if t['name'] == '75000_125_full')
  loss = finetune.multiplicative(TRUE, 7.5e4, 125)
  assert t['effective'] == pytest.approx(finetune.effective_examples(p, loss), rel=1e-3)
  assert t['transferred'] == pytest.approx(t['effective'] - 125)


def test_plan_names_runs_and_refuses_unknown_methods():
  runs = finetune.plan(['w/ladder/N7.5e4/'], [125, 0], ['full', 'lora4'])
  assert [r[0] for r in runs] == [
    'N7.5e4_n125_full',
    'N7.5e4_n125_lora4',
    'N7.5e4_n0_full',
    'N7.5e4_n0_lora4',
  ]
  assert finetune.method_arg('lora16') == 'lora=16' and finetune.method_arg('scratch') == 'scratch'
  with pytest.raises(ValueError, match="--methods: 'lora' is not"):
    finetune.plan(['w'], [1], ['lora'])


def test_runs_are_jobs_of_one_run_each_and_gather_reads_their_results(tmp_path):
  """Each planned run is a scaling.parallel Job (this module with --run=<name>, narrowed to its
  base, examples and method), done once W/<run>/result.json holds its scored row; gather makes
  results.csv of those rows; a --run outside the plan is one usage error."""
  import csv
  import json

  base = tmp_path / 'N7.5e4'
  base.mkdir()
  (base / 'config.json').write_text('{}')
  work = tmp_path / 'study'
  runs = finetune.plan([str(base)], [125, 0], ['full', 'lora4'])
  jobs = finetune.jobs(str(work), runs)
  assert [j.name for j in jobs] == [r[0] for r in runs]
  job = jobs[1]
  assert job.argv[1:4] == ['-m', 'scaling.studies.finetune', f'--workdir={work}']
  assert job.argv[4:] == [
    f'--bases={base}',
    '--examples=125',
    '--methods=lora4',
    f'--run={job.name}',
  ]
  assert job.workdir == str(work / 'N7.5e4_n125_lora4') and not job.is_done()
  os.makedirs(job.workdir)
  row = {'name': job.name, 'method': 'lora4', 'task_loss': 1.5}
  (work / job.name / 'result.json').write_text(json.dumps(row))
  assert job.is_done() and not jobs[0].is_done()
  (work / 'data_n125').mkdir()
  with open(finetune.gather(str(work))) as f:
    got = list(csv.DictReader(f))
  assert [(r['name'], r['method'], r['task_loss']) for r in got] == [(job.name, 'lora4', '1.5')]
  flags = [f'--workdir={work}', f'--bases={base}', '--examples=125', '--methods=full']
  with pytest.raises(SystemExit) as e:
    finetune.main([*flags, '--run=N7.5e4_n125_lora4'])
  assert e.value.code == 2
