"""Config-driven scaling sweeps: IsoFLOP (compute budgets × sizes) or grid (sizes × token budgets).

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
  sweep.member             -1: run every member; i: only member i (one job of a SLURM array or one
                           TPU VM per member, or one process per device subset of a host through
                           scaling/parallel.py; results.csv is merged under a lock, see merge_results)
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
W/<member_name>/ through train.loop.run (train.distill.run for distilled members), one after another,
each using the whole mesh; a member with W/<name>/result.json is skipped, a partial one resumes
from its checkpoints. After each member W/results.csv and W/curves.csv are rebuilt from every finished
member's result.json under a file lock (merge_results), so one-member jobs can share a workdir.
The config hash is the sha256 of the member's resolved config JSON (sorted keys) without the keys
in HASH_EXCLUDE, which place a run (data_dir, mesh, distributed) but do not change its result; a
member directory made by a different config is an error, not silently reused.

  python -m scaling.sweep --config=configs/sweeps/isoflop_tiny.py     # print the members only
"""

import copy
import csv
import dataclasses
import fcntl
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import threading
import time

import jax
import ml_collections
from absl import app
from jax.experimental import multihost_utils
from ml_collections import config_flags

from configs import base
from scaling import count as count_lib
from scaling import family as family_lib
from train import distill, init_from, loop, validation
from train import workdir as workdir_lib

KINDS = ('isoflop', 'grid', 'width', 'wsd')
RESULT_COLUMNS = (
  'name',
  'params',
  'non_embedding_params',
  'tokens',
  'flops',
  'loss',
  'bits_per_byte',
  'steps',
  'wall_s',
  'config_hash',
  'kind',
  'budget',
  'target_params',
  'target_tokens',
  'embedding_params',
  'n_layers',
  'd_model',
  'n_heads',
  'd_ff',
  'lr',
  'warmup_steps',
  'tokens_per_step',
  'flops_chinchilla',
  'seed',
  'parametrization',
)
DISTILL_COLUMNS = ('mode', 'teacher_params', 'teacher_loss')
WSD_COLUMNS = ('branch_tokens', 'trunk')
HASH_EXCLUDE = (
  'data.data_dir',
  'distributed',
  'mesh',
  'train.async_checkpoint',
  'train.spike_factor',
  'train.spike_window',
)
# Keys added after sweeps were run: left out of the hash at their default (old behaviour), so
# existing sweep directories stay valid.
HASH_DEFAULTS = {
  'model.parametrization': 'sp',
  'model.base_d_model': 0,
  'model.base_d_ff': 0,
  'model.base_head_dim': 0,
  'model.fp8': False,
  'train.loss_scale': 'auto',
  'train.loss_scale_init': 2.0**15,
  'train.loss_scale_period': 2000,
  'model.rope_scaling': 'none',
  'model.rope_factor': 1.0,
  'model.rope_low_freq_factor': 1.0,
  'model.rope_high_freq_factor': 4.0,
  'model.rope_original_max_len': 0,
  'model.norm_plus_one': False,
  'model.qk_norm': False,
  'model.embed_scale': False,
  'model.out_bias': False,
  'model.loss_chunk': 0,
  'model.vocab_multiple': 1,
}
MEMBER_FILE = 'sweep_member.json'
RESULT_FILE = 'result.json'
# The section's schema and defaults live with the configs (configs are data).
get_sweep_config = base.get_sweep_config
DEFAULTS = {k: v for k, v in base.get_sweep_config().items() if k != 'family'}


@dataclasses.dataclass
class Member:
  """One run of the sweep: its name, resolved training config and what the results table needs."""

  name: str
  config: ml_collections.ConfigDict
  info: dict  # the static result columns (params, tokens, flops, ...).
  mode: str = ''  # '' (no distill axis) | 'supervised' | 'distill'
  trunk: str = ''  # wsd: the trunk's directory name; '' for a standalone member.
  trunk_config: ml_collections.ConfigDict | None = None  # wsd: the trunk's training config.
  branch_step: int = 0  # wsd: the trunk step this member's cooldown starts from.
  trunk_steps: tuple = ()  # wsd: every branch point of the trunk, ascending.

  @property
  def config_hash(self) -> str:
    return config_hash(self.config)


