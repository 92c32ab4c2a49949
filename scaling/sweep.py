"""Runs config-driven scaling sweeps: IsoFLOP (compute budgets × sizes) or grid (sizes × token budgets).

A sweep config is a normal training config plus a `sweep` section (see configs/sweeps/*.py):

  sweep.kind               'isoflop' | 'grid' | 'width' (widths x tokens at config.model.n_layers)
                           | 'wsd' (sizes x tokens like grid, but each size trains one constant-lr
                           trunk and every token budget is a short cooldown branched from it)
  sweep.budgets            isoflop: training FLOPs per member, C = 6·N·D
  sweep.sizes              target parameter counts, used for every budget / token budget
  sweep.sizes_per_budget   isoflop, optional: one tuple of sizes per budget (overrides sizes)
  sweep.tokens             grid, width: training tokens per member
  sweep.widths             width: d_model values (the family's shape rule at each)
  sweep.evals_per_member   evaluations along each member's training (1: at the end); all of them
                           land in W/curves.csv, the input of approach 1 (scaling.fit --law=envelope)
  sweep.member             -1: run every member; i: only member i, or with sweep.vmap the group
                           holding i (one job of a SLURM array or one TPU VM per member or group,
                           or one process per device subset of a host through scaling/parallel.py;
                           results.csv is merged under a lock, see merge_results)
  sweep.vmap               K > 1: members that differ only in seed, peak lr and weight decay (an
                           lr x seed scan at one size) train K at a time as one vmapped program
                           (train/group.py, its checkpoints in W/groups/<hash>/); each member
                           still gets its own directory, metrics.jsonl, result.json and rows
  sweep.lrs, sweep.seeds   optional axes: one member per peak lr / per seed (columns lr, seed);
                           scaling.fit then takes the best lr per (N, D) and the mean over seeds
  sweep.count              which N sizes are matched to and C = 6·N·D uses: 'params' (total, the
                           default; Chinchilla's N) or 'non_embedding_params' (Kaplan's N)
  sweep.family             shape rule (scaling.family.ShapeRule fields; vocab_size, max_len and
                           tie_embeddings default to the base config's model section)
  sweep.warmup_fraction    warmup = max(min_warmup_steps, round(fraction · steps)), capped at steps
  sweep.min_warmup_steps, sweep.min_steps
  sweep.checkpoints_per_member, sweep.logs_per_member
  sweep.lr_width_exponent  lr = optimizer.lr · (lr_ref_d_model / d_model)^exponent (0: same lr)
  sweep.lr_ref_d_model
  sweep.distill            optional axis: modes ('supervised', 'distill') and `section`, the
                           `distill` config section given to the distilled members

Members are generated deterministically from the config. For an IsoFLOP member of target size N
(matched by scaling.family) at budget C: D = C / (6N) with N the exact `sweep.count` of the shape,
steps = round(D / tokens_per_step) (at least the warmup and min_steps), warmup scaled with steps,
and the cosine/linear schedule spans exactly those steps; the member's real tokens are
steps · tokens_per_step and its `flops` column is 6·N·tokens (so rounding shows, and is logged).

A 'wsd' member (Hägele et al. 2024) has the warmup-stable-decay schedule of its own step count S
(optimizer.decay_fraction of S in the final decay) and the warmup of its size's smallest budget,
so below its branch point B = S - round(decay_fraction·S) its learning rate is the same constant
as every other budget of that size. One trunk per size (W/<N..>_trunk/, the largest budget's run)
trains to each B in turn and stops there with a checkpoint; the branch copies that checkpoint
into its own directory and trains the cooldown B..S, which makes it step for step the standalone
WSD run of S steps (batches depend only on (seed, step)). Each branch is a result row (its
`branch_tokens` = B·tokens_per_step); the sizes' trunks are shared, so the grid costs about one
run per size plus the cooldowns. Branches of one trunk belong in one job (the trunk's workdir
lock refuses a second job growing it at the same time).

`python main.py --config=configs/sweeps/isoflop_tiny.py --workdir=W` runs each member in
W/<member_name>/ through train.loop.run (train.distillation.trainer.run for distilled members), one
after another, each using the whole mesh; a member with W/<name>/result.json is skipped, a partial
one resumes from its checkpoints. After each member W/results.csv and W/curves.csv are rebuilt from
every finished member's result.json under a file lock (merge_results), so one-member jobs can share
a workdir. The config hash (scaling/config_hash.py) covers the keys of the member's config that
differ from the schema defaults, without those that place a run (data_dir, mesh, distributed); a
member directory made by a different config is an error, not silently reused. Directories written
under the previous hash rule are recognised by it and resume. Planning is scaling/plan.py's,
results.csv and curves.csv scaling/results.py's; this module runs the members.

  python -m scaling.sweep --config=configs/sweeps/isoflop_tiny.py     # print the members only
"""

