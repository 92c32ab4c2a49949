"""Periodic actions the training loop calls (in the spirit of clu's periodic actions).

Each action has `due(step, stopping)`: whether it needs this finished step's metrics read from the
device, and `__call__(step, state, m, stopping)`, called in list order on every step whose
metrics are read (any action due), so the divergence guard and the log see every logged,
evaluated and checkpointed step, and each action may add to `m` for the ones after it.
"""

import logging
import math
import os
import time
from collections.abc import Sequence

import jax
import ml_collections
import orbax.checkpoint as ocp

from models import count
from models.config import PyTree
from train import checkpoint, context, divergence, flops, metrics, preemption
from train import workdir as workdir_lib
from train.evaluators import Evaluator

BEST_DIR = 'best'
# W/best's checkpoints of an earlier run are moved here, never deleted.
STALE_DIR = 'checkpoints.stale'


class Action:
  """A no-op action: due at no step, does nothing when called. An action that returns True asks
  the loop to stop after this step (the actions after it see stopping=True: the checkpoint saves)."""

  def due(self, step: int, stopping: bool) -> bool:
    return False

  def __call__(self, step: int, state: PyTree, m: dict, stopping: bool) -> bool | None:
    pass

  @property
  def finished(self) -> bool:
    """True when the run must not train further (e.g. it stopped early before a resume)."""
    return False


def _every(step: int, every: int, last: int) -> bool:
  return step % every == 0 or step == last


class Clock(Action):
  """Tokens seen, tokens/s, MFU and the ETA, timed from the end of the first (compiling) step."""

  def __init__(self, r: context.Run, start: int, end: int) -> None:
    self.tokens_per_step = r.derived.tokens_per_step
    self.flops_per_token = count.train_flops_per_token(r.derived.model, r.config.data.seq_len)
    self.peak = flops.peak_flops() * jax.device_count()
    self.end = end
    self.tic, self.tic_step, self.first, self.now = time.time(), start, None, None

  def started(self, step: int, step_metrics: PyTree) -> None:
    """After every step: the first one is waited for, so rates exclude compilation."""
    if self.first is None:
      jax.block_until_ready(step_metrics)
      self.tic, self.tic_step, self.first = time.time(), step, (time.time(), step)

  def __call__(self, step: int, state: PyTree, m: dict, stopping: bool) -> None:
    self.now = time.time()
    rate = math.nan
    if step > self.tic_step:
      rate = (step - self.tic_step) * self.tokens_per_step / max(self.now - self.tic, 1e-9)
    m['train/tokens_seen'] = step * self.tokens_per_step
    m['train/tokens_per_sec'] = rate
    m['train/mfu'] = rate * self.flops_per_token / self.peak
    del m['train/tokens']

  def eta(self, step: int) -> float | None:
    """Seconds left at the measured pace; None until a step after the first was timed."""
    t0, s0 = self.first
    return (self.end - step) * (self.now - t0) / (step - s0) if step > s0 else None

  def restart(self, step: int) -> None:
    """Rates from here on (eval and logging time are not training time)."""
    self.tic, self.tic_step = time.time(), step


class Checkpoint(Action):
  """Saves every `every` steps, at `end` and when stopping; remembers the last saved step."""

  def __init__(
    self, mngr: ocp.CheckpointManager, meta: dict, every: int, end: int, last_saved: int | None
  ) -> None:
    self.mngr, self.meta, self.every, self.end, self.last_saved = mngr, meta, every, end, last_saved

  def due(self, step: int, stopping: bool) -> bool:
    return _every(step, self.every, self.end) or stopping

  def __call__(self, step: int, state: PyTree, m: dict, stopping: bool) -> None:
    if self.due(step, stopping):
      checkpoint.save(self.mngr, step, state, self.meta)
      self.last_saved = step


class Guard(Action):
  """The divergence guard on every step whose metrics are read: a diverged state is never saved
  (it runs before the checkpoint action)."""

  def __init__(self, guard: divergence.Guard, workdir: str, ckpt: Checkpoint) -> None:
    self.guard, self.workdir, self.ckpt = guard, workdir, ckpt

  def __call__(self, step: int, state: PyTree, m: dict, stopping: bool) -> None:
    self.guard.check(step, m, self.workdir, self.ckpt.last_saved)


class Evaluate(Action):
  """Runs the evaluators every `every` steps and at `last`, adding their metrics to `m`."""

  def __init__(self, evaluators: Sequence[Evaluator], every: int, last: int) -> None:
    self.evaluators, self.every, self.last = list(evaluators), every, last

  def due(self, step: int, stopping: bool) -> bool:
    return _every(step, self.every, self.last)

  def __call__(self, step: int, state: PyTree, m: dict, stopping: bool) -> None:
    if self.due(step, stopping):
      for evaluator in self.evaluators:
        m.update(evaluator(state.params))


class Log(Action):
  """Writes `m` (metrics.jsonl, TensorBoard) and one console line on every read step; due every
  `every` steps. `last` holds the last row written."""

  def __init__(self, writer: metrics.Writers, clock: Clock, every: int, num_steps: int) -> None:
    self.writer, self.clock, self.every, self.num_steps = writer, clock, every, num_steps
    self.last = {}

  def due(self, step: int, stopping: bool) -> bool:
    return step % self.every == 0

  def __call__(self, step: int, state: PyTree, m: dict, stopping: bool) -> None:
    self.writer.write_scalars(step, m)
    if jax.process_index() == 0:
      logging.info(metrics.console_line(step, self.num_steps, m, self.clock.eta(step)))
    self.last = m
    self.clock.restart(step)