def _short(x: float) -> str:
  """3e11 -> '3e11', 1.5e5 -> '1.5e5', 20000 -> '2e4' (3 significant digits, filesystem-safe)."""
  mant, exp = f'{float(x):.2e}'.split('e')
  return f'{mant.rstrip("0").rstrip(".")}e{int(exp)}'


def _get(section, key):
  return section[key] if key in section else DEFAULTS[key]


def _drop(d: dict, dotted: str):
  head, _, rest = dotted.partition('.')
  if head in d:
    if rest:
      _drop(d[head], rest)
    else:
      del d[head]


def config_hash(config) -> str:
  """sha256 (first 16 hex digits) of the resolved config JSON, without the HASH_EXCLUDE keys."""
  d = json.loads(config.to_json_best_effort(sort_keys=True))
  for key in HASH_EXCLUDE:
    _drop(d, key)
  for key, default in HASH_DEFAULTS.items():
    section, name = key.split('.')
    if d.get(section, {}).get(name, default) == default:
      _drop(d, key)
  return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _check_sweep(s):
  unknown = sorted(set(s.keys()) - set(DEFAULTS) - {'family', 'distill'})
  if unknown:
    raise ValueError(
      f'config.sweep has unknown keys {unknown}; known: '
      f'{sorted(set(DEFAULTS) | {"family", "distill"})}'
    )
  kind = _get(s, 'kind')
  if kind not in KINDS:
    raise ValueError(f'config.sweep.kind must be one of {KINDS}, got {kind!r}')
  if _get(s, 'count') not in family_lib.COUNTS:
    raise ValueError(f'config.sweep.count must be one of {family_lib.COUNTS}')
  if kind == 'isoflop':
    budgets, per = tuple(_get(s, 'budgets')), tuple(_get(s, 'sizes_per_budget'))
    if not budgets:
      raise ValueError('config.sweep.budgets: an isoflop sweep needs at least one compute budget')
    if per and len(per) != len(budgets):
      raise ValueError(
        f'config.sweep.sizes_per_budget has {len(per)} entries for {len(budgets)} budgets'
      )
    if not per and not tuple(_get(s, 'sizes')):
      raise ValueError('config.sweep.sizes (or sizes_per_budget) is empty')
    if any(not b > 0 for b in budgets):
      raise ValueError(f'config.sweep.budgets must be positive: {budgets}')
  elif kind in ('grid', 'wsd'):
    if not tuple(_get(s, 'tokens')) or not tuple(_get(s, 'sizes')):
      raise ValueError(f'config.sweep: a {kind} sweep needs sizes and tokens')
    if kind == 'wsd' and 'distill' in s:
      raise ValueError("config.sweep: kind 'wsd' has no distill axis (trunks train plain LM)")
  elif not tuple(_get(s, 'tokens')) or not tuple(_get(s, 'widths')):
    raise ValueError('config.sweep: a width sweep needs widths and tokens')
  for key in ('lrs', 'seeds'):
    values = tuple(_get(s, key))
    if len(set(values)) != len(values):
      raise ValueError(f'config.sweep.{key} has repeated values: {values}')
  if any(not float(lr) > 0 for lr in _get(s, 'lrs')):
    raise ValueError(f'config.sweep.lrs must be positive: {tuple(_get(s, "lrs"))}')
  if 'distill' in s:
    modes = tuple(s.distill.get('modes', ()))
    if not modes or any(m not in ('supervised', 'distill') for m in modes):
      raise ValueError(
        f'config.sweep.distill.modes must be a non-empty subset of '
        f"('supervised', 'distill'), got {modes}"
      )
    if 'distill' in modes and 'section' not in s.distill:
      raise ValueError(
        'config.sweep.distill.section (the distill config of distilled members) is missing'
      )