import dataclasses
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Sequence

import jax
import ml_collections
from jax.experimental import multihost_utils
from ml_collections import config_flags

from scaling import config_hash as hash_lib
from scaling import results
from scaling.plan import Member, get, get_sweep_config, members, plan_table
from train import cli, context, group, init_from, loop, validation
from train import workdir as workdir_lib
from train.distillation import trainer as distill
from train.evaluators import Evaluator

__all__ = ('Member', 'finished', 'get_sweep_config', 'members', 'plan_table', 'run')
MEMBER_FILE = 'sweep_member.json'


class Unverifiable(ValueError):
  """A member whose checkpoints cannot be tied to its config: skipped, the others run."""


def finished(member_dir: str, config: ml_collections.ConfigDict, name: str) -> dict | None:
  """The stored result of a finished member, None if unfinished; error if made by another config
  (a hash under the previous rule is recognised too: scaling/config_hash.py)."""
  h = hash_lib.config_hash(config)
  meta_path = os.path.join(member_dir, MEMBER_FILE)
  meta = results.read_json(meta_path)
  if meta is None and os.path.exists(meta_path) and workdir_lib.latest_checkpoint_step(member_dir):
    # Unreadable (cut short) beside checkpoints: which config made them can't be checked.
    raise Unverifiable(
      f'sweep member {name}: {meta_path} does not parse and {member_dir} holds checkpoints '
      f'whose config cannot be checked; skipped (remove {member_dir} to retrain it)'
    )
  if meta is not None and not hash_lib.recognises(config, meta.get('config_hash')):
    if old := hash_lib.written_under(config, meta.get('config_hash')):
      key, value, why = old
      raise ValueError(
        f'sweep member {name}: {member_dir} was {why}, the default it was written under: add '
        f'--config.{key}={value} to resume or extend that study, or use a new --workdir'
      )
    raise ValueError(
      f'sweep member {name}: {member_dir} was made by a different config (hash '
      f'{meta.get("config_hash")}, now {h}); it would not be resumed correctly. Use a new '
      f'--workdir, or remove {member_dir} to retrain this member.'
    )
  result = results.read_json(os.path.join(member_dir, results.RESULT_FILE))
  if result is not None and not hash_lib.recognises(config, result.get('config_hash')):
    raise ValueError(
      f'sweep member {name}: {results.RESULT_FILE} in {member_dir} has hash '
      f'{result.get("config_hash")}, config now {h}'
    )
  return result


def _trunk_dir(workdir: str, m: Member) -> str:
  """m's trunk directory, made and labelled (a trunk made by another config is an error)."""
  trunk_dir = os.path.join(workdir, m.trunk)
  finished(trunk_dir, m.trunk_config, m.trunk)
  os.makedirs(trunk_dir, exist_ok=True)
  if jax.process_index() == 0:
    workdir_lib.write_json(
      os.path.join(trunk_dir, MEMBER_FILE),
      {'name': m.trunk, 'config_hash': hash_lib.config_hash(m.trunk_config)},
    )
  return trunk_dir


def _points_to_grow(m: Member, trunk_dir: str) -> list[int]:
  """The branch points up to m's that the trunk (or trunk group) in trunk_dir has not reached:
  it trains to each in turn, stopping with a checkpoint there for that point's branches."""
  reached = workdir_lib.latest_checkpoint_step(trunk_dir) or 0
  return [p for p in m.trunk_steps if reached < p <= m.branch_step]


