"""The compression study's fitter (scaling/studies/compression_report.py) on its own law's synthetic
data, and the study's run plan (scaling/studies/compression.py)."""

import numpy as np

from scaling.studies import compression, compression_report


def test_sparse_law_recovers_its_parameters_from_noisy_synthetic_data():
  true = np.array([0.9, 1.4, 0.6, 0.25, 0.8])  # a_S, b_S, c_S, b_N, E
  s, n = np.meshgrid([0.0, 0.5, 0.75, 0.875, 0.9375], [7.5e4, 1.25e5, 1.75e5, 3.7e5, 6.5e5, 1.3e6])
  s, n = s.ravel(), n.ravel()
  loss = compression_report.sparse_law(true, s, n)
  noisy = loss * np.exp(np.random.default_rng(0).normal(0, 0.002, loss.shape))
  p = compression_report.fit_sparse_law(s, n, noisy)
  np.testing.assert_allclose(compression_report.sparse_law(p, s, n), loss, rtol=0.01)
  np.testing.assert_allclose(p[[1, 3]], true[[1, 3]], rtol=0.25)  # the exponents b_S, b_N


def test_study_plan_names_resumable_runs(tmp_path):
  """Every run of the study is a scaling.parallel Job: main.py into its run dir, done once that
  holds result.json; the pruned shapes are valid for the teacher's config (models/pruning.py)."""
  from models import pruning
  from models.config import ModelConfig
  from train.tools import compress

  teacher = ModelConfig(d_model=112, n_layers=4, n_heads=7, d_ff=448, parametrization='mup')
  for shape in compression.SHAPES.values():
    pruning.check(teacher, compress.parse_shape(shape))
  run = tmp_path / 'recovery' / 'r'
  job = compression._job(str(run), ['--config=configs/recover.py:rerun=x'])
  assert job.name == 'recovery/r' and job.workdir == str(run)
  assert job.argv[1:] == ['main.py', f'--workdir={run}', '--config=configs/recover.py:rerun=x']
  run.mkdir(parents=True)
  assert not job.is_done()
  (run / 'result.json').write_text('{}')
  assert job.is_done()


def test_nm_part_trains_the_pattern_and_merges_its_csv(tmp_path):
  """--part=nm: each member's 2:4 run retrains its own config with the N:M pattern on the gradual
  schedule; finished runs merge into the CSV beside the one-shot rows, earlier rows kept."""
  import json

  ladder, work = tmp_path / 'ladder', tmp_path / 'work'
  a, b = compression.SPARSE_BASES[:2]
  for base, loss in ((a, 1.74), (b, 1.56)):
    (ladder / base).mkdir(parents=True)
    (ladder / base / 'config.json').write_text(json.dumps({'train': {'num_steps': 1000}}))
    (ladder / base / 'result.json').write_text(json.dumps({'params': 75120, 'loss': loss}))
  (job,) = compression.nm_runs(str(work), str(ladder), [b])
  for flag in ('pattern=2:4', 'target=0.5', 'begin_step=100', 'end_step=600', 'every=10'):
    assert f'--config.sparsity.{flag}' in job.argv
  assert f'--config=configs/recover.py:rerun={ladder / b}' in job.argv
  out = tmp_path / 'docs'
  out.mkdir()
  compression_report.write_csv(str(out / 'sparsity_oneshot.csv'), [
    {'base': b, 'sparsity': 0.5, 'scope': 'layer', 'pattern': '2:4', 'loss': 1.93}])  # fmt: skip
  compression_report.write_csv(str(out / 'sparsity_nm.csv'), [
    {'base': a, 'params': 75120, 'pattern': '2:4', 'loss_dense': 1.74, 'loss_oneshot': 2.03,
     'loss_trained': 1.80}])  # fmt: skip
  run = work / 'sparse' / f'{b}_2of4'
  run.mkdir(parents=True)
  (run / 'metrics.jsonl').write_text(json.dumps({'eval/loss': 1.61}) + '\n')
  (run / 'result.json').touch()
  rows = compression.nm_rows(str(work), str(ladder), str(out / 'sparsity_nm.csv'))
  assert [(r['base'], float(r['loss_trained'])) for r in rows] == [(a, 1.80), (b, 1.61)]
  assert float(rows[1]['loss_oneshot']) == 1.93 and rows[1]['loss_dense'] == 1.56
  other = 'D2_N9e4_lr7.81e-3'  # --bases outside the built-in list get their row too.
  (ladder / other).mkdir()
  (ladder / other / 'result.json').write_text(json.dumps({'params': 90000, 'loss': 1.5}))
  (work / 'sparse' / f'{other}_2of4').mkdir()
  (work / 'sparse' / f'{other}_2of4' / 'metrics.jsonl').write_text('{"eval/loss": 1.55}\n')
  (work / 'sparse' / f'{other}_2of4' / 'result.json').touch()
  rows = compression.nm_rows(str(work), str(ladder), str(out / 'sparsity_nm.csv'), [other])
  assert [r['base'] for r in rows] == [a, b, other] and float(rows[2]['loss_trained']) == 1.55


def test_recovery_config_names_an_hf_teacher_it_cannot_take():
  """configs/recover.py takes data, batch and lr from the teacher's workdir: an hf: teacher is
  one line saying so (it said "has no config.json" of a directory that has one)."""
  import pytest

  from configs import recover as recover_config

  with pytest.raises(ValueError, match=r'hf:/m is an HF checkpoint; this config takes the data'):
    recover_config.get_config('student=/s,teacher=hf:/m')


def test_report_and_distillation_count_a_run_done_by_its_result_json(tmp_path):
  """The gradual-sparsity table counts a run once it holds result.json; the distillation study's
  pending runs are Jobs of main.py into W/<run_name>."""
  import json

  from scaling.studies import distillation

  ladder, base = tmp_path / 'ladder', compression.SPARSE_BASES[0]
  (ladder / base).mkdir(parents=True)
  (ladder / base / 'result.json').write_text(json.dumps({'params': 75120, 'loss': 1.74}))
  runs = {base: {0.5: str(tmp_path / 'done'), 0.75: str(tmp_path / 'running')}}
  for name in ('done', 'running'):
    (tmp_path / name).mkdir()
    (tmp_path / name / 'metrics.jsonl').write_text('{"eval/loss": 1.9}\n')
  (tmp_path / 'done' / 'result.json').write_text('{}')
  rows = compression_report.gradual(runs, str(ladder))
  assert [(r['sparsity'], r['loss']) for r in rows] == [(0.0, 1.74), (0.5, 1.9)]
  student, teacher = distillation.STUDENTS[0], distillation.TEACHERS[0]
  job, *_ = distillation.plan(str(tmp_path / 'w'), str(ladder), [teacher], students=[student])
  assert job.name == distillation.run_name(student, teacher, 1.0)
  assert job.workdir == str(tmp_path / 'w' / job.name) and f'--workdir={job.workdir}' in job.argv
  assert not job.is_done()