def _member_config(
  base,
  s,
  fam: family_lib.Member,
  steps: int,
  warmup: int,
  mode: str,
  lr: float | None,
  seed: int | None,
):
  """The resolved training config of one member: base config, family shape, steps, schedule,
  and its lr and seed when the sweep has those axes."""
  c = copy.deepcopy(base)
  with c.unlocked():
    del c['sweep']
    if 'distill' in c and mode == 'supervised':
      del c['distill']
    if mode == 'distill':
      c.distill = copy.deepcopy(s.distill.section)
  c.model.update(fam.model)
  c.train.num_steps = steps
  c.train.total_tokens = 0
  # Evaluate at the end (the loss we report) and, for loss curves (approach 1), evenly before.
  c.train.eval_every = max(1, math.ceil(steps / max(1, int(_get(s, 'evals_per_member')))))
  c.train.checkpoint_every = max(1, math.ceil(steps / max(1, _get(s, 'checkpoints_per_member'))))
  c.train.log_every = max(1, math.ceil(steps / max(1, _get(s, 'logs_per_member'))))
  c.optimizer.warmup_steps = warmup
  exp, ref = float(_get(s, 'lr_width_exponent')), int(_get(s, 'lr_ref_d_model'))
  if lr is not None:
    c.optimizer.lr = float(lr)
  if exp and ref:
    c.optimizer.lr = float(c.optimizer.lr * (ref / fam.d_model) ** exp)
  if seed is not None:
    c.seed = int(seed)
  return c


def _steps(s, tokens: float, tokens_per_step: int):
  """(steps, warmup) for a token budget: steps rounded, >= warmup and min_steps; warmup scaled."""
  raw = max(1, round(tokens / tokens_per_step))
  warmup = max(int(_get(s, 'min_warmup_steps')), round(float(_get(s, 'warmup_fraction')) * raw))
  steps = max(raw, warmup, int(_get(s, 'min_steps')))
  return steps, min(warmup, steps)


def members(config) -> list:
  """The sweep's members, in a fixed order (budgets or token budgets, then sizes, then modes)."""
  if 'sweep' not in config:
    raise ValueError('config has no sweep section')
  s = config.sweep
  _check_sweep(s)
  rule = family_lib.ShapeRule.from_config(s.family if 'family' in s else {}, config.model)
  count_key = _get(s, 'count')
  tokens_per_step = config.train.global_batch_size * config.data.seq_len
  modes = tuple(s.distill.modes) if 'distill' in s else ('',)
  lrs = tuple(float(x) for x in _get(s, 'lrs')) or (None,)
  seeds = tuple(int(x) for x in _get(s, 'seeds')) or (None,)
  kind = _get(s, 'kind')
  if kind == 'isoflop':
    budgets = [float(b) for b in _get(s, 'budgets')]
    per = tuple(_get(s, 'sizes_per_budget'))
    axes = [(b, tuple(per[i]) if per else tuple(_get(s, 'sizes'))) for i, b in enumerate(budgets)]
  elif kind in ('grid', 'wsd'):
    axes = [(float(d), tuple(_get(s, 'sizes'))) for d in _get(s, 'tokens')]
  else:
    axes = [(float(d), tuple(int(w) for w in _get(s, 'widths'))) for d in _get(s, 'tokens')]
  cache, out, names = {}, [], set()
  for outer, sizes in axes:
    for target in sizes:
      if target not in cache:
        cache[target] = (
          family_lib.at_width(rule, config.model.n_layers, target)
          if kind == 'width'
          else family_lib.design(float(target), rule)
        )
      fam = cache[target]
      target = float(target) if kind != 'width' else float(fam.matched)
      n = getattr(fam, count_key)
      if kind == 'isoflop':
        budget, want_tokens = outer, outer / (6.0 * n)
        base_name = f'C{_short(outer)}_N{_short(target)}'
      elif kind in ('grid', 'wsd'):
        budget, want_tokens = None, outer
        base_name = f'N{_short(target)}_D{_short(outer)}'
      else:
        budget, want_tokens = None, outer
        base_name = f'd{fam.d_model}_D{_short(outer)}'
      steps, warmup = _steps(s, want_tokens, tokens_per_step)
      if kind == 'wsd':  # one warmup per size (its smallest budget's), so trunks are shared.
        warmup = _steps(s, min(float(d) for d in _get(s, 'tokens')), tokens_per_step)[1]
        steps = max(steps, warmup + 1)
      tokens = steps * tokens_per_step
      for mode, lr, seed in itertools.product(modes, lrs, seeds):
        name = (
          base_name
          + (f'_{mode}' if mode else '')
          + (f'_lr{_short(lr)}' if lr is not None else '')
          + (f'_s{seed}' if seed is not None else '')
        )
        if name in names:
          raise ValueError(f'config.sweep: duplicate member {name} (repeated size or budget?)')
        names.add(name)
        mcfg = _member_config(config, s, fam, steps, warmup, mode, lr, seed)
        counts = count_lib.param_counts(mcfg)
        flops_tok = count_lib.flop_counts(mcfg)
        info = {
          'name': name,
          'params': counts['params'],
          'non_embedding_params': counts['non_embedding_params'],
          'embedding_params': counts['embedding_params'],
          'tokens': tokens,
          'flops': 6.0 * counts[count_key] * tokens,
          'steps': steps,
          'kind': kind,
          'budget': budget,
          'target_params': target,
          'target_tokens': outer if kind in ('grid', 'wsd') else want_tokens,
          'n_layers': fam.n_layers,
          'd_model': fam.d_model,
          'n_heads': fam.n_heads,
          'd_ff': fam.d_ff,
          'lr': float(mcfg.optimizer.lr),
          'warmup_steps': warmup,
          'tokens_per_step': tokens_per_step,
          'flops_chinchilla': flops_tok['flops_per_token_chinchilla'] * tokens,
          'seed': int(mcfg.seed),
          'parametrization': mcfg.model.parametrization,
        }
        if mode:
          info['mode'] = mode
        out.append(Member(name, mcfg, info, mode))
  return _with_trunks(out, s, config.optimizer.decay_fraction) if kind == 'wsd' else out


