"""The run directory: created writable up front, and held by one run at a time (an flock on
workdir/.lock, released when the process exits, even when it is killed)."""
import errno
import fcntl
import os

import jax


def claim(workdir: str):
  """Create `workdir` and lock it for this run (process 0; local paths); returns the lock file.
  Raises ValueError naming the path when it cannot be written or another run holds it."""
  if '://' in workdir:   # object stores (gs://): no local lock; orbax writes there directly.
    return None
  try:
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() != 0:
      return None
    lock = open(os.path.join(workdir, '.lock'), 'a+')
  except OSError as e:
    raise ValueError(f'--workdir={workdir} cannot be written ({e.strerror}); '
                     'choose a writable directory') from None
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    if e.errno not in (errno.EAGAIN, errno.EACCES):
      raise
    lock.seek(0)
    holder = lock.read().strip() or 'another process'
    lock.close()
    raise ValueError(f'--workdir={workdir} is in use by another run ({holder}); wait for it to '
                     'finish or use another --workdir') from None
  lock.seek(0)
  lock.truncate()
  lock.write(f'pid {os.getpid()} on {os.uname().nodename}\n')
  lock.flush()
  return lock
