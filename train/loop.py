"""The training loop shared by plain LM, distillation and sweep runs.

`run(config, workdir, task)` validates the config, builds the mesh, data, sharded state
and one jitted train step, resumes from the latest checkpoint, trains, evaluates,
checkpoints and logs. What differs between trainers lives in a `Task`.
"""

import dataclasses
import errno
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from train import checkpoint, divergence, flops, metrics, preemption, sharding, validation
from train import optimizer as optim
from train import state as state_lib
from train import workdir as workdir_lib
from train.data import pipeline
from train.step import TrainState, lm_loss, make_eval_step, make_train_step


@dataclasses.dataclass
class Task:
  """What a trainer plugs into the loop.

  loss_fn(params, batch, *frozen) -> (loss_sum, sums) is used for training and eval;
  `frozen` are extra jit inputs that get no gradient (e.g. teacher params) with their
  shardings; `extra_batch(step, host_rows)` adds host-local arrays to the train batch;
  `meta` is recorded in (and checked against) checkpoints. `eval_loss_fn` (same signature;
  default `loss_fn`) is what evaluation uses, e.g. plain CE when the training objective
  differs; its sums['loss'] becomes eval/loss and eval/bits_per_byte.
  """

  loss_fn: Callable
  frozen: tuple = ()
  frozen_shardings: tuple = ()
  extra_batch: Callable | None = None
  meta: dict = dataclasses.field(default_factory=dict)
  eval_loss_fn: Callable | None = None


@dataclasses.dataclass
class Run:
  """Everything `run` builds before the first step; also used by tools (e.g. offline distill)."""

  config: ml_collections.ConfigDict
  derived: validation.Derived
  mesh: jax.sharding.Mesh
  train_ds: object
  eval_ds: object
  tokenizer: object
  state_shardings: TrainState
  batch_sharding: jax.sharding.NamedSharding
  optimizer: optax.GradientTransformation
  lr_fn: Callable


def setup(config, with_data: bool = True, derived: validation.Derived | None = None) -> Run:
  """Validate, then build mesh, data, optimizer and state shardings (nothing compiled yet).
  Without data (benchmarks on synthetic tokens) train_ds, eval_ds and tokenizer are None.
  `derived`: validation.derive's result for `config` when the caller has it (not derived again)."""
  if derived is None:
    derived = validation.derive(config, jax.device_count(), jax.process_count())
  mesh = sharding.make_mesh(config.mesh)
  train_ds, eval_ds, tokenizer = None, None, None
  if with_data:
    train_ds, eval_ds, tokenizer = pipeline.make_datasets(
      config, jax.process_index(), jax.process_count()
    )
  optimizer = optim.make_optimizer(config.optimizer, derived.num_steps, derived.model)
  lr_fn = optim.lr_schedule(config.optimizer, derived.num_steps)
  state_shardings = state_lib.state_shardings(derived.model, optimizer, mesh, derived.loss_scale)
  return Run(
    config,
    derived,
    mesh,
    train_ds,
    eval_ds,
    tokenizer,
    state_shardings,
    sharding.batch_sharding(mesh),
    optimizer,
    lr_fn,
  )


def init_state(r: Run, params=None) -> TrainState:
  """Fresh state on the mesh: random params from config.seed, or the given (e.g. imported) ones."""
  return state_lib.init_state(
    r.derived.model,
    r.optimizer,
    r.state_shardings,
    r.config.seed,
    params,
    r.config.train.loss_scale_init,
  )


def global_batch(r: Run, host_arrays: dict):
  """Host-local rows -> global arrays sharded over ('data', 'fsdp')."""

  def put(x):
    shape = (r.config.train.global_batch_size,) + x.shape[1:]
    return jax.make_array_from_process_local_data(r.batch_sharding, x, shape)

  return jax.tree.map(put, host_arrays)


def evaluate(r: Run, eval_step, params, frozen) -> dict:
  """Mean eval loss (and other per-token sums) over `eval_batches` fixed validation batches of
  each data source -> eval/loss, eval/bits_per_byte (and eval/<source>/... for a mixture)."""
  means = {}
  for name, source in r.eval_ds.sources.items():
    total = None
    for i in range(r.config.train.eval_batches):
      sums = eval_step(params, global_batch(r, {'tokens': source.eval_batch(i)}), *frozen)
      total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    total = jax.device_get(total)
    n = max(float(total['tokens']), 1.0)
    means[name] = {k: float(v) / n for k, v in total.items() if k != 'tokens'}
  return r.eval_ds.metrics(means)


