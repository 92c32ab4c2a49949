"""Graceful stop on SIGTERM / SIGINT (preemptible TPU VMs, cluster schedulers, Ctrl-C).

The first signal only sets a flag: the loop finishes its current step, checkpoints it, waits for the
save to commit and returns. A second signal gets the default behaviour (exit at once).
"""
import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
  """Context manager that turns the first SIGTERM / SIGINT into `requested` (main thread only)."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  @property
  def requested(self) -> bool:
    return self.signal is not None

  def _handle(self, signum, _):
    self.signal = signal.Signals(signum).name
    for s in SIGNALS:  # a second signal is not caught: it stops the process at once.
      signal.signal(s, signal.SIG_DFL if s == signal.SIGTERM else signal.default_int_handler)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    return False