def _with_trunks(ms: list, s, decay_fraction: float) -> list:
  """wsd: give each member the 'wsd' schedule and its branch point, and each size (lr, seed) a
  trunk: the config of its largest budget, keeping every branch-point checkpoint."""
  groups = {}
  for m in ms:
    m.config.optimizer.schedule = 'wsd'
    steps, warmup = m.info['steps'], m.config.optimizer.warmup_steps
    branch = steps - max(int(round(decay_fraction * steps)), 1)  # as train.optimizer's 'wsd'.
    if branch < warmup:
      raise ValueError(
        f'config.sweep: member {m.name} would branch at step {branch}, inside its '
        f'warmup ({warmup} steps); use larger tokens or a smaller warmup'
      )
    m.branch_step = branch
    m.trunk = m.name.replace(f'_D{_short(m.info["target_tokens"])}', '_trunk', 1)
    m.info.update(branch_tokens=branch * m.info['tokens_per_step'], trunk=m.trunk)
    groups.setdefault(m.trunk, []).append(m)
  for group in groups.values():
    trunk_config = copy.deepcopy(max(group, key=lambda m: m.info['steps']).config)
    points = tuple(sorted({m.branch_step for m in group}))
    trunk_config.train.keep_checkpoints = len(points) + int(_get(s, 'checkpoints_per_member')) + 1
    for m in group:
      m.trunk_config, m.trunk_steps = trunk_config, points
  return ms


