"""The distillation scaling law (scaling/distill_law.py) on its own synthetic data: the fit
recovers what the data identify, predicts held-out students, and the compute-optimal solver
agrees with a brute-force search."""

import numpy as np
import pytest

from scaling import distill_law as dl
from scaling import fit as fit_lib

SUP = {'E': 0.9, 'A': 60.0, 'B': 200.0, 'alpha': 0.34, 'beta': 0.3}
TRUE = np.array([1.0, 1.5, 0.0, np.log(0.3), np.log(40.0), 0.3, np.log(150.0), 0.28, 1.0])


def _rows(teachers, students, tokens, seed=0, noise=0.002):
  rng = np.random.default_rng(seed)
  names, cols = [], []
  for n in (5e4, 1e5, 2e5, 4e5):
    for d in (1e6, 2e6, 4e6, 8e6):
      names.append(f'sup_{n:g}_{d:g}')
      cols.append((n, d, dl.supervised(SUP, n, d) * np.exp(rng.normal(0, noise)), np.nan))
  for lt in teachers:
    for n in students:
      for d in tokens:
        names.append(f'kd_{lt}_{n:g}_{d:g}')
        loss = dl.student_loss(TRUE, lt, n, d, dl.supervised(SUP, n, d))
        cols.append((n, d, float(loss) * np.exp(rng.normal(0, noise)), lt))
  p, d, loss, lt = (np.array(c, float) for c in zip(*cols))
  return dl.Rows(names, p, d, loss, lt, np.full(len(p), np.nan))


@pytest.fixture(scope='module')
def fitted():
  rows = _rows((1.2, 1.6, 2.0, 2.5, 3.2), (5e4, 1e5, 2e5), (1e6, 4e6))
  return rows, dl.fit(rows, fit_lib.fit_chinchilla)


def test_fit_recovers_the_identified_parameters_and_predicts_held_out_students(fitted):
  rows, f = fitted
  assert f['mean_abs_rel_error'] < 0.003  # the noise is 0.2 %.
  theta = np.array(f['theta'])
  # c0 and the student term's exponents are identified by this design; the gap's (c1, d1, f1)
  # trade off against each other when every teacher is stronger than its student alone.
  np.testing.assert_allclose(theta[[0, 5, 7, 8]], TRUE[[0, 5, 7, 8]], rtol=0.15)
  # A larger student and a stronger teacher than any fitted, with more tokens.
  for lt, n, d in ((1.0, 4e5, 8e6), (1.4, 3e5, 2e6), (2.8, 7e4, 6e6)):
    want = dl.student_loss(TRUE, lt, n, d, dl.supervised(SUP, n, d))
    assert abs(float(dl.predict(f, lt, n, d)) / want - 1) < 0.02


def test_held_out_rows_have_validate_s_format(fitted):
  rows, _ = fitted
  hold = rows.teacher_loss == 1.2  # the strongest teacher, held out.
  out = dl.held_out(rows, hold, fit_lib.fit_chinchilla)
  assert len(out) == 6 and set(out[0]) == {'name', 'params', 'tokens', 'flops', 'observed', 'predicted',
                                           'rel_error', 'lo', 'hi'}  # fmt: skip
  assert max(abs(r['rel_error']) for r in out) < 0.02


def test_compute_optimal_student_matches_brute_force(fitted):
  _, f = fitted
  for teacher_params in (0.0, 5e5):
    best = dl.compute_optimal(f, 1.6, 1e13, teacher_params)
    grid = np.geomspace(1e3, 1e13 / 60, 20001)
    d = 1e13 / (6 * grid + 2 * teacher_params)
    losses = dl.predict(f, 1.6, grid, d)
    i = int(np.argmin(losses))
    assert abs(best['distilled']['loss'] - losses[i]) < 1e-6 + 1e-5 * losses[i]
    assert abs(np.log(best['distilled']['params'] / grid[i])) < 0.01
    sup = dl.supervised(f['supervised'], grid, 1e13 / (6 * grid))
    assert abs(best['supervised']['loss'] - sup.min()) < 1e-5 * sup.min()
    assert best['distillation_wins'] == (best['distilled']['loss'] < best['supervised']['loss'])


def test_bad_csv_names_the_line(tmp_path):
  path = tmp_path / 'runs.csv'
  path.write_text(
    'name,params,tokens,loss,teacher_loss,teacher_params\na,1e5,1e6,2.0,,\nb,1e5,x,2.0,1.5,6e5\n'
  )
  with pytest.raises(ValueError, match=r"line 3: column 'tokens' is 'x'"):
    dl.read(str(path))


