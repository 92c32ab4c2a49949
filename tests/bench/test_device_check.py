"""bench/device_check.py: the --tiny run reports every row (a failing and a timed-out one with their
one-line reasons) and writes the table; the GPU row list dry-runs; a worker that dies is reported."""

import json
import os
import pathlib
import subprocess
import sys

import helpers
import pytest

from bench import device_check

ROOT = helpers.REPO
NAMES = [r.name for r in device_check.ROWS]


def run_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
  """`python -m bench.device_check *args` from the repo root; it must exit 0."""
  cmd = [sys.executable, '-m', 'bench.device_check', *args]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.mark.slow  # (35 s: every row's tiny run; the rows and commands are checked by --dry_run below)
def test_tiny_run_every_row_with_a_failing_and_a_timed_out_one(tmp_path: pathlib.Path) -> None:
  # An impossible config (7 heads) in one row; the last row hangs past its 3 s limit.
  env = dict(os.environ, **{device_check.INJECT_ENV: 'fail=gpt2_350m_b32,hang=matmul_fp8'})
  run_check('--tiny', f'--out={tmp_path}', '--limit_s=matmul_fp8=3', env=env)
  doc = json.loads((tmp_path / 'device_check.json').read_text())
  rows = {r['row']: r for r in doc['rows']}
  assert list(rows) == NAMES and doc['tiny'] and doc['platform'] == 'cpu'
  broken, hung = rows.pop('gpt2_350m_b32'), rows.pop('matmul_fp8')
  assert broken['status'] == 'error' and 'n_heads=7' in broken['error'], broken
  assert '\n' not in broken['error']
  assert hung['status'] == 'timeout' and 'limit of 3 s' in hung['error'], hung
  assert all(r['status'] == 'ok' for r in rows.values()), rows
  for r in rows.values():
    assert r['step_s'] > 0 and r['command'].startswith('python -m bench.')
    if r['kind'] == 'train':
      assert r['tokens_per_s'] > 0 and 'mfu_palm' in r and 'mfu_maxtext' in r
      assert r['of_bf16_matmul'] > 0 and '--config.model.n_layers=1' in r['command']
  assert rows['decode_gpt2_124m']['tokens_per_s'] > 0
  assert rows['members_1m_k8']['members_speedup'] > 0 and rows['members_1m_k8']['tokens_per_s'] > 0
  table = (tmp_path / 'device_check.md').read_text()
  assert [line.split(' ')[1] for line in table.splitlines()[4:]] == NAMES
  assert 'error: ValueError: config.model.n_heads=7' in table and 'timed out' in table


def test_dry_run_lists_the_gpu_rows() -> None:
  out = run_check('--dry_run').stdout
  assert [line.split(':')[0] for line in out.splitlines() if line[:1] not in ' 0123456789'] == NAMES
  assert '--config.model.vocab_multiple=128' in out and '16 x 2048' in out
  assert 'python -m bench.device_check --only=decode_gpt2_124m' in out


class DyingWorker:
  """A worker that starts its first row, then exits without a result (an XLA abort, an OOM kill)."""

  def __init__(self) -> None:
    self.events = [{'event': 'start', 'row': 'matmul_bf16'}, None]
    self.proc = type('Proc', (), {'returncode': -6})()

  def next(self, timeout_s: float) -> dict | None:
    return self.events.pop(0)

  def stop(self) -> str:
    return 'Fatal Python error: Aborted'


def test_a_dying_worker_is_that_rows_error() -> None:
  results = {}
  device_check.run_worker(DyingWorker(), ['matmul_bf16'], {'matmul_bf16': 60.0}, 1e12, results)
  assert results['matmul_bf16'] == {
    'status': 'error',
    'error': 'worker died (exit -6): Fatal Python error: Aborted',
  }
