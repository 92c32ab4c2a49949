"""Member groups: K runs that differ only in per-member values (seed, peak lr, weight decay) train
as one jitted program, `jax.vmap` over a leading member axis of the stacked train state.

A small model leaves most of a chip (or of 2 CPU cores) idle each step; K members in one program
share the per-step overhead (W. Whitney, "Parallelizing neural networks on one GPU with JAX").
Each member keeps its own init and data order (its seed), its own schedule peak and weight decay
(arrays fed to the step, not constants baked into it) and its own divergence guard: a diverged
member is frozen (its state no longer changes) and reported, and the others' numbers do not move.

The group's directory holds one orbax checkpoint of the stacked state (and `alive`); each member's
directory gets the loop's metrics.jsonl rows and config.json while training, and at the end an
ordinary checkpoint of its own final state, so a member is a plain finished run to every tool
(train.tools.export, train.tools.sample, init_from, a rerun of train.loop).

  group.run([validation.derive(config_a), validation.derive(config_b)], [dir_a, dir_b], group_dir)
"""

import dataclasses
import json
import logging
import os
from collections.abc import Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import models
from configs import schema
from models import parametrization
from train import (
  checkpoint,
  context,
  divergence,
  hooks,
  loop,
  memory,
  metrics,
  preemption,
  sharding,
  validation,
)
from train import optimizer as optim
from train import state as state_lib
from train import workdir as workdir_lib
from train.step import TrainState, lm_loss, make_eval_step, make_train_step

# The config keys whose values may differ inside a group: the step reads them as [K] arrays.
VARYING = ('seed', 'optimizer.lr', 'optimizer.weight_decay') + tuple(
  f'model.{k}' for k in schema.MUP_HPARAMS
)
HYPERS = ('lr', 'weight_decay')  # VARYING's optimizer keys, in the order of the hypers dict.


@flax.struct.dataclass
class GroupState:
  """The members' train states stacked on a leading axis, and `alive` [K] (int32: 0 once a member
  diverged; its state is frozen from that step on)."""

  state: TrainState
  alive: jax.Array


def group_key(config: ml_collections.ConfigDict) -> str:
  """Members whose keys are equal can share one program: the config without VARYING keys."""
  d = json.loads(json.dumps(config.to_dict(), default=str))
  for key in VARYING:
    *path, last = key.split('.')
    node = d
    for p in path:
      node = node[p]
    node.pop(last)
  return json.dumps(d, sort_keys=True)


def why_not(config: ml_collections.ConfigDict) -> str | None:
  """Why a member cannot train in a group (it then trains alone), or None."""
  if config.get('distill') is not None:
    return 'a distilled member (its teacher is a second model)'
  if config.init_from:
    return 'config.init_from (members would start from the same params)'
  if config.train.best_metric:
    return "config.train.best_metric (KeepBest keeps one run's best checkpoint)"
  if config.lm_eval.tasks:
    return 'config.lm_eval.tasks (lm-eval scores one model at a time)'
  if getattr(config.model, 'lora_dropout', 0):
    return 'model.lora_dropout (the group step draws no dropout masks)'
  return None


@dataclasses.dataclass
class Group:
  """The members' runs (each its own data order and schedule) and the group's jit inputs."""

  dirs: list
  runs: list  # context.Run per member; runs[0] gives the mesh, shapes and eval set.
  hypers: dict  # {'lr': [K], 'weight_decay': [K], 'model.<μP key>': [K] where members differ}
  seeds: np.ndarray
  shared_batch: bool  # one seed: every member reads the same batch (fed once, not stacked).
  shardings: GroupState
  batch_sharding: NamedSharding
  rules: tuple  # sharding.LOGICAL_RULES with the member axis placed (config.mesh.members).


def _stacked(s: NamedSharding, rules: tuple) -> NamedSharding:
  """A state or batch sharding with the member axis in front, by its rule in `rules`
  (replicated by default); mesh axes it takes (e.g. 'data') are dropped from the other dims."""
  axis = nn.logical_to_mesh_axes(('member',), rules)[0]
  taken = set(axis if isinstance(axis, tuple) else (axis,)) - {None}

  def rest(dim: object) -> object:
    names = tuple(n for n in (dim if isinstance(dim, tuple) else (dim,)) if n not in taken)
    return None if not names or names == (None,) else names if len(names) > 1 else names[0]

  return NamedSharding(s.mesh, P(axis, *(rest(d) for d in s.spec)))