def _lm_eval(r: Run) -> Callable | None:
  """params -> lm_eval/<task>/<metric> for config.lm_eval.tasks (train/harness.py); None: off."""
  if not r.config.get('lm_eval') or not r.config.lm_eval.tasks:
    return None
  from train import harness  # imports lm-eval: only when tasks are set.

  return harness.loop_evaluator(r)


PIPELINE = 'token-shards-v1'


def stream_meta(config) -> dict:
  """What the batch stream and the param shapes depend on; must not change across a resume."""
  # 'pipeline' names the batch order (grain index shuffle over token shards): a checkpoint from
  # another order is refused instead of silently resumed on different batches.
  return {
    'seed': config.seed,
    'dataset': config.data.dataset,
    'tokenizer': config.data.tokenizer,
    'pipeline': PIPELINE,
    'seq_len': config.data.seq_len,
    'global_batch_size': config.train.global_batch_size,
    'model': json.loads(config.model.to_json()),
  }


def run(
  config,
  workdir: str,
  task_fn: Callable[[Run], Task] | None = None,
  init_params_fn: Callable[[Run], dict] | None = None,
  stop_after: int | None = None,
  derived: validation.Derived | None = None,
) -> dict:
  """Train to config's step count in `workdir` (resuming if possible); returns final metrics.

  `stop_after` ends this invocation early at that step (a checkpoint is written), as a
  preemption would; the schedule still follows the config's full step count. A SIGTERM or
  SIGINT does the same at the end of the current step (train/preemption.py). `derived`:
  validation.derive's result for `config` when the caller has it (see `setup`).
  """
  with preemption.StopRequest() as stop:
    return _run(config, workdir, task_fn, init_params_fn, stop_after, stop, derived)


def _run(config, workdir, task_fn, init_params_fn, stop_after, stop, derived) -> dict:
  r = setup(config, derived=derived)
  task = task_fn(r) if task_fn else Task(loss_fn=lm_loss(r.derived.model))
  lock = workdir_lib.claim(workdir)
  mngr = checkpoint.manager(workdir, r.config.train)
  finished = False
  try:
    last = _train(r, task, workdir, mngr, init_params_fn, stop_after, stop)
    mngr.wait_until_finished()  # a failed async save raises here.
    finished = True
  except Exception as e:
    if not _disk_full(e):
      raise
    _wait_quietly(mngr)
    mngr.reload()
    raise OSError(
      errno.ENOSPC,
      f'disk full writing {workdir}; its last committed checkpoint '
      f'(step {mngr.latest_step()}) is kept: free space and run the same command '
      'to resume',
    ) from e
  finally:
    # Every exit waits for a pending save, so it commits (or fails) whole; a second Ctrl-C
    # (KeyboardInterrupt) exits at once instead.
    if not finished and sys.exc_info()[0] is not KeyboardInterrupt:
      _wait_quietly(mngr)
    if lock:
      lock.close()
  return last


def _disk_full(e: BaseException) -> bool:
  """ENOSPC / quota, as an OSError or as TensorStore's RESOURCE_EXHAUSTED from an orbax save."""
  if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
    return True
  text = str(e)
  return 'RESOURCE_EXHAUSTED' in text or 'No space left on device' in text


def _wait_quietly(mngr):
  """Let a pending save commit (or fail) on an error path; the original error is the one raised."""
  try:
    mngr.wait_until_finished()
  except Exception as e:
    logging.warning('A pending checkpoint save failed too: %s', str(e)[:200])


