"""Graceful stop on SIGTERM / SIGINT (preemptible TPU VMs, cluster schedulers, Ctrl-C).

The first signal only asks to stop: the loop finishes its current step, checkpoints it, waits for
the save to commit and returns. A second signal gets the default behaviour (exit at once).
Until the run's state is ready (validation, data set-up, init_from, claiming the workdir, restore)
there is no step to finish: the signal raises `Interrupted` at once and start-up is abandoned with
the workdir as it was. From then on (writing config.json, compile) it stops at the first step
boundary as above (before the first step when it came before it).
With several processes every host must save the same step, so the notice goes through JAX's
preemption sync service (`multihost_utils.reached_preemption_sync_point`, the mechanism orbax
uses): its SIGTERM notifier tells the coordinator, which picks the step all hosts stop after.
"""

import logging
import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(KeyboardInterrupt):
  """A stop signal during start-up (single process): nothing trained, nothing to checkpoint."""

  def __init__(self, name: str) -> None:
    super().__init__(
      f'{name} received during start-up: stopped before the first step; the workdir is as it '
      'was, run the same command to start'
    )
    self.exit_code = 128 + signal.Signals[name].value


class StopRequest:
  """Context manager; `should_stop(step)` says whether to checkpoint and return after `step`."""

  def __init__(self) -> None:
    self.signal = None  # name of the signal received (here or, multi-process, anywhere).
    self._previous = {}
    self._multi = False
    self._agreed = False
    self._ready = False  # set by `ready()`: from then on a signal stops at a step boundary.

  @property
  def requested(self) -> bool:
    """A stop is due: a signal arrived (one process) or all processes agreed on a step."""
    return self._agreed if self._multi else self.signal is not None

  def should_stop(self, step: int) -> bool:
    """Call once per finished step, with the same steps on every process."""
    if self._multi:
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal, self._agreed = self.signal or 'SIGTERM', True
        self._default_handlers()  # the sync point is agreed: a further signal exits at once.
        return True
      return False
    return self.requested

  def ready(self) -> None:
    """The run's state is restored: a signal now stops at a step boundary (checkpointed)."""
    self._ready = True

  def _default_handlers(self) -> None:
    if threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, signal.SIG_DFL)
      signal.signal(signal.SIGINT, signal.default_int_handler)

  def _handle(self, signum: int, _: object) -> None:
    self.signal = signal.Signals(signum).name
    self._default_handlers()  # a second signal is not caught: it stops the process at once.
    if not self._ready:  # start-up: no step to finish; abandon it now.
      raise Interrupted(self.signal)
    logging.warning(
      '%s received: finishing the current step, then checkpointing it (send it '
      'again to exit at once)',
      self.signal,
    )

  def _forward_sigint(self, signum: int, _: object) -> None:
    # JAX's notifier listens for SIGTERM only; route Ctrl-C to it so all hosts stop together.
    self.signal = signal.Signals(signum).name
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.kill(os.getpid(), signal.SIGTERM)

  def __enter__(self) -> 'StopRequest':
    self._multi = jax.process_count() > 1
    if threading.current_thread() is threading.main_thread():
      if self._multi:  # SIGTERM stays with JAX's preemption notifier (installed at initialize).
        self._previous = {signal.SIGINT: signal.signal(signal.SIGINT, self._forward_sigint)}
      else:
        self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
    return self

  def __exit__(self, *exc: object) -> bool:
    for s, handler in self._previous.items():
      signal.signal(s, handler if handler is not None else signal.SIG_DFL)
    return False
