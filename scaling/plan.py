"""A sweep's plan: its members (name, resolved training config, result-table columns) from the
config's `sweep` section, one builder per kind in KIND_TABLE, and the plan table.

The keys of the section and how members are made are described in scaling/sweep.py's docstring.
"""

import copy
import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from configs import base
from scaling import budget
from scaling import family as family_lib
from scaling.config_hash import config_hash

# The section's schema and defaults live with the configs (configs are data).
get_sweep_config = base.get_sweep_config
DEFAULTS = {k: v for k, v in base.get_sweep_config().items() if k != 'family'}
Section = ml_collections.ConfigDict


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


def short(x: float) -> str:
  """3e11 -> '3e11', 1.5e5 -> '1.5e5', 20000 -> '2e4' (3 significant digits, filesystem-safe)."""
  mant, exp = f'{float(x):.2e}'.split('e')
  return f'{mant.rstrip("0").rstrip(".")}e{int(exp)}'


def get(section: Section, key: str) -> Any:
  """A sweep key, or its default."""
  return section[key] if key in section else DEFAULTS[key]


# --- the kinds ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Point:
  """Where a member sits on its kind's axes: FLOP budget, tokens wanted, name before the axes."""

  budget: float | None
  tokens: float
  name: str


@dataclasses.dataclass(frozen=True)
class Kind:
  """How one sweep kind checks its section, lays out (outer value, sizes) pairs, shapes a size
  and places a member; `trunks` (wsd) shares each size's warmup and trains shared trunks."""

  check: Callable[[Section], None]
  axes: Callable[[Section], list[tuple[float, tuple]]]
  shape: Callable[[family_lib.ShapeRule, ml_collections.ConfigDict, Any], family_lib.Member]
  point: Callable[[float, float, family_lib.Member, float], Point]
  trunks: bool = False


def _check_isoflop(s: Section) -> None:
  budgets, per = tuple(get(s, 'budgets')), tuple(get(s, 'sizes_per_budget'))
  if not budgets:
    raise ValueError('config.sweep.budgets: an isoflop sweep needs at least one compute budget')
  if per and len(per) != len(budgets):
    raise ValueError(
      f'config.sweep.sizes_per_budget has {len(per)} entries for {len(budgets)} budgets'
    )
  if not per and not tuple(get(s, 'sizes')):
    raise ValueError('config.sweep.sizes (or sizes_per_budget) is empty')
  if any(not b > 0 for b in budgets):
    raise ValueError(f'config.sweep.budgets must be positive: {budgets}')


def _check_grid(s: Section, kind: str = 'grid') -> None:
  if not tuple(get(s, 'tokens')) or not tuple(get(s, 'sizes')):
    raise ValueError(f'config.sweep: a {kind} sweep needs sizes and tokens')


def _check_wsd(s: Section) -> None:
  _check_grid(s, 'wsd')
  if 'distill' in s:
    raise ValueError("config.sweep: kind 'wsd' has no distill axis (trunks train plain LM)")


def _check_width(s: Section) -> None:
  if not tuple(get(s, 'tokens')) or not tuple(get(s, 'widths')):
    raise ValueError('config.sweep: a width sweep needs widths and tokens')


def _isoflop_axes(s: Section) -> list[tuple[float, tuple]]:
  per = tuple(get(s, 'sizes_per_budget'))
  sizes = lambda i: tuple(per[i]) if per else tuple(get(s, 'sizes'))
  return [(float(b), sizes(i)) for i, b in enumerate(get(s, 'budgets'))]


def _design(rule: family_lib.ShapeRule, _: ml_collections.ConfigDict, target: Any):
  return family_lib.design(float(target), rule)


def _at_width(rule: family_lib.ShapeRule, config: ml_collections.ConfigDict, width: Any):
  return family_lib.at_width(rule, config.model.n_layers, width)


KIND_TABLE = {
  'isoflop': Kind(
    _check_isoflop,
    _isoflop_axes,
    _design,
    lambda c, target, fam, n: Point(c, c / (6.0 * n), f'C{short(c)}_N{short(target)}'),
  ),
  'grid': Kind(
    _check_grid,
    lambda s: [(float(d), tuple(get(s, 'sizes'))) for d in get(s, 'tokens')],
    _design,
    lambda d, target, fam, n: Point(None, d, f'N{short(target)}_D{short(d)}'),
  ),
  'width': Kind(
    _check_width,
    lambda s: [(float(d), tuple(int(w) for w in get(s, 'widths'))) for d in get(s, 'tokens')],
    _at_width,
    lambda d, target, fam, n: Point(None, d, f'd{fam.d_model}_D{short(d)}'),
  ),
  'wsd': Kind(
    _check_wsd,
    lambda s: [(float(d), tuple(get(s, 'sizes'))) for d in get(s, 'tokens')],
    _design,
    lambda d, target, fam, n: Point(None, d, f'N{short(target)}_D{short(d)}'),
    trunks=True,
  ),
}
KINDS = tuple(KIND_TABLE)