def _branch_group(sw: '_Sweep', pending: list) -> bool:
  """WSD branches of one budget in a group: their trunks grow as one group (W/groups/<hash of the
  trunks>) through each branch point up to theirs, and each member without a checkpoint starts
  from its trunk's state at its branch point; False when a signal stopped the trunks."""
  todo = [(m, d) for m, d, _ in pending if workdir_lib.latest_checkpoint_step(d) is None]
  if not todo:
    return True
  ms = [m for m, _ in todo]
  trunk_dirs = [_trunk_dir(sw.workdir, m) for m in ms]
  names = '\n'.join(m.trunk for m in ms)
  group_dir = os.path.join(sw.workdir, 'groups', hashlib.sha256(names.encode()).hexdigest()[:12])
  points = _points_to_grow(ms[0], group_dir)
  trunks = [validation.derive(m.trunk_config) for m in ms]  # (the group's members, checked once)
  for point in points:
    logging.info(
      '%d trunks as one group in %s: training to step %d (branch point)', len(ms), group_dir, point
    )
    finals = group.run(trunks, trunk_dirs, group_dir, stop_after=point)
    if 'preempted_at_step' in finals[0]:
      logging.warning(
        'trunk group %s stopped at step %d; rerun the sweep to resume',
        group_dir,
        finals[0]['preempted_at_step'],
      )
      return False
  for _, d in todo:
    os.makedirs(d, exist_ok=True)
  group.save_members(
    group_dir,
    trunks,
    ms[0].branch_step,
    [d for _, d in todo],
    [context.stream_meta(sw.derived[m.name].config) for m in ms],
  )
  return True


def _grow_trunk(workdir: str, m: Member, evaluators: Sequence[Evaluator] = ()) -> int | None:
  """Train m's trunk through each branch point up to m's, stopping (and checkpointing) at each;
  returns the step a SIGTERM stopped it at, else None."""
  trunk_dir = _trunk_dir(workdir, m)
  points = _points_to_grow(m, trunk_dir)
  trunk = validation.derive(m.trunk_config) if points else None
  for point in points:
    logging.info('trunk %s: training to step %d (branch point)', m.trunk, point)
    metrics = loop.run(
      trunk,
      trunk_dir,
      stop_after=point,
      init_params_fn=init_from.params_fn(trunk.config),
      evaluators=evaluators,
    )
    if metrics.get('preempted_at_step') is not None:
      return metrics['preempted_at_step']
  return None


