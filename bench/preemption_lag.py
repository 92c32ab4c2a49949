"""How long a real SIGTERM takes to stop a real main.py run: seconds from the signal to the exit,
and the step it stopped at.

  python -m bench.preemption_lag                       # configs/default.py, 2 repeats
  python -m bench.preemption_lag --config=configs/default.py --wait=4 --repeats=3

Each repeat starts a fresh run (log every 50 steps, no eval or checkpoint on the way), waits for its
first logged step plus --wait seconds, sends SIGTERM and reads its 'stopped at step N' line. A
preemptible VM gives about 30 s between the notice and the kill; the loop keeps at most two steps
dispatched so this stays about one step time plus the checkpoint's commit.
"""

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time


def one(config: str, wait: float, root: str) -> tuple[float, int]:
  """(seconds from SIGTERM to exit, step stopped at) of one run."""
  workdir = tempfile.mkdtemp(dir=root)
  cmd = [sys.executable, 'main.py', f'--config={config}', f'--workdir={workdir}']
  cmd += ['--config.train.num_steps=1000000', '--config.train.log_every=50']
  cmd += ['--config.train.eval_every=100000000', '--config.train.checkpoint_every=100000000']
  proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
  for line in proc.stderr:
    if re.search(r'step (\d+)/', line):
      break
  time.sleep(wait)
  proc.send_signal(signal.SIGTERM)
  t0 = time.time()
  rest = proc.stderr.read()
  proc.wait()
  seconds = time.time() - t0
  stopped = re.search(r'stopped at step (\d+)', rest)
  shutil.rmtree(workdir, ignore_errors=True)
  return seconds, int(stopped.group(1)) if stopped else -1


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/default.py')
  parser.add_argument('--wait', type=float, default=4.0, help='seconds after the first log')
  parser.add_argument('--repeats', type=int, default=2)
  args = parser.parse_args()
  root = tempfile.mkdtemp(prefix='lmscale-preemption-lag-')
  try:
    for i in range(args.repeats):
      seconds, stopped = one(args.config, args.wait, root)
      print(f'repeat {i}: exited {seconds:.2f} s after SIGTERM, stopped at step {stopped}')
  finally:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
  main()