@pytest.mark.slow  # (23 s; the law's fit and prediction in process by default: the tests above)
def test_fit_validate_and_predict_command_lines(tmp_path, capsys):
  """scaling.fit --law=distillation, scaling.validate --laws=distillation, scaling.predict on the
  fit: one JSON each, on a synthetic CSV."""
  import json

  from scaling import predict, validate

  rows = _rows((1.2, 1.6, 2.0, 2.5), (5e4, 1e5, 2e5), (1e6, 4e6), seed=1)
  csv_path = tmp_path / 'kd.csv'
  lines = ['name,params,tokens,loss,teacher_loss,teacher_params']
  for i, name in enumerate(rows.names):
    lt = '' if np.isnan(rows.teacher_loss[i]) else f'{rows.teacher_loss[i]}'
    lines.append(
      f'{name},{rows.params[i]},{rows.tokens[i]},{rows.loss[i]},{lt},{"6e5" if lt else ""}'
    )
  csv_path.write_text('\n'.join(lines) + '\n')
  fit_lib.main([f'--results={csv_path}', '--law=distillation', f'--out={tmp_path / "fit.json"}'])
  assert capsys.readouterr().out.startswith('distillation fit of ')
  assert json.loads((tmp_path / 'fit.json').read_text())['n_distilled'] == 24
  validate.main([f'--results={csv_path}', '--laws=distillation', '--distill_holdout=teacher'])
  out = capsys.readouterr().out.strip().splitlines()
  assert out[0].startswith('distillation (teacher held out): 6 students')
  assert len(json.loads(out[-1])['distillation']) == 6
  predict.main([f'--law={tmp_path / "fit.json"}', '--teacher_loss=1.6', '--compute=1e13'])
  best = json.loads(capsys.readouterr().out)
  assert best['law'] == 'distillation' and best['distilled']['params'] > 0
  assert isinstance(best['distillation_wins'], bool)


def test_study_goes_on_from_its_committed_csv(tmp_path):
  """scaling.studies.distillation: runs already in the CSV are not planned again (seed repeats named
  apart), --gather merges new runs into the CSV keeping its earlier rows, seed-1 repeats stay out
  of the fit's rows, and the capacity-gap plot is drawn from the merged CSV."""
  import csv
  import json
  import os

  from scaling.studies import distillation as distill_study

  student, teacher = distill_study.STUDENTS[0], distill_study.TEACHERS[0]
  ladder, work, out = tmp_path / 'ladder', tmp_path / 'work', str(tmp_path / 'runs.csv')
  for name, params, tokens, loss in (
    (student, 75120, 375600, 2.18),
    (teacher, 651280, 1.3e7, 1.09),
  ):
    (ladder / name).mkdir(parents=True)
    (ladder / name / 'result.json').write_text(
      json.dumps({'params': params, 'tokens': tokens, 'loss': loss})
    )
  earlier = distill_study.run_name(distill_study.STUDENTS[1], teacher, 1.0)
  with open(out, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=['name', 'params', 'tokens', 'loss', 'teacher', 'teacher_loss',
                                      'teacher_params', 'teacher_tokens', 'alpha'])  # fmt: skip
    w.writeheader()  # an earlier session's CSV, written before the seed column.
    w.writerow({'name': distill_study.STUDENTS[1], 'params': 75120, 'tokens': 751200, 'loss': 1.95})
    w.writerow({'name': earlier, 'params': 75120, 'tokens': 751200, 'loss': 1.8, 'teacher': teacher,
                'teacher_loss': 1.09, 'teacher_params': 651280, 'teacher_tokens': 1.3e7, 'alpha': 1})  # fmt: skip
  todo = distill_study.pending(distill_study.TEACHERS, [earlier])
  assert len(todo) == len(distill_study.STUDENTS) * 7 + len(distill_study.SEEDED) - 1
  assert (distill_study.STUDENTS[1], teacher, 1.0, 0) not in todo
  for seed, loss in ((0, 2.0), (1, 2.01)):
    run = work / distill_study.run_name(student, teacher, 1.0, seed)
    run.mkdir(parents=True)
    (run / 'metrics.jsonl').write_text(json.dumps({'eval/loss': loss}) + '\n')
    (run / 'result.json').touch()
  assert distill_study.gather(str(work), str(ladder), out) == 3
  rows = {r['name']: r for r in csv.DictReader(open(out))}
  assert rows[earlier]['loss'] == '1.8' and rows[distill_study.STUDENTS[1]]['loss'] == '1.95'
  seeded = rows[distill_study.run_name(student, teacher, 1.0, 1)]
  assert (seeded['seed'], seeded['teacher_loss'], seeded['loss']) == ('1', '1.09', '2.01')
  assert rows[student]['teacher'] == '' and float(rows[student]['loss']) == 2.18
  assert distill_study.NAME.match(seeded['name'])['student'] == student
  assert sorted(dl.read(out).names) == sorted(
    [
      student,
      teacher,
      distill_study.STUDENTS[1],
      earlier,
      distill_study.run_name(student, teacher, 1.0),
    ]
  )
  lines = distill_study.table(out).splitlines()
  assert lines[2].startswith('| 75K | 0.38M | 2.180 | **2.000 (-0.180)** |')
  assert lines[3].startswith('| 75K | 0.75M | 1.950 | **1.800 (-0.150)** |') and len(lines) == 4
  distill_study.plot_capacity_gap(out, '', str(tmp_path / 'gap.png'))
  assert os.path.getsize(tmp_path / 'gap.png') > 10_000