def _branch(workdir: str, m: Member, member_dir: str) -> None:
  """Copy the trunk's checkpoint at m's branch point into m's directory (atomically; process 0
  on the shared filesystem, the others wait)."""
  src = os.path.join(workdir, m.trunk, 'checkpoints', str(m.branch_step))
  if not os.path.isdir(src):
    raise ValueError(
      f'sweep member {m.name}: the trunk has no checkpoint at its branch point '
      f'{m.branch_step} ({src}); remove {os.path.dirname(os.path.dirname(src))} '
      'to regrow it'
    )
  dest = os.path.join(member_dir, 'checkpoints', str(m.branch_step))
  if jax.process_index() == 0:
    tmp = os.path.join(member_dir, f'.branch-{m.branch_step}.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    os.replace(tmp, dest)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'lmscale branch {m.name}')


def _train(
  member: Member, member_dir: str, derived: validation.Derived, evaluators: Sequence[Evaluator]
) -> dict:
  """Train `member` in member_dir; `derived` is validation.derive's result for its config (run()
  has it); `evaluators` run after its eval loss (e.g. lm-eval's, built once by main.py)."""
  if derived.distill is not None:
    return distill.run(derived, member_dir, evaluators=evaluators)
  return loop.run(
    derived,
    member_dir,
    init_params_fn=init_from.params_fn(derived.config),
    evaluators=evaluators,
  )


def _hms(s: float) -> str:
  s = int(round(s))
  return (
    f'{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s' if s >= 3600 else f'{s // 60}m{s % 60:02d}s'
  )


@dataclasses.dataclass
class _Sweep:
  """One run() over a workdir: its members, their derived configs and what happened so far."""

  workdir: str
  ms: list
  derived: dict
  evaluators: Sequence[Evaluator] = ()
  lead: bool = dataclasses.field(default_factory=lambda: jax.process_index() == 0)
  rows: dict = dataclasses.field(default_factory=dict)
  ran: list = dataclasses.field(default_factory=list)
  skipped: list = dataclasses.field(default_factory=list)
  failed: list = dataclasses.field(default_factory=list)
  t_start: float = dataclasses.field(default_factory=lambda: time.time())
  job: dict = dataclasses.field(default_factory=dict)  # name -> FLOPs left, members still to train
  flops_done: float = 0.0  # FLOPs of the members trained in this process (the ETA's s/FLOP)

  def write(self, member_dir: str, name: str, obj: dict) -> None:
    if self.lead:
      workdir_lib.write_json(os.path.join(member_dir, name), obj)


def _skip_finished(sw: _Sweep, m: Member, member_dir: str, tag: str) -> bool:
  """Whether m finished (or failed, or cannot be verified) in an earlier run; logs, records it."""
  try:
    result = finished(member_dir, m.config, m.name)
  except Unverifiable as e:
    sw.failed.append(m.name)
    sw.job.pop(m.name, None)
    logging.warning('%s: %s', tag, e)
    return True
  if result is None:
    return False
  sw.job.pop(m.name, None)
  if result.get('status', 'ok') == 'ok':
    sw.rows[m.name] = result
    sw.skipped.append(m.name)
    logging.info('%s: finished earlier (loss %.4f), skipped', tag, result['loss'])
  else:
    sw.failed.append(m.name)
    logging.warning(
      '%s: %s earlier (%s), skipped; remove %s to retry',
      tag,
      result['status'],
      result.get('error', ''),
      member_dir,
    )
  return True


def _start(sw: _Sweep, m: Member, member_dir: str, tag: str) -> bool:
  """Whether m can train now: a wsd member branches off its trunk first (a SIGTERM may stop it)."""
  latest = workdir_lib.latest_checkpoint_step(member_dir)
  if m.trunk and latest is None:  # wsd: branch this member off its size's trunk.
    stopped = _grow_trunk(sw.workdir, m, sw.evaluators)
    if stopped is not None:
      logging.warning(
        '%s: trunk %s stopped at step %d; rerun the sweep to resume', tag, m.trunk, stopped
      )
      return False
    os.makedirs(member_dir, exist_ok=True)
    _branch(sw.workdir, m, member_dir)
    latest = m.branch_step
  os.makedirs(member_dir, exist_ok=True)
  logging.info(
    '%s: %s (%d steps, %s tokens, %.3g FLOPs, %d params)',
    tag,
    f'resuming from step {latest}' if latest else 'starting',
    m.info['steps'],
    f'{m.info["tokens"]:,}',
    m.info['flops'],
    m.info['params'],
  )
  return True


def _run_member(sw: _Sweep, m: Member, member_dir: str, tag: str) -> bool:
  """Trains m and records its result; False when a SIGTERM stopped it (the sweep stops too)."""
  meta = results.read_json(os.path.join(member_dir, MEMBER_FILE)) or {'wall_s': 0.0}
  sw.write(member_dir, MEMBER_FILE, _member_meta(m, meta['wall_s']))
  tic = time.time()
  metrics = None
  try:
    metrics = _train(m, member_dir, sw.derived[m.name], sw.evaluators)
  except FloatingPointError as e:  # a diverged member must not end the sweep.
    metrics = {'diverged': str(e)}
  finally:
    wall = meta['wall_s'] + time.time() - tic
    sw.write(member_dir, MEMBER_FILE, _member_meta(m, wall))
  going = _record(sw, m, member_dir, tag, metrics, wall, time.time() - tic)
  if going:
    _progress(sw)
  return going


def _member_meta(m: Member, wall_s: float, **extra: object) -> dict:
  return {'name': m.name, 'config_hash': m.config_hash, 'wall_s': wall_s, 'info': m.info, **extra}


def _record(
  sw: _Sweep, m: Member, member_dir: str, tag: str, metrics: dict, wall: float, took: float
) -> bool:
  """Writes m's result.json (ok or diverged) and merges results.csv; False when a SIGTERM stopped
  m (the sweep stops too)."""
  h = m.config_hash
  if metrics.get('preempted_at_step') is None:  # trained to its end (or diverged): for the ETA.
    sw.flops_done += sw.job.pop(m.name, 0.0)
  if 'diverged' in metrics:
    sw.failed.append(m.name)
    logging.warning('%s: diverged: %s', tag, metrics['diverged'])
    result = {'name': m.name, 'config_hash': h, 'status': 'diverged', 'error': metrics['diverged']}
    sw.write(member_dir, results.RESULT_FILE, result)
    return True
  if metrics.get('preempted_at_step') is not None:  # SIGTERM / SIGINT: the sweep stops here.
    logging.warning(
      '%s: stopped at step %d; rerun the sweep to resume', tag, metrics['preempted_at_step']
    )
    return False
  row = results.result_row(m, metrics, wall, h)
  sw.rows[m.name] = row
  sw.ran.append(m.name)
  sw.write(member_dir, results.RESULT_FILE, {**row, 'status': 'ok'})
  if sw.lead:
    results.merge_results(sw.workdir, sw.ms)
  logging.info(
    '%s: loss %.4f, %.4f bits/byte, %d steps in %.1fs',
    tag,
    row['loss'],
    row['bits_per_byte'],
    m.info['steps'],
    took,
  )
  return True


def _flops_left(m: Member, member_dir: str) -> float:
  """m's training FLOPs after its latest checkpoint (all of them when it has none)."""
  steps = max(int(m.info['steps']), 1)
  done = min(workdir_lib.latest_checkpoint_step(member_dir) or 0, steps)
  return float(m.info['flops']) * (1 - done / steps)


def _progress(sw: _Sweep) -> None:
  """Logs the sweep's progress after a member or group: members done of all, the time since this
  process started, and an ETA of this job's members still to train: their FLOPs left at the
  seconds per FLOP of the members trained so far in this process (wall time, compiles included)."""
  elapsed = time.time() - sw.t_start
  left = sum(sw.job.values())
  if not sw.job:
    eta = 'nothing left to train in this job'
  elif sw.flops_done > 0:
    rate = elapsed / sw.flops_done
    eta = f'ETA {_hms(left * rate)} for {len(sw.job)} more ({left:.3g} FLOPs at {rate:.3g} s/FLOP)'
  else:
    eta = 'no ETA yet'
  failed = f', {len(sw.failed)} failed' if sw.failed else ''
  logging.info(
    'Sweep progress: %d/%d members done%s, %s elapsed; %s',
    len(sw.rows) + len(sw.failed),
    len(sw.ms),
    failed,
    _hms(elapsed),
    eta,
  )


def units(todo: list, k: int) -> list[list]:
  """The (index, member) pairs in plan order, as units that train together: members that may
  share a program (train/group.py's group_key: WSD branches of one budget) in groups of up to k,
  the rest alone."""
  units, filling = [], {}
  for i, m in todo:
    key = None
    if k > 1 and group.why_not(m.config) is None:
      key = group.group_key(m.config)
    if key is None:
      units.append([(i, m)])
      continue
    if key not in filling or len(filling[key]) == k:
      filling[key] = []
      units.append(filling[key])
    filling[key].append((i, m))
  return units


def _run_group(sw: _Sweep, unit: list) -> bool:
  """Trains a unit's unfinished members as one group (one left: alone); False when stopped."""
  pending = []
  for i, m in unit:
    member_dir = os.path.join(sw.workdir, m.name)
    tag = f'[{i + 1}/{len(sw.ms)}] {m.name}'
    if not _skip_finished(sw, m, member_dir, tag):
      pending.append((m, member_dir, tag))
  if len(pending) < 2:
    return all(_start(sw, *p) and _run_member(sw, *p) for p in pending)
  if pending[0][0].trunk and not _branch_group(sw, pending):
    return False
  names = '\n'.join(m.name for m, _, _ in pending)
  group_dir = os.path.join(sw.workdir, 'groups', hashlib.sha256(names.encode()).hexdigest()[:12])
  metas = []
  for i, (m, member_dir, tag) in enumerate(pending):
    _start(sw, m, member_dir, tag)
    meta = results.read_json(os.path.join(member_dir, MEMBER_FILE)) or {'wall_s': 0.0}
    metas.append(meta['wall_s'])
    where = {'group': group_dir, 'group_member': i}  # (train.group extracts member i)
    sw.write(member_dir, MEMBER_FILE, _member_meta(m, meta['wall_s'], **where))
  logging.info('%d members train as one program in %s', len(pending), group_dir)
  tic = time.time()
  finals = group.run(
    [sw.derived[m.name] for m, _, _ in pending], [d for _, d, _ in pending], group_dir
  )
  took = time.time() - tic
  share = took / len(pending)  # each member's wall_s: its share of the group's time.
  going = True
  for i, ((m, member_dir, tag), final, before) in enumerate(zip(pending, finals, metas)):
    where = {'group': group_dir, 'group_member': i}
    sw.write(member_dir, MEMBER_FILE, _member_meta(m, before + share, **where))
    going = _record(sw, m, member_dir, tag, final, before + share, took) and going
  if going:
    _progress(sw)
  return going


def _prepare(
  config: ml_collections.ConfigDict, workdir: str, evaluators: Sequence[Evaluator]
) -> tuple[_Sweep, list]:
  """The members (each validated here, fail fast), the plan written, and the units (lists of
  (index, member) pairs that train together) this job runs: all, or config.sweep.member's."""
  ms = members(config)
  derived = {}
  for m in ms:  # every member (distill section included) must be valid before any trains.
    try:
      derived[m.name] = validation.derive(m.config)
    except ValueError as e:
      raise ValueError(f'sweep member {m.name}: {e}') from e
  sw = _Sweep(workdir, ms, derived, evaluators)
  os.makedirs(workdir, exist_ok=True)
  only = int(get(config.sweep, 'member'))
  if not -1 <= only < len(ms):
    raise ValueError(
      f'config.sweep.member={only}: the sweep has members 0..{len(ms) - 1} (-1: all)'
    )
  logging.info('Sweep of %d members in %s:\n%s', len(ms), workdir, plan_table(ms))
  if sw.lead:
    with open(os.path.join(workdir, 'sweep_plan.txt'), 'w') as f:
      f.write(plan_table(ms) + '\n')
  k = 1 if evaluators else int(get(config.sweep, 'vmap'))
  todo = units(list(enumerate(ms)), k)
  todo = todo if only < 0 else [u for u in todo if only in dict(u)]
  sw.job = {m.name: _flops_left(m, os.path.join(workdir, m.name)) for u in todo for _, m in u}
  return sw, todo


def run(
  config: ml_collections.ConfigDict, workdir: str, evaluators: Sequence[Evaluator] = ()
) -> dict:
  """Runs every member (skipping finished ones, resuming partial ones); returns a summary dict.
  `evaluators` run in every member after its eval loss."""
  sw, todo = _prepare(config, workdir, evaluators)
  for unit in todo:
    if len(unit) > 1:
      if not _run_group(sw, unit):
        break
      continue
    i, m = unit[0]
    member_dir = os.path.join(workdir, m.name)
    tag = f'[{i + 1}/{len(sw.ms)}] {m.name}'
    if _skip_finished(sw, m, member_dir, tag):
      continue
    if not _start(sw, m, member_dir, tag) or not _run_member(sw, m, member_dir, tag):
      break
  finished_rows = len(results.merge_results(workdir, sw.ms)) if sw.lead else len(sw.rows)
  return {
    'results_csv': os.path.join(workdir, 'results.csv'),
    'members': len(sw.ms),
    'finished': finished_rows,
    'ran': sw.ran,
    'skipped': sw.skipped,
    'failed': sw.failed,
    'wall_s': round(time.time() - sw.t_start, 1),
  }


def main(argv: list[str]) -> None:
  del argv
  print(plan_table(members(_CONFIG.value)))


if __name__ == '__main__':
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Sweep config file (path[:arg]).')
  cli.run(main)
