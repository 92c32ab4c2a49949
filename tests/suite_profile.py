"""Where the suite's time goes: a pytest plugin that writes one CSV row per test (wall and CPU
seconds, processes launched, XLA compiles and persistent-cache hits), and the per-file table of
docs/testing.md made from it.

  LMSCALE_TEST_PROFILE=/tmp/prof.csv python -m pytest -q -m "not slow"   # conftest loads the plugin
  python tests/suite_profile.py /tmp/prof.csv       # the per-file table, then the tests over 10 s
"""

import collections
import csv
import resource
import subprocess
import sys
import time

import pytest

FIELDS = ['test', 'file', 'outcome', 'wall_s', 'cpu_s', 'processes', 'compiles', 'cache_hits']


def _cpu_seconds() -> float:
  """CPU time of this process and of the children it has waited for."""
  own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Profile:
  """Counts per test: Popen starts (subprocess), XLA compile requests and cache hits (jax.monitoring)."""

  def __init__(self, path: str):
    self.path, self.rows, self.counts = path, [], collections.Counter()
    popen_init = subprocess.Popen.__init__
    counts = self.counts

    def counting_init(popen, *args, **kwargs):
      counts['processes'] += 1
      popen_init(popen, *args, **kwargs)

    subprocess.Popen.__init__ = counting_init

  def _listen(self):
    import jax.monitoring

    def on_event(event, **_):
      if event == '/jax/compilation_cache/cache_hits':
        self.counts['cache_hits'] += 1

    def on_duration(event, _secs, **_):
      if event == '/jax/core/compile/backend_compile_duration':
        self.counts['compiles'] += 1

    jax.monitoring.register_event_listener(on_event)
    jax.monitoring.register_event_duration_secs_listener(on_duration)

  def pytest_sessionstart(self, session):
    self._listen()

  def pytest_runtest_protocol(self, item, nextitem):
    self.counts.clear()
    self._start = (time.perf_counter(), _cpu_seconds())
    self._outcome = 'passed'

  @pytest.hookimpl(hookwrapper=True)
  def pytest_runtest_makereport(self, item, call):
    """Measured where the test runs (an xdist worker or this process); the figures travel to the
    process that writes the CSV in the teardown report's user_properties."""
    report = (yield).get_result()
    if report.outcome != 'passed' and self._outcome == 'passed':
      self._outcome = report.outcome
    if report.when != 'teardown':
      return
    wall0, cpu0 = self._start
    report.user_properties.append(
      (
        'lmscale_profile',
        {
          'outcome': self._outcome,
          'wall_s': f'{time.perf_counter() - wall0:.2f}',
          'cpu_s': f'{_cpu_seconds() - cpu0:.2f}',
          'processes': self.counts['processes'],
          'compiles': self.counts['compiles'],
          'cache_hits': self.counts['cache_hits'],
        },
      )
    )

  def pytest_runtest_logreport(self, report):
    for name, value in report.user_properties:
      if name == 'lmscale_profile':
        file = report.nodeid.split('::')[0]
        self.rows.append({'test': report.nodeid, 'file': file, **value})

  def pytest_sessionfinish(self, session):
    if hasattr(session.config, 'workerinput'):
      return  # an xdist worker: its rows went to the controller.
    with open(self.path, 'w', newline='') as f:
      writer = csv.DictWriter(f, FIELDS)
      writer.writeheader()
      writer.writerows(self.rows)


def table(path: str) -> str:
  """Markdown table per test file, slowest first, with a total row."""
  with open(path) as f:
    rows = list(csv.DictReader(f))
  keys = ['wall_s', 'cpu_s', 'processes', 'compiles', 'cache_hits']
  files = collections.defaultdict(lambda: collections.Counter())
  for row in rows:
    agg = files[row['file']]
    agg['tests'] += 1
    agg['over_10s'] += float(row['wall_s']) > 10
    for key in keys:
      agg[key] += float(row[key])
  total = sum(files.values(), collections.Counter())
  lines = [
    '| file | tests | wall s | CPU s | tests > 10 s | processes | XLA compiles | cache hits |',
    '|---|---:|---:|---:|---:|---:|---:|---:|',
  ]
  order = sorted(files.items(), key=lambda kv: -kv[1]['wall_s']) + [('**all**', total)]
  for name, a in order:
    name = name.removeprefix('tests/')
    lines.append(
      f'| {name} | {a["tests"]} | {a["wall_s"]:.0f} | {a["cpu_s"]:.0f} | {a["over_10s"]} | '
      f'{a["processes"]:.0f} | {a["compiles"]:.0f} | {a["cache_hits"]:.0f} |'
    )
  return '\n'.join(lines)


def over(path: str, seconds: float = 10.0) -> str:
  """The tests over `seconds` of wall time, slowest first: the regrowth .ci/run reports."""
  with open(path) as f:
    rows = [r for r in csv.DictReader(f) if float(r['wall_s']) > seconds]
  rows.sort(key=lambda r: -float(r['wall_s']))
  lines = [f'{len(rows)} tests over {seconds:g} s:']
  return '\n'.join(lines + [f'{float(r["wall_s"]):7.1f} s  {r["test"]}' for r in rows])


if __name__ == '__main__':
  print(table(sys.argv[1]))
  print()
  print(over(sys.argv[1]))