def setup(
  derived: Sequence[validation.Derived], dirs: Sequence[str], with_data: bool = True
) -> Group:
  """Check that the members (each validation.derive(config)) may share a program and build
  their runs (without data: benchmarks on synthetic tokens, as context.setup)."""
  derived = [validation.expect(d) for d in derived]
  keys = {group_key(d.config) for d in derived}
  if len(keys) > 1:
    raise ValueError(f'group members differ in more than {", ".join(VARYING)}: train them apart')
  for d in derived:
    if (reason := why_not(d.config)) is not None:
      raise ValueError(f'a member group cannot hold {reason}')
  shared = len({d.config.seed for d in derived}) == 1  # one data order: only member 0 reads it.
  runs = [context.setup(d, with_data and (i == 0 or not shared)) for i, d in enumerate(derived)]
  opts = [r.config.optimizer for r in runs]
  r0 = runs[0]
  rules = _member_rules(r0, len(runs))
  stack = lambda s: _stacked(s, rules)
  return Group(
    list(dirs),
    runs,
    {
      **{k: np.asarray([o[k] for o in opts], np.float32) for k in HYPERS},
      **_model_hypers([r.derived.model for r in runs]),
    },
    np.asarray([r.config.seed for r in runs], np.int32),
    shared,
    GroupState(jax.tree.map(stack, r0.state_shardings), stack(sharding.replicated(r0.mesh))),
    r0.batch_sharding if shared else stack(r0.batch_sharding),
    rules,
  )


def _model_hypers(models_: Sequence) -> dict:
  """{'model.<key>': [K]} of the μP multipliers (schema.MUP_HPARAMS) whose values differ between
  members (α_out resolved: 0 means the parametrization's tuned value); the rest stay constants."""
  value = lambda m, k: parametrization.output_mult(m) if k == 'mup_output_mult' else getattr(m, k)
  return {
    f'model.{k}': np.asarray([value(m, k) for m in models_], np.float32)
    for k in schema.MUP_HPARAMS
    if len({value(m, k) for m in models_}) > 1
  }


def _varies_model(hyper: dict) -> bool:
  return any(k.startswith('model.') for k in hyper)


def _member_model(r: context.Run, hyper: dict) -> object:
  """The member's model config: run r's with the traced per-member μP multipliers in `hyper`."""
  return r.derived.model.replace(
    **{k.split('.', 1)[1]: v for k, v in hyper.items() if k.startswith('model.')}
  )


def _member_rules(r: context.Run, k: int) -> tuple:
  """The rules with the member axis over config.mesh.members where k members split evenly over
  it; otherwise (a last, smaller group) every member on every device, said in the log."""
  axis = r.config.mesh.get('members', '')
  if axis and k % r.mesh.shape[axis]:
    logging.info(
      'config.mesh.members=%r: %d members do not split over its %d devices; each member '
      'runs on every device',
      axis,
      k,
      r.mesh.shape[axis],
    )
    axis = ''
  return sharding.member_rules(axis)


def _scale(r: context.Run) -> float | None:
  return r.config.train.loss_scale_init if r.derived.loss_scale else None


def _fresh(g: Group) -> object:
  """seeds [K] -> the stacked fresh state: member i's params from its seed, as its run alone."""
  r0 = g.runs[0]
  return jax.vmap(
    lambda seed: state_lib.fresh_state(
      r0.derived.model, r0.optimizer, jax.random.key(seed), None, _scale(r0)
    )
  )


def init(g: Group) -> GroupState:
  """Fresh stacked state on the group's shardings, every member alive."""
  fresh = jax.jit(_fresh(g), out_shardings=g.shardings.state)(g.seeds)
  return GroupState(fresh, jax.device_put(np.ones(len(g.runs), np.int32), g.shardings.alive))


def abstract(g: Group) -> GroupState:
  """The stacked state's shapes with their shardings (a restore target); nothing allocated."""
  shapes = GroupState(
    jax.eval_shape(_fresh(g), g.seeds), jax.ShapeDtypeStruct((len(g.runs),), np.int32)
  )
  return jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, g.shardings
  )