def plan_table(ms) -> str:
  """One line per member: shape, steps, tokens, FLOPs (and the rounding vs the budget)."""
  lines = [
    f'{"member":<28} {"params":>10} {"non-emb":>10} {"L":>3} {"d":>4} {"steps":>6} '
    f'{"tokens":>10} {"flops":>9} {"vs budget":>9}'
  ]
  for m in ms:
    i = m.info
    dev = f'{i["flops"] / i["budget"] - 1:+.1%}' if i.get('budget') else ''
    lines.append(
      f'{m.name:<28} {i["params"]:>10,} {i["non_embedding_params"]:>10,} '
      f'{i["n_layers"]:>3} {i["d_model"]:>4} {i["steps"]:>6} {i["tokens"]:>10,} '
      f'{i["flops"]:>9.3g} {dev:>9}'
    )
  total = sum(m.info['flops'] for m in ms)
  line = f'{len(ms)} members, {total:.3g} training FLOPs in all (6·N·D)'
  if any(m.trunk for m in ms):  # trunks shared: each size pays its longest run plus cooldowns.
    trunks = {m.trunk: m.info['flops'] * max(m.trunk_steps) / m.info['steps'] for m in ms}
    cooldowns = sum(m.info['flops'] * (1 - m.branch_step / m.info['steps']) for m in ms)
    line += f'; {sum(trunks.values()) + cooldowns:.3g} actually trained (shared WSD trunks)'
  lines.append(line)
  return '\n'.join(lines)


def _read_json(path) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None


def _fmt(v):
  if v is None:
    return ''
  if isinstance(v, float):
    return repr(v)
  return str(v)


