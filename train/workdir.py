"""The run directory: created writable up front, held by one run at a time (an flock on
workdir/.lock, released when the process exits, even when it is killed), and the two file
helpers every writer in it uses: atomic JSON files and the latest committed checkpoint step."""

import errno
import fcntl
import json
import os
from typing import Any, TextIO

import jax

ROOM = 128  # bytes of path the files inside a workdir need (checkpoints/<step>/state/...).


def check(workdir: str) -> None:
  """Refuse, before anything is built or written, a local workdir whose path is over the OS
  limits (nothing is created) or which is, or holds a `checkpoints` (or another directory a run
  writes into) that is, not a directory."""
  if '://' in workdir:
    return
  path = os.fsencode(os.path.abspath(workdir))
  name_max, path_max = _limits()
  if len(path) + ROOM > path_max or any(len(p) > name_max for p in path.split(b'/')):
    raise ValueError(
      f'--workdir={workdir[:60]}...: path too long ({len(path)} bytes; this filesystem allows '
      f'{path_max} with {ROOM} left for the files inside, {name_max} per name); choose a '
      'shorter --workdir'
    )
  # the workdir and every directory a run writes into (train/checkpoint.py, metrics.py, hooks.py).
  subdirs = ('checkpoints', 'checkpoints.corrupt', 'tensorboard', 'best', 'best/checkpoints')
  for p in (workdir, *(os.path.join(workdir, d) for d in subdirs)):
    if os.path.exists(p) and not os.path.isdir(p):
      raise ValueError(f'{p} is a file, not a directory; move it away or choose another --workdir')


def _limits() -> tuple[int, int]:
  """(longest name, longest path) in bytes, as the root filesystem reports them."""
  try:
    return os.pathconf('/', 'PC_NAME_MAX'), os.pathconf('/', 'PC_PATH_MAX')
  except (OSError, ValueError):
    return 255, 4096


def claim(workdir: str) -> TextIO | None:
  """Create `workdir` and lock it for this run (process 0; local paths); returns the lock file.
  Raises ValueError naming the path when it cannot be written or another run holds it."""
  if '://' in workdir:  # object stores (gs://): no local lock; orbax writes there directly.
    return None
  try:
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() != 0:
      return None
    lock = open(os.path.join(workdir, '.lock'), 'a+')
  except OSError as e:
    raise ValueError(
      f'--workdir={workdir} cannot be written ({e.strerror}); choose a writable directory'
    ) from None
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    if e.errno not in (errno.EAGAIN, errno.EACCES):
      raise
    lock.seek(0)
    holder = lock.read().strip() or 'another process'
    lock.close()
    raise ValueError(
      f'--workdir={workdir} is in use by another run ({holder}); wait for it to '
      'finish or use another --workdir'
    ) from None
  lock.seek(0)
  lock.truncate()
  lock.write(f'pid {os.getpid()} on {os.uname().nodename}\n')
  lock.flush()
  return lock


def write_json(path: str, obj: Any) -> None:
  """Write `obj` as JSON to `path` atomically (a temporary file renamed over it): a reader or a
  crash never sees half a file."""
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def read_json(path: str) -> Any:
  """The JSON in `path`; ValueError naming the path when it does not parse (e.g. half written)."""
  with open(path) as f:
    try:
      return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f'{path}: not valid JSON ({e})') from None


def latest_checkpoint_step(workdir: str) -> int | None:
  """The newest committed checkpoint step under workdir/checkpoints (orbax commits a step by
  renaming its tmp directory to the bare number), or None."""
  d = os.path.join(workdir, 'checkpoints')
  steps = [int(x) for x in os.listdir(d) if x.isdigit()] if os.path.isdir(d) else []
  return max(steps) if steps else None