def jit_step(g: Group, task: context.Task) -> object:
  """(hypers, group state, batch) -> (group state, metrics [K]): every member's train step as one
  vmapped program; a member whose loss (or grad norm) is not finite, or that was dead, keeps its
  previous state."""
  r0 = g.runs[0]
  t, num_steps = r0.config.train, r0.derived.num_steps

  def member_step(hyper: dict, state: TrainState, batch: dict) -> tuple:
    # Traced lr, weight decay (and μP multipliers): one program for all.
    opt = r0.config.optimizer.replace(**{k: hyper[k] for k in HYPERS})
    model = _member_model(r0, hyper)
    optimizer = optim.make_optimizer(opt, num_steps, model, r0.config.sparsity)
    step = make_train_step(
      lm_loss(model) if _varies_model(hyper) else task.loss_fn,
      optimizer,
      optim.lr_schedule(opt, num_steps),
      t.grad_accum_steps,
      t.loss_scale_period if r0.derived.loss_scale else 0,
      models.trainable(r0.derived.model) if parametrization.has_frozen(r0.derived.model) else None,
    )
    return step(state, batch)

  def group_step(hypers: dict, gs: GroupState, batch: dict) -> tuple:
    in_batch = None if g.shared_batch else 0
    new, m = jax.vmap(member_step, in_axes=(0, 0, in_batch))(hypers, gs.state, batch)
    grads_ok = jnp.isfinite(m['train/grad_norm'])
    if 'train/skipped' in m:  # float16: an overflowing step is skipped, not a divergence.
      grads_ok = grads_ok | (m['train/skipped'] > 0)
    ok = (gs.alive > 0) & jnp.isfinite(m['train/loss']) & grads_ok
    keep = lambda n, o: jnp.where(ok.reshape(ok.shape + (1,) * (n.ndim - 1)), n, o)
    return GroupState(jax.tree.map(keep, new, gs.state), ok.astype(jnp.int32)), m

  rep = sharding.replicated(r0.mesh)
  return jax.jit(
    group_step,
    in_shardings=(rep, g.shardings, g.batch_sharding),
    out_shardings=(g.shardings, rep),
    donate_argnums=(1,),
  )


def jit_eval(g: Group, task: context.Task) -> object:
  """(hypers, stacked params, eval batch) -> per-token sums [K]: every member on the same rows."""
  r0 = g.runs[0]

  def member_eval(hyper: dict, params: object, batch: dict) -> dict:
    plain = task.eval_loss_fn or task.loss_fn
    loss_fn = lm_loss(_member_model(r0, hyper)) if _varies_model(hyper) else plain
    return make_eval_step(loss_fn)(params, batch)

  return jax.jit(
    jax.vmap(member_eval, in_axes=(0, 0, None)),
    in_shardings=(sharding.replicated(r0.mesh), g.shardings.state.params, r0.batch_sharding),
    out_shardings=sharding.replicated(r0.mesh),
  )


def evaluate(g: Group, eval_step: object, params: object) -> list[dict]:
  """Each member's eval metrics (evaluators.evaluate's, per member) on the run's eval batches."""
  r0 = g.runs[0]
  means = [{} for _ in g.runs]
  for name, source in r0.eval_ds.sources.items():
    total = None
    for i in range(r0.config.train.eval_batches):
      sums = eval_step(g.hypers, params, context.global_batch(r0, source.eval_arrays(i)))
      total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    total = jax.device_get(total)
    n = np.asarray(total['tokens'], np.float64)
    if not n.all():
      raise ValueError(f'the eval batches of data source {name!r} hold no scored token')
    for k, mean in enumerate(means):
      mean[name] = {key: float(v[k]) / n[k] for key, v in total.items() if key != 'tokens'}
  return [r0.eval_ds.metrics(m) for m in means]


def _batch(g: Group, step: int) -> dict:
  """Step's train batch: one for all members (shared seed), else stacked [K, B, ...]."""
  r0 = g.runs[0]
  if g.shared_batch:
    return context.global_batch(r0, r0.train_ds.batch_arrays(step))
  rows = [r.train_ds.batch_arrays(step) for r in g.runs]
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *rows)

  def put(x: np.ndarray) -> jax.Array:
    shape = (x.shape[0], x.shape[1] * jax.process_count()) + x.shape[2:]
    return jax.make_array_from_process_local_data(g.batch_sharding, x, shape)

  return jax.tree.map(put, stacked)