def check(s: Section) -> Kind:
  """Checks the sweep section (what its grid means; configs/schema.py has keys and types)."""
  unknown = sorted(set(s.keys()) - set(DEFAULTS) - {'family', 'distill'})
  if unknown:
    raise ValueError(
      f'config.sweep has unknown keys {unknown}; known: '
      f'{sorted(set(DEFAULTS) | {"family", "distill"})}'
    )
  kind = get(s, 'kind')
  if kind not in KIND_TABLE:
    raise ValueError(f'config.sweep.kind must be one of {KINDS}, got {kind!r}')
  if get(s, 'count') not in family_lib.COUNTS:
    raise ValueError(f'config.sweep.count must be one of {family_lib.COUNTS}')
  KIND_TABLE[kind].check(s)
  for key in ('lrs', 'seeds'):
    values = tuple(get(s, key))
    if len(set(values)) != len(values):
      raise ValueError(f'config.sweep.{key} has repeated values: {values}')
  if any(not float(lr) > 0 for lr in get(s, 'lrs')):
    raise ValueError(f'config.sweep.lrs must be positive: {tuple(get(s, "lrs"))}')
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
  return KIND_TABLE[kind]


# --- members --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Axis:
  """One member's place on the optional axes: distill mode, peak lr, seed (None: the config's)."""

  mode: str
  lr: float | None
  seed: int | None

  def suffix(self) -> str:
    return (
      (f'_{self.mode}' if self.mode else '')
      + (f'_lr{short(self.lr)}' if self.lr is not None else '')
      + (f'_s{self.seed}' if self.seed is not None else '')
    )


def _axes(s: Section) -> list[Axis]:
  modes = tuple(s.distill.modes) if 'distill' in s else ('',)
  lrs = tuple(float(x) for x in get(s, 'lrs')) or (None,)
  seeds = tuple(int(x) for x in get(s, 'seeds')) or (None,)
  return [Axis(*a) for a in itertools.product(modes, lrs, seeds)]


def _member_config(
  config: ml_collections.ConfigDict,
  fam: family_lib.Member,
  steps: int,
  warmup: int,
  axis: Axis,
) -> ml_collections.ConfigDict:
  """The resolved training config of one member: base config, family shape, steps, schedule,
  and its lr and seed when the sweep has those axes."""
  s, c = config.sweep, copy.deepcopy(config)
  with c.unlocked():
    del c['sweep']
    if 'distill' in c and axis.mode == 'supervised':
      del c['distill']
    if axis.mode == 'distill':
      c.distill = copy.deepcopy(s.distill.section)
  c.model.update(fam.model)
  c.train.num_steps = steps
  c.train.total_tokens = 0
  # Evaluate at the end (the loss we report) and, for loss curves (approach 1), evenly before.
  c.train.eval_every = max(1, math.ceil(steps / max(1, int(get(s, 'evals_per_member')))))
  c.train.checkpoint_every = max(1, math.ceil(steps / max(1, get(s, 'checkpoints_per_member'))))
  c.train.log_every = max(1, math.ceil(steps / max(1, get(s, 'logs_per_member'))))
  c.optimizer.warmup_steps = warmup
  exp, ref = float(get(s, 'lr_width_exponent')), int(get(s, 'lr_ref_d_model'))
  if axis.lr is not None:
    c.optimizer.lr = float(axis.lr)
  if exp and ref:
    c.optimizer.lr = float(c.optimizer.lr * (ref / fam.d_model) ** exp)
  if axis.seed is not None:
    c.seed = int(axis.seed)
  return c


def _steps(s: Section, tokens: float, tokens_per_step: int) -> tuple[int, int]:
  """(steps, warmup) for a token budget: steps rounded, >= warmup and min_steps; warmup scaled."""
  raw = max(1, round(tokens / tokens_per_step))
  warmup = max(int(get(s, 'min_warmup_steps')), round(float(get(s, 'warmup_fraction')) * raw))
  steps = max(raw, warmup, int(get(s, 'min_steps')))
  return steps, min(warmup, steps)


@dataclasses.dataclass(frozen=True)
class _Sweep:
  """What every member of one sweep shares."""

  config: ml_collections.ConfigDict
  kind_name: str
  kind: Kind
  count_key: str  # 'params' | 'non_embedding_params': the N of sizes and of C = 6·N·D.
  tokens_per_step: int


