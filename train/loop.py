"""The training loop shared by plain LM, distillation and sweep runs.

`run(validation.derive(config), workdir, ...)` builds the run's context (train/context.py),
resumes from the latest checkpoint and drives the jitted train step; what happens at a step's
cadence (guard, rates, evaluators, logging, checkpoints) are plug-ins (train/hooks.py,
train/evaluators.py). What differs between trainers lives in a `Task`; extra evaluators (e.g.
lm-eval) come from the caller.
"""

import contextlib
import dataclasses
import errno
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import orbax.checkpoint as ocp

from models import lora, resident_quant
from models.config import PyTree
from train import (
  checkpoint,
  context,
  divergence,
  hooks,
  init_from,
  memory,
  metrics,
  preemption,
  sharding,
  validation,
)
from train import workdir as workdir_lib
from train.context import Run, Task
from train.evaluators import EvalLoss, Evaluator


def run(
  derived: validation.Derived,
  workdir: str,
  task_fn: Callable[[Run], Task] | None = None,
  init_params_fn: Callable[[Run], PyTree] | None = None,
  stop_after: int | None = None,
  evaluators: Sequence[Evaluator] = (),
) -> dict:
  """Train `derived` (validation.derive(config)) to its step count in `workdir` (resuming if
  possible); returns the final metrics.

  `stop_after` ends this invocation early at that step (a checkpoint is written, the result has
  'stopped_at_step'), as a preemption would; the schedule still follows the config's full step
  count. A SIGTERM or SIGINT does the same at the end of the current step (train/preemption.py;
  the result has 'preempted_at_step'). `evaluators` run after the eval loss at every eval step
  (train/evaluators.py).
  """
  validation.expect(derived)
  with preemption.StopRequest() as stop:  # until the state is ready a signal abandons start-up.
    memory.for_run(derived)  # logged; a step that cannot fit is refused before anything is built.
    if derived.config.lm_eval.tasks and not evaluators:
      logging.warning(
        'config.lm_eval.tasks is set but no evaluator was passed: no lm-eval scores (main.py '
        'builds harness.LmEvalEvaluator; a caller of loop.run passes it in `evaluators`)'
      )
    workdir_lib.check(workdir)
    _compilation_cache(derived.config.train.compilation_cache_dir)
    r = context.setup(derived)
    task = task_fn(r) if task_fn else context.lm_task(r)
    params = _fresh_params(r, workdir, init_params_fn)  # checked before the workdir is touched.
    lock = workdir_lib.claim(workdir)
    try:
      return _guarded(r, task, workdir, params, stop_after, stop, evaluators)
    finally:
      if lock:
        lock.close()


def _compilation_cache(path: str) -> None:
  """Point jax's persistent compilation cache at `path` ('' leaves jax's setting alone); a cache
  already in use with another directory is reset so that the next compile uses this one."""
  if not path or jax.config.jax_compilation_cache_dir == path:
    return
  from jax.experimental.compilation_cache import compilation_cache

  jax.config.update('jax_compilation_cache_dir', path)
  compilation_cache.reset_cache()