def _meta(g: Group) -> dict:
  """What the group's checkpoints are checked against: member 0's stream and every member's values."""
  return {
    **context.stream_meta(g.runs[0].config),
    'seed': 'per member',
    'members': [
      {'seed': int(s), **{k: float(v[i]) for k, v in g.hypers.items()}}
      for i, s in enumerate(g.seeds)
    ],
  }


def run(
  derived: Sequence[validation.Derived],
  dirs: Sequence[str],
  group_dir: str,
  stop_after: int | None = None,
) -> list[dict]:
  """Train the group of members `derived` (each validation.derive(config)) in `group_dir`
  (resuming); per member its final metrics, or for a diverged member {'diverged': message};
  {'preempted_at_step': s} each when a signal stopped it."""
  derived = [validation.expect(d) for d in derived]
  with preemption.StopRequest() as stop:
    memory.for_run(derived[0], members=len(derived))  # K states on every device: refused early.
    g = setup(derived, dirs)
    for d in (group_dir, *dirs):
      workdir_lib.check(d)
    locks = [workdir_lib.claim(d) for d in (group_dir, *dirs)]
    try:
      return _train(g, group_dir, stop_after, stop)
    finally:
      for lock in locks:
        if lock:
          lock.close()


def _train(g: Group, group_dir: str, stop_after: int | None, stop: preemption.StopRequest) -> list:
  r0, k = g.runs[0], len(g.runs)
  t, num_steps = r0.config.train, r0.derived.num_steps
  end = num_steps if stop_after is None else min(stop_after, num_steps)
  meta = _meta(g)
  mngr = checkpoint.manager(group_dir, t)
  task = context.lm_task(r0)
  with (
    loop.committed(mngr, group_dir),  # a full disk: one line naming the kept checkpoint.
    jax.set_mesh(r0.mesh),
    nn.logical_axis_rules(g.rules),
  ):
    gs, latest = (None, None)
    if mngr.all_steps():
      gs, latest = checkpoint.restore_latest_good(mngr, abstract(g), meta, group_dir)
    start = latest or 0
    if gs is None:
      gs, start = from_members(g)
    if gs is None:
      gs, start = init(g), 0
    stop.ready()
    for r, d in zip(g.runs, g.dirs):
      metrics.truncate_jsonl(os.path.join(d, 'metrics.jsonl'), start)
      checkpoint.write_config(d, json.dumps(r.config.to_dict(), indent=2))
    writers = [metrics.JsonlWriter(os.path.join(d, 'metrics.jsonl')) for d in g.dirs]
    guards = [
      divergence.Guard(t.spike_factor, t.spike_window, r0.config.model.vocab_size) for _ in g.runs
    ]
    diverged = _diverged_before(gs, start)
    step_fn, eval_fn = jit_step(g, task), jit_eval(g, task)
    hypers = {key: jnp.asarray(v) for key, v in g.hypers.items()}
    clock = hooks.Clock(r0, start, end)
    ckpt = hooks.Checkpoint(mngr, meta, t.checkpoint_every, end, latest)
    logging.info('Member group of %d in %s: steps %d..%d', k, group_dir, start, end)
    for step in range(start, end):
      if step == start and stop.requested:
        break
      gs, step_metrics = step_fn(hypers, gs, _batch(g, step))
      done = step + 1
      clock.started(done, step_metrics)
      stopping = stop.should_stop(done)
      evaluating = done % t.eval_every == 0 or done == num_steps
      if done % t.log_every == 0 or evaluating or ckpt.due(done, stopping):
        ev = eval_fn if evaluating else None
        gs = _read(g, gs, done, step_metrics, guards, diverged, ckpt, clock, writers, ev)
        ckpt(done, gs, {}, stopping)
      if stopping:
        break
    mngr.wait_until_finished()
    for w in writers:
      w.close()
    if stop.requested:
      at = int(np.max(jax.device_get(gs.state.step)))
      logging.warning(
        '%s: the group stopped at step %d, its checkpoint committed in %s; run the same '
        'command to resume.',
        stop.signal,
        at,
        group_dir,
      )
      return [{'preempted_at_step': at} for _ in g.runs]
    if end < num_steps:  # stop_after: the members are not finished.
      return [{'stopped_at_step': end} for _ in g.runs]
    _write_members(g, gs, num_steps, diverged)
  return _finals(g, diverged)