def _info(sw: _Sweep, mcfg: ml_collections.ConfigDict, fam: family_lib.Member, p: Point) -> dict:
  """The member's static result columns (counts, tokens, FLOPs by the sweep's count, shape)."""
  counts, flops_tok = budget.param_counts(mcfg), budget.flop_counts(mcfg)
  tokens = mcfg.train.num_steps * sw.tokens_per_step
  return {
    'params': counts['params'],
    'non_embedding_params': counts['non_embedding_params'],
    'embedding_params': counts['embedding_params'],
    'tokens': tokens,
    'flops': 6.0 * counts[sw.count_key] * tokens,
    'steps': mcfg.train.num_steps,
    'kind': sw.kind_name,
    'budget': p.budget,
    'target_params': None,  # set by the caller (its order in the table stays).
    'target_tokens': p.tokens,
    'n_layers': fam.n_layers,
    'd_model': fam.d_model,
    'n_heads': fam.n_heads,
    'd_ff': fam.d_ff,
    'lr': float(mcfg.optimizer.lr),
    'warmup_steps': mcfg.optimizer.warmup_steps,
    'tokens_per_step': sw.tokens_per_step,
    'flops_chinchilla': flops_tok['flops_per_token_chinchilla'] * tokens,
    'seed': int(mcfg.seed),
    'parametrization': mcfg.model.parametrization,
    'non_embedding_params_with_head': flops_tok['non_embedding_params_with_head'],
    'flops_attn_head': flops_tok['flops_per_token_attn_head'] * tokens,
  }


def _members_at(sw: _Sweep, outer: float, size: Any, fam: family_lib.Member) -> list[Member]:
  """The members of one (outer value, size) cell: one per (mode, lr, seed)."""
  s = sw.config.sweep
  target = float(fam.matched) if sw.kind_name == 'width' else float(size)
  p = sw.kind.point(outer, target, fam, getattr(fam, sw.count_key))
  steps, warmup = _steps(s, p.tokens, sw.tokens_per_step)
  if sw.kind.trunks:  # one warmup per size (its smallest budget's), so trunks are shared.
    warmup = _steps(s, min(float(d) for d in get(s, 'tokens')), sw.tokens_per_step)[1]
    steps = max(steps, warmup + 1)
  out = []
  for axis in _axes(s):
    name = p.name + axis.suffix()
    mcfg = _member_config(sw.config, fam, steps, warmup, axis)
    info = {'name': name, **_info(sw, mcfg, fam, p), 'target_params': target}
    if axis.mode:
      info['mode'] = axis.mode
    out.append(Member(name, mcfg, info, axis.mode))
  return out


def members(config: ml_collections.ConfigDict) -> list[Member]:
  """The sweep's members, in a fixed order (budgets or token budgets, then sizes, then modes)."""
  if 'sweep' not in config:
    raise ValueError('config has no sweep section')
  s = config.sweep
  kind = check(s)
  rule = family_lib.ShapeRule.from_config(s.family if 'family' in s else {}, config.model)
  tokens_per_step = config.train.global_batch_size * config.data.seq_len
  sw = _Sweep(config, get(s, 'kind'), kind, get(s, 'count'), tokens_per_step)
  shapes, out, names = {}, [], set()
  for outer, sizes in kind.axes(s):
    for size in sizes:
      if size not in shapes:
        shapes[size] = kind.shape(rule, config, size)
      for m in _members_at(sw, outer, size, shapes[size]):
        if m.name in names:
          raise ValueError(f'config.sweep: duplicate member {m.name} (repeated size or budget?)')
        names.add(m.name)
        out.append(m)
  return _with_trunks(out, s, config.optimizer.decay_fraction) if kind.trunks else out


def _with_trunks(ms: list[Member], s: Section, decay_fraction: float) -> list[Member]:
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
    m.trunk = m.name.replace(f'_D{short(m.info["target_tokens"])}', '_trunk', 1)
    m.info.update(branch_tokens=branch * m.info['tokens_per_step'], trunk=m.trunk)
    groups.setdefault(m.trunk, []).append(m)
  for group in groups.values():
    trunk_config = copy.deepcopy(max(group, key=lambda m: m.info['steps']).config)
    points = tuple(sorted({m.branch_step for m in group}))
    trunk_config.train.keep_checkpoints = len(points) + int(get(s, 'checkpoints_per_member')) + 1
    for m in group:
      m.trunk_config, m.trunk_steps = trunk_config, points
  return ms


def plan_table(ms: Sequence[Member]) -> str:
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