def _train(r: Run, task: Task, workdir, mngr, init_params_fn, stop_after, stop) -> dict:
  cfg, t = r.config, r.config.train
  num_steps = r.derived.num_steps
  meta = {**stream_meta(cfg), **task.meta}
  with jax.set_mesh(r.mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
    state, latest = None, None
    if mngr.all_steps():
      abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        jax.eval_shape(lambda: init_state(r)),
        r.state_shardings,
      )
      state, latest = checkpoint.restore_latest_good(mngr, abstract, meta, workdir)
    # Only now, with the resume check passed, does this run's config replace the old one.
    checkpoint.write_config(workdir, cfg.to_json_best_effort(indent=2))
    metrics.truncate_jsonl(os.path.join(workdir, 'metrics.jsonl'), latest or 0)
    writer = metrics.make_writer(workdir)
    if state is not None:
      logging.info('Resumed from step %d in %s', latest, workdir)
    else:
      state = init_state(r, init_params_fn(r) if init_params_fn else None)
    start = int(jax.device_get(state.step))

    frozen_sh = tuple(task.frozen_shardings)
    train_step = jax.jit(
      make_train_step(
        task.loss_fn,
        r.optimizer,
        r.lr_fn,
        t.grad_accum_steps,
        t.loss_scale_period if r.derived.loss_scale else 0,
      ),
      in_shardings=(r.state_shardings, r.batch_sharding) + frozen_sh,
      out_shardings=(r.state_shardings, sharding.replicated(r.mesh)),
      donate_argnums=(0,),
    )
    eval_step = jax.jit(
      make_eval_step(task.eval_loss_fn or task.loss_fn),
      in_shardings=(r.state_shardings.params, r.batch_sharding) + frozen_sh,
      out_shardings=sharding.replicated(r.mesh),
    )
    lm_eval_fn = _lm_eval(r)

    flops_per_token = flops.train_flops_per_token(r.derived.model, cfg.data.seq_len)
    peak = flops.peak_flops() * jax.device_count()
    guard = divergence.Guard(t.spike_factor, t.spike_window, cfg.model.vocab_size)
    last_saved = latest
    last = {}
    if start >= num_steps:
      logging.info('Run in %s already finished at step %d; nothing to train.', workdir, start)
    for warning in validation.schedule_warnings(cfg, r.derived):
      logging.warning(warning)
    tic, tic_step, first = time.time(), start, None  # rates are timed from the first step's end.
    end = num_steps if stop_after is None else min(stop_after, num_steps)
    for step in range(start, end):
      if step == start and stop.requested:  # signalled before the first step: nothing new.
        break
      host = {'tokens': r.train_ds.batch(step)}
      if task.extra_batch:
        host.update(task.extra_batch(step, host))
      state, step_metrics = train_step(state, global_batch(r, host), *task.frozen)
      done = step + 1
      if first is None:  # compiled and run once: time from here, so rates exclude compilation.
        jax.block_until_ready(step_metrics)
        tic, tic_step, first = time.time(), done, (time.time(), done)
      is_eval = done % t.eval_every == 0 or done == num_steps
      # SIGTERM / SIGINT: finish this step, checkpoint it, return (all processes at one step).
      stopping = stop.should_stop(done)
      is_ckpt = done % t.checkpoint_every == 0 or done == end or stopping
      if done % t.log_every == 0 or is_eval or is_ckpt:
        m = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        # Every checkpointed state passes the guard: a diverged one is never saved.
        guard.check(done, m, workdir, last_saved)
        now = time.time()
        tokens_per_sec = (
          (done - tic_step) * r.derived.tokens_per_step / max(now - tic, 1e-9)
          if done > tic_step
          else math.nan
        )
        m['train/tokens_seen'] = done * r.derived.tokens_per_step
        m['train/tokens_per_sec'] = tokens_per_sec
        m['train/mfu'] = tokens_per_sec * flops_per_token / peak
        del m['train/tokens']
        if is_eval:
          m.update(evaluate(r, eval_step, state.params, task.frozen))
          if lm_eval_fn:
            m.update(lm_eval_fn(state.params))
        writer.write_scalars(done, m)
        if jax.process_index() == 0:
          eta = ((end - done) * (now - first[0]) / (done - first[1])) if done > first[1] else None
          logging.info(metrics.console_line(done, num_steps, m, eta))
        last = m
        tic, tic_step = time.time(), done
      if is_ckpt:
        checkpoint.save(mngr, done, state, meta)
        last_saved = done
      if stopping:
        break
    mngr.wait_until_finished()
    if stop.requested:
      logging.warning(
        '%s: stopped at step %d, its checkpoint committed in %s; run the same command to resume.',
        stop.signal,
        int(jax.device_get(state.step)),
        workdir,
      )
      last['preempted_at_step'] = int(jax.device_get(state.step))
    if not last:  # nothing logged now (a finished run rerun): the same summary as its end.
      last = {
        **metrics.last_row(os.path.join(workdir, 'metrics.jsonl')),
        **evaluate(r, eval_step, state.params, task.frozen),
      }
  writer.flush()
  last['unigram_byte_entropy_bits'] = r.eval_ds.unigram_byte_entropy_bits
  if 'eval/bits_per_byte' in last:
    logging.info(
      'Final eval/bits_per_byte %.4f vs unigram byte entropy %.4f bits',
      last['eval/bits_per_byte'],
      last['unigram_byte_entropy_bits'],
    )
  return last