def from_members(g: Group) -> tuple[GroupState | None, int]:
  """The stacked state from each member's own checkpoint (a WSD branch's start, or a member
  trained alone so far), when every member has one at the same step; (None, 0) when none has."""
  steps = [workdir_lib.latest_checkpoint_step(d) for d in g.dirs]
  if all(s is None for s in steps):
    return None, 0
  if len(set(steps)) > 1:
    raise ValueError(
      f'the members of a group have their own checkpoints at different steps '
      f'({", ".join(f"{os.path.basename(d)}: {s}" for d, s in zip(g.dirs, steps))}): train '
      'them apart (config.sweep.vmap=0)'
    )
  states = []
  for r, d in zip(g.runs, g.dirs):
    mngr = checkpoint.manager(d, r.config.train)
    meta = context.stream_meta(r.config)
    state, step = checkpoint.restore_latest_good(mngr, context.abstract_state(r), meta, d)
    if step != steps[0]:
      raise ValueError(f'{d}: its checkpoint at step {steps[0]} does not load; see above')
    states.append(state)
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
  alive = np.ones(len(g.runs), np.int32)
  return GroupState(
    *jax.device_put((stacked, alive), (g.shardings.state, g.shardings.alive))
  ), steps[0]


def save_members(
  group_dir: str,
  derived: Sequence[validation.Derived],
  step: int,
  dirs: Sequence[str],
  metas: Sequence[dict],
) -> None:
  """Member i's state at the group checkpoint `step` as an ordinary checkpoint in dirs[i] (with
  metas[i]): a WSD trunk group's states (members `derived`) at a branch point become the
  branches' starts."""
  g = setup(derived, [''] * len(derived), with_data=False)
  mngr = checkpoint.manager(group_dir, g.runs[0].config.train)
  if step not in mngr.all_steps():
    raise ValueError(
      f'{group_dir}: no group checkpoint at step {step} to branch from; remove the directory '
      'to retrain its members'
    )
  with jax.set_mesh(g.runs[0].mesh), nn.logical_axis_rules(g.rules):
    gs, _ = checkpoint.restore(mngr, step, abstract(g))
    for i, (r, d, meta) in enumerate(zip(g.runs, dirs, metas)):
      out = checkpoint.manager(d, r.config.train)
      checkpoint.save(out, step, jax.tree.map(lambda x, i=i: x[i], gs.state), meta)
      out.wait_until_finished()


def _diverged_before(gs: GroupState, start: int) -> dict:
  """{member: message} for members a resumed checkpoint holds dead."""
  alive = np.asarray(jax.device_get(gs.alive))
  return {
    int(i): f'diverged before step {start} (frozen in the group checkpoint)'
    for i in np.flatnonzero(alive == 0)
  }


def _read(g, gs, done, step_metrics, guards, diverged, ckpt, clock, writers, eval_fn):
  """A step whose metrics are read: guard each member (a diverged one is frozen from here on),
  evaluate, write each live member's row (the loop's row: its train metrics, rates, evals)."""
  host = jax.device_get(step_metrics)
  alive = np.asarray(jax.device_get(gs.alive))
  rows = [{key: float(v[i]) for key, v in host.items()} for i in range(len(g.runs))]
  for i, row in enumerate(rows):
    if i in diverged:
      continue
    try:
      if not alive[i]:
        raise divergence.Diverged(
          f'train/loss or train/grad_norm not finite by step {done}; frozen at the step before'
        )
      guards[i].check(done, row, g.dirs[i], ckpt.last_saved)
    except divergence.Diverged as e:
      diverged[i] = str(e)
      logging.warning('member %d (%s) diverged: %s; the others go on', i, g.dirs[i], e)
  if any(alive[i] for i in diverged):  # a spike the host saw: freeze that member from here on.
    alive = np.asarray([0 if i in diverged else 1 for i in range(len(g.runs))], np.int32)
    gs = gs.replace(alive=jax.device_put(alive, g.shardings.alive))
  if eval_fn is not None:
    for row, ev in zip(rows, evaluate(g, eval_fn, gs.state.params)):
      row.update(ev)
  rates = {'train/tokens': 0.0}
  clock(done, None, rates, False)  # each member's own tokens/s and MFU (the group's is K times).
  for i, row in enumerate(rows):
    if i not in diverged:
      del row['train/tokens']
      writers[i].write_scalars(done, {**row, **rates})
  live = [r['train/loss'] for i, r in enumerate(rows) if i not in diverged]
  if jax.process_index() == 0 and live:
    logging.info(
      'step %d/%d: %d of %d members training, train/loss %.4f..%.4f',
      done,
      g.runs[0].derived.num_steps,
      len(live),
      len(rows),
      min(live),
      max(live),
    )
  clock.restart(done)
  return gs


