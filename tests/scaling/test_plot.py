"""Tests for scaling/plot.py's distillation-sweep plot on a synthetic results.csv."""

import csv
import math
import subprocess
import sys

import pytest
from helpers import REPO

from scaling import plot

COLUMNS = ('name', 'params', 'tokens', 'loss', 'mode', 'teacher_params', 'teacher_loss')


def _write_csv(path, with_mode=True):
  rows = []
  for n, sup, dis in ((8412, 2.90, 2.85), (22920, 2.60, 2.52), (63200, 2.40, 2.33)):
    rows.append(
      {
        'name': f'N{n}_supervised',
        'params': n,
        'tokens': 598016,
        'loss': sup,
        'mode': 'supervised',
        'teacher_params': '',
        'teacher_loss': '',
      }
    )
    rows.append(
      {
        'name': f'N{n}_distill',
        'params': n,
        'tokens': 598016,
        'loss': dis,
        'mode': 'distill',
        'teacher_params': 1853760,
        'teacher_loss': 1.893,
      }
    )
  cols = COLUMNS if with_mode else tuple(c for c in COLUMNS if c != 'mode')
  with open(path, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=cols, extrasaction='ignore')
    w.writeheader()
    w.writerows(rows)
  return path


def test_plot_distill_sweep_writes_png_and_table(tmp_path):
  csv_path = _write_csv(tmp_path / 'results.csv')
  out = tmp_path / 'sub' / 'distill.png'
  table = plot.plot_distill_sweep(str(csv_path), str(out))
  assert out.exists() and out.stat().st_size > 1000
  with open(out, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert [r['params'] for r in table] == [8412, 22920, 63200]
  assert table[0]['supervised'] == pytest.approx(2.90)
  assert table[0]['distill'] == pytest.approx(2.85)
  assert table[1]['diff'] == pytest.approx(-0.08)
  assert all(
    r['teacher_params'] == 1853760 and r['teacher_loss'] == pytest.approx(1.893) for r in table
  )
  md = plot.format_distill_table(table)
  assert '| 22,920 | 598,016 | 2.600 | 2.520 | -0.080 | 1,853,760 | 1.893 |' in md


def test_plot_distill_sweep_missing_mode_is_refused(tmp_path):
  csv_path = _write_csv(tmp_path / 'results.csv', with_mode=False)
  with pytest.raises(ValueError, match='mode'):
    plot.plot_distill_sweep(str(csv_path), str(tmp_path / 'x.png'))


def test_plot_distill_sweep_one_mode_only(tmp_path):
  """A sweep with only the distill mode still plots; the missing supervised loss is NaN."""
  path = tmp_path / 'results.csv'
  _write_csv(path)
  with open(path) as f:
    lines = [l for l in f if 'supervised' not in l]
  path.write_text(''.join(lines))
  table = plot.plot_distill_sweep(str(path), str(tmp_path / 'd.png'))
  assert (tmp_path / 'd.png').stat().st_size > 0
  assert all(math.isnan(r['supervised']) for r in table)


def test_cli_distill(tmp_path):
  csv_path = _write_csv(tmp_path / 'results.csv')
  out = subprocess.run(
    [sys.executable, '-m', 'scaling.plot', f'--results={csv_path}', '--distill'],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  png = tmp_path / 'results_distill.png'
  assert out.strip().splitlines()[-1] == str(png)
  assert png.stat().st_size > 0
  assert '| 63,200 |' in out