def report_stop(stop: preemption.StopRequest, state: PyTree, workdir: str, last: dict) -> None:
  """After a signalled stop: say where the run stopped, and record it in the final metrics."""
  step = int(jax.device_get(state.step))
  logging.warning(
    '%s: stopped at step %d, its checkpoint committed in %s; run the same command to resume.',
    stop.signal,
    step,
    workdir,
  )
  last['preempted_at_step'] = step


class KeepBest(Action):
  """Keeps the params of the best evaluation by `metric` as W/best: a workdir of one checkpoint
  that every tool loads (init_from=W/best, train.tools.export, train.tools.sample,
  train.tools.harness). With `patience` > 0 it asks the loop to stop after that many evaluations
  without an improvement. Every evaluation's value is kept in W/best/record.json, so a resumed run
  counts on exactly."""

  def __init__(
    self,
    workdir: str,
    config_json: str,
    train: ml_collections.ConfigDict,
    evaluate: Evaluate,
    start: int,
    meta: dict,
  ) -> None:
    self.metric, self.mode, self.patience = (
      train.best_metric,
      train.best_mode,
      train.early_stop_patience,
    )
    self.evaluate, self.meta, self.config_json = evaluate, meta, config_json
    self.dir = os.path.join(workdir, BEST_DIR)
    self.record_path = os.path.join(self.dir, 'record.json')
    record = workdir_lib.read_json(self.record_path) if os.path.exists(self.record_path) else {}
    # Evaluations after the resumed step happen again (bitwise the same), so they are dropped.
    self.history = {int(s): v for s, v in record.get('history', {}).items() if int(s) <= start}
    stopped = record.get('stopped_at')
    self.stopped_at = stopped if stopped is not None and stopped <= start else None
    self.mngr = None

  def due(self, step: int, stopping: bool) -> bool:
    return self.evaluate.due(step, stopping)

  @property
  def finished(self) -> bool:
    return self.stopped_at is not None

  def best(self) -> tuple[int, float] | None:
    """(step, value) of the best evaluation so far (the first of equals), None before any."""
    finite = [(s, v) for s, v in sorted(self.history.items()) if math.isfinite(v)]
    if not finite:
      return None
    pick = min if self.mode == 'min' else max
    value = pick(v for _, v in finite)
    return next((s, v) for s, v in finite if v == value)

  def __call__(self, step: int, state: PyTree, m: dict, stopping: bool) -> bool:
    if not self.due(step, stopping):
      return False
    if self.metric not in m:
      evals = sorted(k for k in m if k.startswith(('eval/', 'lm_eval/')))
      raise ValueError(
        f'config.train.best_metric={self.metric!r} is not measured; this run has {evals}'
      )
    self.history[step] = m[self.metric]
    best_step, best_value = self.best() or (step, m[self.metric])
    if best_step == step:
      self._save(step, state)
    m['best/step'], m['best/' + self.metric] = float(best_step), float(best_value)
    since = sum(1 for s in self.history if s > best_step)
    if self.patience and since >= self.patience:
      self.stopped_at = step
      logging.info(
        'Early stop at step %d: %s has not improved on step %d (%.5g) for %d evaluations; the '
        'best params are in %s',
        step,
        self.metric,
        best_step,
        best_value,
        since,
        self.dir,
      )
    if jax.process_index() == 0:
      record = {
        'metric': self.metric,
        'mode': self.mode,
        'best_step': best_step,
        'best_value': best_value,
        'stopped_at': self.stopped_at,
        'history': {str(s): v for s, v in sorted(self.history.items())},
      }
      workdir_lib.write_json(self.record_path, metrics.strict_json(record))
    return self.stopped_at is not None

  def _save(self, step: int, state: PyTree) -> None:
    """The state of `step` as W/best's one checkpoint (the new one commits before the old goes)."""
    if self.mngr is None:
      options = ocp.CheckpointManagerOptions(
        max_to_keep=1, enable_async_checkpointing=False, create=True, cleanup_tmp_directories=True
      )
      self.mngr = ocp.CheckpointManager(
        os.path.join(os.path.abspath(self.dir), 'checkpoints'),
        options=options,
        item_names=('state', 'meta'),
      )
      checkpoint.write_config(self.dir, self.config_json)
    for old in [s for s in self.mngr.all_steps() if s >= step]:
      saved = checkpoint.restore_meta(self.mngr, old).get('checksum') if old == step else None
      if saved and saved == checkpoint.checksum(checkpoint.stored(state, self.meta)):
        return  # a resumed run reaching it again: the same state, already kept.
      # Another run's (its checkpoints were removed or it restarted earlier): kept aside.
      dest = checkpoint.set_aside(self.mngr, self.dir, old, into=STALE_DIR)
      logging.info("Best checkpoint %d was not this run's; moved to %s.", old, dest)
    checkpoint.save(
      self.mngr, step, state, {**self.meta, 'best': {self.metric: self.history[step]}}
    )
    self.mngr.wait_until_finished()