def _write_members(g: Group, gs: GroupState, step: int, diverged: dict) -> None:
  """Each finished member's own final state as an ordinary checkpoint in its directory."""
  for i, (r, d) in enumerate(zip(g.runs, g.dirs)):
    if i in diverged:
      continue
    mngr = checkpoint.manager(d, r.config.train)
    if mngr.latest_step() == step:  # written before a kill: nothing to redo.
      continue
    one = jax.tree.map(lambda x, i=i: x[i], gs.state)
    checkpoint.save(mngr, step, one, context.stream_meta(r.config))
    mngr.wait_until_finished()


def _finals(g: Group, diverged: dict) -> list[dict]:
  """The loop's final metrics per member (its last row and the corpus entropy), or the error."""
  entropy = g.runs[0].eval_ds.unigram_byte_entropy_bits
  return [
    {'diverged': diverged[i]}
    if i in diverged
    else {
      **metrics.last_row(os.path.join(d, 'metrics.jsonl')),
      'unigram_byte_entropy_bits': entropy,
      **g.runs[0].eval_ds.describe(),
    }
    for i, d in enumerate(g.dirs)
  ]


def extract(group_dir: str, member_dir: str, member: int, out: str) -> int:
  """Member `member`'s params at the group's latest checkpoint as a params-only workdir in `out`
  (train.tools.export, train.tools.sample, init_from read it); its config from
  `member_dir`/config.json. Returns the step. For a member still training; a finished member's
  directory is a run.

    python -m train.group --group=W/groups/<hash> --member_dir=W/<member> --member=i --out=DIR
  """
  config = ml_collections.ConfigDict(json.load(open(os.path.join(member_dir, 'config.json'))))
  derived = validation.derive(config)
  mngr = checkpoint.manager(group_dir, derived.config.train)
  step = mngr.latest_step()
  if step is None:
    raise ValueError(f'{group_dir}: no group checkpoint to extract from')
  k = len(checkpoint.restore_meta(mngr, step)['members'])
  if not 0 <= member < k:
    raise ValueError(f'--member={member}: the group has members 0..{k - 1}')
  g = setup([derived] * k, [''] * k, with_data=False)  # the shapes; the values are restored.
  with jax.set_mesh(g.runs[0].mesh), nn.logical_axis_rules(g.rules):
    gs, _ = checkpoint.restore(mngr, step, abstract(g))
    params = jax.device_get(jax.tree.map(lambda x: x[member], gs.state.params))
  meta = {'group': os.path.abspath(group_dir), 'member': member}
  checkpoint.write_params(out, json.dumps(config.to_dict(), indent=2), params, step, meta)
  return step


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  step = extract(f.group, f.member_dir, f.member, f.out)
  print(json.dumps({'out': f.out, 'step': step, 'member': f.member}))


if __name__ == '__main__':
  from train import cli

  flags.DEFINE_string('group', None, 'a member group directory (W/groups/<hash>)')
  flags.DEFINE_string('member_dir', None, "the member's directory (its config.json)")
  flags.DEFINE_integer('member', None, "the member's index in the group (sweep_member.json)")
  flags.DEFINE_string('out', None, 'a new directory: the params-only workdir')
  flags.mark_flags_as_required(['group', 'member_dir', 'member', 'out'])
  cli.run(main, config_flags=())