def _fresh_params(
  r: Run, workdir: str, init_params_fn: Callable[[Run], PyTree] | None
) -> Callable[[], PyTree | None]:
  """() -> the params a fresh (not resumed) run starts from: loaded now when the workdir has no
  checkpoint, so a bad `init_from` is refused before anything in the workdir changes."""
  if init_params_fn is None:
    return lambda: None
  if '://' in workdir or workdir_lib.latest_checkpoint_step(workdir) is not None:
    return lambda: init_params_fn(r)  # likely a resume: loaded only if it does not happen.
  with jax.set_mesh(r.mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    loaded = [init_params_fn(r)]
  return loaded.pop  # handed over once: the run holds no second reference to them.


def _guarded(
  r: Run,
  task: Task,
  workdir: str,
  params: Callable[[], PyTree | None],
  stop_after: int | None,
  stop: preemption.StopRequest,
  evaluators: Sequence[Evaluator],
) -> dict:
  """`_train` with its checkpoint manager, under `committed`."""
  mngr = checkpoint.manager(workdir, r.config.train)
  with committed(mngr, workdir):
    return _train(r, task, workdir, mngr, params, stop_after, stop, evaluators)


@contextlib.contextmanager
def committed(mngr: ocp.CheckpointManager, workdir: str):
  """Every exit waits for a pending save, so it commits (or fails) whole; a full disk becomes one
  ENOSPC error naming the kept checkpoint, a step that did not fit one OutOfMemory (train/group.py
  uses it too)."""
  finished = False
  try:
    yield
    mngr.wait_until_finished()  # a failed async save raises here.
    finished = True
  except Exception as e:
    if _out_of_memory(e):
      raise OutOfMemory(
        f'out of device memory ({str(e).splitlines()[0][:200]}); the estimate logged at the '
        'start was too low: use smaller (eval) batches, remat or more sharding (train/memory.py)'
      ) from e
    if not _disk_full(e):
      raise
    _wait_quietly(mngr)
    mngr.reload()
    kept = mngr.latest_step()
    raise OSError(
      errno.ENOSPC,
      f'disk full writing {workdir}; '
      + (
        f'its last committed checkpoint (step {kept}) is kept'
        if kept is not None
        else 'no checkpoint had been committed yet'
      )
      + ': free space and run the same command to resume',
    ) from e
  finally:
    # A second Ctrl-C (KeyboardInterrupt) exits at once instead of waiting.
    if not finished and sys.exc_info()[0] is not KeyboardInterrupt:
      _wait_quietly(mngr)


class OutOfMemory(MemoryError):
  """A step or evaluation that did not fit on the device: the run failed (exit 1), its input was
  valid; never reported as a full disk."""


def _out_of_memory(e: BaseException) -> bool:
  """XLA's RESOURCE_EXHAUSTED from an allocation (an accelerator's or the host's)."""
  text = str(e)
  return isinstance(e, MemoryError) or (
    'RESOURCE_EXHAUSTED' in text and ('memory' in text.lower() or 'allocat' in text.lower())
  )


def _disk_full(e: BaseException) -> bool:
  """ENOSPC / quota, as an OSError or as TensorStore's RESOURCE_EXHAUSTED from an orbax save."""
  if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
    return True
  text = str(e)
  return 'No space left on device' in text or (
    'RESOURCE_EXHAUSTED' in text and not _out_of_memory(e)
  )


def _wait_quietly(mngr: ocp.CheckpointManager) -> None:
  """Let a pending save commit (or fail) on an error path; the original error is the one raised."""
  try:
    mngr.wait_until_finished()
  except Exception as e:
    logging.warning('A pending checkpoint save failed too: %s', str(e)[:200])


def _train(
  r: Run,
  task: Task,
  workdir: str,
  mngr: ocp.CheckpointManager,
  params: Callable[[], PyTree | None],
  stop_after: int | None,
  stop: preemption.StopRequest,
  evaluators: Sequence[Evaluator],
) -> dict:
  """Resume or start, then step; the actions run at their cadence; returns the final metrics."""
  num_steps = r.derived.num_steps
  end = num_steps if stop_after is None else min(stop_after, num_steps)
  meta = {**context.stream_meta(r.config), **task.meta}
  with jax.set_mesh(r.mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    state, latest, held = _resume(r, mngr, meta, workdir, params, stop)
    task = with_held(r, task, held)
    start = int(jax.device_get(state.step))
    train_step = context.jit_train_step(r, task)
    eval_loss = EvalLoss()
    for evaluator in (eval_loss, *evaluators):
      evaluator.start(r, task)
    clock, log, actions = _actions(
      r, workdir, mngr, meta, start, end, latest, eval_loss, evaluators
    )
    _announce(r, workdir, start)
    in_flight = None
    for step in range(start, end):
      # Signalled before the first step, or stopped early before this resume: nothing new.
      if step == start and (stop.requested or any(a.finished for a in actions)):
        break
      state, step_metrics = train_step(state, _batch(r, task, step), *task.frozen)
      # At most two steps dispatched (this one queued behind the last): the device stays busy,
      # and a SIGTERM stops within a step or two, not after however many Python ran ahead.
      jax.block_until_ready(in_flight)
      in_flight, done = step_metrics, step + 1
      clock.started(done, step_metrics)
      # SIGTERM / SIGINT: finish this step, checkpoint it, return (all processes at one step).
      stopping = stop.should_stop(done)
      if any(a.due(done, stopping) for a in actions):
        m = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        for action in actions:  # one that returns True stops the run after this step.
          stopping = bool(action(done, state, m, stopping)) or stopping
      if stopping:
        break
    mngr.wait_until_finished()
    last = log.last
    if stop.requested:
      hooks.report_stop(stop, state, workdir, last)
    if not last:  # nothing logged now (a finished run rerun): the same summary as its end.
      last = {**metrics.last_row(os.path.join(workdir, 'metrics.jsonl')), **eval_loss(state.params)}
    if end < num_steps and not stop.requested:  # stop_after: not finished; a rerun resumes.
      last['stopped_at_step'] = int(jax.device_get(state.step))
  log.writer.flush()
  return _final(r, last)


def _resume(
  r: Run,
  mngr: ocp.CheckpointManager,
  meta: dict,
  workdir: str,
  params: Callable[[], PyTree | None],
  stop: preemption.StopRequest,
) -> tuple[PyTree, int | None, PyTree]:
  """(state, the step resumed from or None, held kernels): the latest good checkpoint, else a
  fresh state. Only once the resume check passed are config.json and metrics.jsonl changed. A
  LoRA run's frozen base comes from its record (`_with_base`); `meta` gets the record to save it
  with. A QLoRA base's kernels held quantized come apart from the state ({} for other runs)."""
  state, latest = None, None
  if mngr.all_steps():
    try:
      state, latest = checkpoint.restore_latest_good(mngr, context.abstract_state(r), meta, workdir)
    except checkpoint.StateMismatch as e:
      changed = checkpoint.config_changes(workdir, r.config.to_dict())
      raise checkpoint.StateMismatch(
        f'{e}; it was written with {changed or "the settings in its config.json"}: restore '
        'those settings or use a new --workdir'
      ) from None
  if state is not None:
    state, held = _with_base(r, mngr, latest, state, workdir, meta)
  else:  # every input (a deferred init_from too) loads before the workdir changes.
    loaded, held = _held_apart(params())
    state = context.init_state(r, loaded)
    if loaded is not None:
      _record_base(r, state, meta, held)
  stop.ready()  # restored: a signal from here on stops at a step boundary (before the first).
  metrics.truncate_jsonl(os.path.join(workdir, 'metrics.jsonl'), latest or 0)  # (checks it first)
  checkpoint.write_config(workdir, json.dumps(r.config.to_dict(), indent=2))
  if latest is not None:
    logging.info('Resumed from step %d in %s', latest, workdir)
  return state, latest, held


def _held_apart(params: PyTree | None) -> tuple[PyTree | None, PyTree]:
  """(params, {}), or for a QLoRA base (params, its kernels held quantized) apart."""
  if params is None or not resident_quant.holds(params):
    return params, {}
  return resident_quant.split(params)


def with_held(r: Run, task: Task, held: PyTree) -> Task:
  """QLoRA: `task` with its base's held kernels as one more frozen input of each step (replicated,
  never differentiated, in no optimizer state), joined to the params in its loss functions; `task`
  as it is without them (`held` {})."""
  if not held:
    return task

  def joined(fn: Callable | None) -> Callable | None:
    if fn is None:
      return None
    return lambda p, batch, *frozen: fn(resident_quant.join(p, frozen[-1]), batch, *frozen[:-1])

  return dataclasses.replace(
    task,
    loss_fn=joined(task.loss_fn),
    eval_loss_fn=joined(task.eval_loss_fn),
    frozen=(*task.frozen, held),
    frozen_shardings=(*task.frozen_shardings, sharding.replicated(r.mesh)),
  )


def _record_base(r: Run, state: PyTree, meta: dict, held: PyTree) -> None:
  """A LoRA run started from config.init_from: `meta` gets its frozen base's record (source and
  checksums: a QLoRA base's held kernels too), which its checkpoints then reference instead of
  holding the base."""
  record = init_from.base_record(r.config.init_from, r.derived.model)
  if record:
    base = resident_quant.join(lora.split(state.params)[0], held)
    meta[checkpoint.LORA_BASE] = {**record, 'checksum': checkpoint.checksum(base)}


def _with_base(
  r: Run, mngr: ocp.CheckpointManager, step: int, state: PyTree, workdir: str, meta: dict
) -> tuple[PyTree, PyTree]:
  """(state, held kernels): a restored checkpoint's state, a LoRA one's adapters joined by the
  frozen base its record names (reloaded, checksums verified: a changed base is refused before
  anything changes); a QLoRA base's kernels held quantized apart ({} for other runs)."""
  record = checkpoint.restore_meta(mngr, step).get(checkpoint.LORA_BASE)
  if not record:
    return state, {}
  base_shardings = lora.split(r.state_shardings.params)[0]
  where = os.path.join(workdir, 'checkpoints', str(step))
  base, meta[checkpoint.LORA_BASE] = init_from.resume_base(
    r.config.init_from, r.derived.model, record, base_shardings, where
  )
  base, held = _held_apart(base)
  return state.replace(params=lora.combine(base, state.params)), held


def _batch(r: Run, task: Task, step: int) -> dict:
  """The global train batch of `step`: this host's rows, plus the task's extra arrays."""
  host = r.train_ds.batch_arrays(step)  # 'tokens' (+ loss mask, segment ids, positions: SFT).
  if task.extra_batch:
    host.update(task.extra_batch(step, host))
  return context.global_batch(r, host)


def _announce(r: Run, workdir: str, start: int) -> None:
  """Before the first step: a finished run says so; the schedule's warnings."""
  if start >= r.derived.num_steps:
    logging.info('Run in %s already finished at step %d; nothing to train.', workdir, start)
  for warning in validation.schedule_warnings(r.config, r.derived):
    logging.warning(warning)


def _actions(
  r: Run,
  workdir: str,
  mngr: ocp.CheckpointManager,
  meta: dict,
  start: int,
  end: int,
  latest: int | None,
  eval_loss: EvalLoss,
  evaluators: Sequence[Evaluator],
) -> tuple[hooks.Clock, hooks.Log, list[hooks.Action]]:
  """The clock, the log and every action in the order they run on a step whose metrics are read:
  guard (before anything is saved), rates, evaluators, the best checkpoint, log, checkpoint."""
  t, num_steps = r.config.train, r.derived.num_steps
  clock = hooks.Clock(r, start, end)
  log = hooks.Log(metrics.make_writer(workdir), clock, t.log_every, num_steps)
  ckpt = hooks.Checkpoint(mngr, meta, t.checkpoint_every, end, latest)
  guard = divergence.Guard(t.spike_factor, t.spike_window, r.config.model.vocab_size)
  evaluate = hooks.Evaluate([eval_loss, *evaluators], t.eval_every, num_steps)
  best = []
  if t.best_metric:
    config_json = json.dumps(r.config.to_dict(), indent=2)
    best = [hooks.KeepBest(workdir, config_json, t, evaluate, start, meta)]
  return clock, log, [hooks.Guard(guard, workdir, ckpt), clock, evaluate, *best, log, ckpt]


def _final(r: Run, last: dict) -> dict:
  """The final metrics, with the corpus's unigram byte entropy to compare bits/byte against."""
  last['unigram_byte_entropy_bits'] = r.eval_ds.unigram_byte_entropy_bits
  last.update(r.eval_ds.describe())  # which rows eval/loss is measured on.
  if 'eval/bits_per_byte' in last:
    logging.info(
      'Final eval/bits_per_byte %.4f vs unigram byte entropy %.4f bits',
      last['eval/bits_per_byte'],
      last['unigram_byte_entropy_bits'],
    )
  return last