def write_csv(path, rows, columns):
  """Writes rows (dicts) atomically with the given columns; missing values are blank."""
  tmp = f'{path}.{os.getpid()}.{threading.get_ident()}.tmp'
  with open(tmp, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(columns)
    for r in rows:
      w.writerow([_fmt(r.get(c)) for c in columns])
  os.replace(tmp, path)


def merge_results(workdir: str, ms: list) -> list:
  """Rebuilds results.csv and curves.csv from every finished member's result.json, holding an
  exclusive lock (fcntl, any shared POSIX filesystem), so members that finish at the same time in
  separate jobs neither lose nor duplicate rows. Returns the rows, in member order."""
  columns = (
    RESULT_COLUMNS
    + (DISTILL_COLUMNS if any(m.mode for m in ms) else ())
    + (WSD_COLUMNS if any(m.trunk for m in ms) else ())
  )
  with open(os.path.join(workdir, 'results.csv.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    done = []
    for m in ms:
      r = _read_json(os.path.join(workdir, m.name, RESULT_FILE))
      if r and r.get('status', 'ok') == 'ok' and r.get('config_hash') == m.config_hash:
        done.append((m, r))
    rows = [{k: v for k, v in r.items() if k != 'status'} for _, r in done]
    write_csv(os.path.join(workdir, 'results.csv'), rows, columns)
    write_csv(
      os.path.join(workdir, 'curves.csv'),
      [c for m, _ in done for c in curve_rows(m, os.path.join(workdir, m.name))],
      CURVE_COLUMNS,
    )
  return rows


def _finished(member_dir, h, name):
  """The stored result of a finished member, None if unfinished; error if made by another config."""
  meta = _read_json(os.path.join(member_dir, MEMBER_FILE))
  if meta is not None and meta.get('config_hash') != h:
    raise ValueError(
      f'sweep member {name}: {member_dir} was made by a different config (hash '
      f'{meta.get("config_hash")}, now {h}); it would not be resumed correctly. Use a new '
      f'--workdir, or remove {member_dir} to retrain this member.'
    )
  result = _read_json(os.path.join(member_dir, RESULT_FILE))
  if result is not None and result.get('config_hash') != h:
    raise ValueError(
      f'sweep member {name}: {RESULT_FILE} in {member_dir} has hash '
      f'{result.get("config_hash")}, config now {h}'
    )
  return result


def _grow_trunk(workdir: str, m: Member) -> int | None:
  """Train m's trunk through each branch point up to m's, stopping (and checkpointing) at each;
  returns the step a SIGTERM stopped it at, else None."""
  trunk_dir = os.path.join(workdir, m.trunk)
  h = config_hash(m.trunk_config)
  _finished(trunk_dir, h, m.trunk)  # a trunk made by another config is an error.
  os.makedirs(trunk_dir, exist_ok=True)
  if jax.process_index() == 0:
    workdir_lib.write_json(
      os.path.join(trunk_dir, MEMBER_FILE), {'name': m.trunk, 'config_hash': h}
    )
  for point in m.trunk_steps:
    if point > m.branch_step:
      break
    if (workdir_lib.latest_checkpoint_step(trunk_dir) or 0) >= point:
      continue
    logging.info('trunk %s: training to step %d (branch point)', m.trunk, point)
    metrics = loop.run(
      m.trunk_config,
      trunk_dir,
      stop_after=point,
      init_params_fn=init_from.params_fn(m.trunk_config),
    )
    if metrics.get('preempted_at_step') is not None:
      return metrics['preempted_at_step']
  return None


def _branch(workdir: str, m: Member, member_dir: str):
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


def _train(member: Member, member_dir: str, derived: validation.Derived) -> dict:
  """Train one member; `derived` is validation.derive's result for its config (run() has it)."""
  if 'distill' in member.config:
    return distill.run(member.config, member_dir, derived=derived)
  return loop.run(
    member.config,
    member_dir,
    init_params_fn=init_from.params_fn(member.config),
    derived=derived,
  )


CURVE_COLUMNS = (
  'name',
  'params',
  'non_embedding_params',
  'tokens',
  'flops',
  'loss',
  'lr',
  'seed',
  'parametrization',
  'final',
)


def curve_rows(member: Member, member_dir: str) -> list:
  """The member's eval losses along training (metrics.jsonl), FLOPs so far by the sweep's count."""
  rows, path = [], os.path.join(member_dir, 'metrics.jsonl')
  if not os.path.exists(path):
    return rows
  i = member.info
  with open(path) as f:
    for line in f:
      m = json.loads(line)
      if m.get('eval/loss') is None:
        continue
      tokens = m['train/tokens_seen']
      rows.append(
        {
          'name': member.name,
          'params': i['params'],
          'non_embedding_params': i['non_embedding_params'],
          'tokens': tokens,
          'flops': i['flops'] * tokens / i['tokens'],
          'loss': m['eval/loss'],
          'lr': i['lr'],
          'seed': i['seed'],
          'parametrization': i['parametrization'],
          'final': int(tokens == i['tokens']),
        }
      )
  return rows


def _result_row(member: Member, metrics: dict, wall_s: float, h: str) -> dict:
  row = dict(member.info)
  row.update(
    loss=float(metrics['eval/loss']),
    bits_per_byte=float(metrics.get('eval/bits_per_byte', math.nan)),
    wall_s=round(wall_s, 2),
    config_hash=h,
  )
  if member.mode:
    row['teacher_params'] = metrics.get('teacher_params')
    row['teacher_loss'] = metrics.get('eval/teacher_loss')
  return row


def _hms(s):
  s = int(round(s))
  return (
    f'{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s' if s >= 3600 else f'{s // 60}m{s % 60:02d}s'
  )


def run(config, workdir: str) -> dict:
  """Runs every member (skipping finished ones, resuming partial ones); returns a summary dict."""
  ms = members(config)
  derived = {}
  for m in ms:  # fail fast: every member (distill section included) must be valid here.
    try:
      derived[m.name] = validation.derive(m.config, jax.device_count(), jax.process_count())
    except ValueError as e:
      raise ValueError(f'sweep member {m.name}: {e}') from e
  lead = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  results_path = os.path.join(workdir, 'results.csv')
  only = int(_get(config.sweep, 'member'))
  if not -1 <= only < len(ms):
    raise ValueError(
      f'config.sweep.member={only}: the sweep has members 0..{len(ms) - 1} (-1: all)'
    )
  todo = list(enumerate(ms)) if only < 0 else [(only, ms[only])]
  logging.info('Sweep of %d members in %s:\n%s', len(ms), workdir, plan_table(ms))
  if lead:
    with open(os.path.join(workdir, 'sweep_plan.txt'), 'w') as f:
      f.write(plan_table(ms) + '\n')
  rows, ran, skipped, failed = {}, [], [], []
  t_start = time.time()
  for i, m in todo:
    member_dir = os.path.join(workdir, m.name)
    h = m.config_hash
    tag = f'[{i + 1}/{len(ms)}] {m.name}'
    result = _finished(member_dir, h, m.name)
    if result is not None:
      if result.get('status', 'ok') == 'ok':
        rows[m.name] = result
        skipped.append(m.name)
        logging.info('%s: finished earlier (loss %.4f), skipped', tag, result['loss'])
      else:
        failed.append(m.name)
        logging.warning(
          '%s: %s earlier (%s), skipped; remove %s to retry',
          tag,
          result['status'],
          result.get('error', ''),
          member_dir,
        )
      continue
    latest = workdir_lib.latest_checkpoint_step(member_dir)
    if m.trunk and latest is None:  # wsd: branch this member off its size's trunk.
      stopped = _grow_trunk(workdir, m)
      if stopped is not None:
        logging.warning(
          '%s: trunk %s stopped at step %d; rerun the sweep to resume', tag, m.trunk, stopped
        )
        break
      os.makedirs(member_dir, exist_ok=True)
      _branch(workdir, m, member_dir)
      latest = m.branch_step
    os.makedirs(member_dir, exist_ok=True)
    meta = _read_json(os.path.join(member_dir, MEMBER_FILE)) or {'wall_s': 0.0}
    if lead:
      workdir_lib.write_json(
        os.path.join(member_dir, MEMBER_FILE),
        {'name': m.name, 'config_hash': h, 'wall_s': meta['wall_s'], 'info': m.info},
      )
    logging.info(
      '%s: %s (%d steps, %s tokens, %.3g FLOPs, %d params)',
      tag,
      f'resuming from step {latest}' if latest else 'starting',
      m.info['steps'],
      f'{m.info["tokens"]:,}',
      m.info['flops'],
      m.info['params'],
    )
    tic = time.time()
    status, metrics, error = 'ok', None, ''
    try:
      metrics = _train(m, member_dir, derived[m.name])
    except FloatingPointError as e:  # a diverged member must not end the sweep.
      status, error = 'diverged', str(e)
    finally:
      wall = meta['wall_s'] + time.time() - tic
      if lead:
        workdir_lib.write_json(
          os.path.join(member_dir, MEMBER_FILE),
          {'name': m.name, 'config_hash': h, 'wall_s': wall, 'info': m.info},
        )
    if status != 'ok':
      failed.append(m.name)
      logging.warning('%s: %s: %s', tag, status, error)
      if lead:
        workdir_lib.write_json(
          os.path.join(member_dir, RESULT_FILE),
          {'name': m.name, 'config_hash': h, 'status': status, 'error': error},
        )
      continue
    if metrics.get('preempted_at_step') is not None:  # SIGTERM / SIGINT: the sweep stops here.
      logging.warning(
        '%s: stopped at step %d; rerun the sweep to resume', tag, metrics['preempted_at_step']
      )
      break
    row = _result_row(m, metrics, wall, h)
    rows[m.name] = row
    ran.append(m.name)
    if lead:
      workdir_lib.write_json(os.path.join(member_dir, RESULT_FILE), {**row, 'status': 'ok'})
      merge_results(workdir, ms)
    done = len(rows) + len(failed)
    elapsed = time.time() - t_start
    logging.info(
      '%s: loss %.4f, %.4f bits/byte, %d steps in %.1fs | %d/%d done, sweep %s',
      tag,
      row['loss'],
      row['bits_per_byte'],
      m.info['steps'],
      time.time() - tic,
      done,
      len(ms),
      _hms(elapsed),
    )
  finished = len(merge_results(workdir, ms)) if lead else len(rows)
  return {
    'results_csv': results_path,
    'members': len(ms),
    'finished': finished,
    'ran': ran,
    'skipped': skipped,
    'failed': failed,
    'wall_s': round(time.time() - t_start, 1),
  }


def main(argv):
  del argv
  print(plan_table(members(_CONFIG.value)))


if __name__ == '__main__':
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Sweep config file (path[:arg]).')
  app.run(main)
