"""Model families by parameter count: shapes that land within a tolerance of target sizes.

A shape rule fixes the family (gpt2: learned positions, LayerNorm, GELU, biases; llama: rope,
RMSNorm, SwiGLU, no biases), the head dimension (d_model is a multiple of it, n_heads =
d_model / head_dim), the MLP ratio (d_ff = mlp_ratio·d_model, rounded to ff_multiple), the kv-head
grouping, the vocabulary and context length, and a preferred aspect ratio d_model / n_layers.

For each target we search every n_layers (1..max_layers) and, for each, the d_model multiple that
brings the count closest to the target; among the shapes within `tolerance` of the target we pick
the one whose aspect ratio is closest (in log) to the preferred one, otherwise the closest count.
(A strict aspect ratio cannot hit small targets: one more layer changes the size by ((L+1)/L)^3.)
Counts are exact (models/count.py param_counts); `count` says which one is matched: 'params' (total,
Chinchilla's N, the default) or 'non_embedding_params' (Kaplan's N).

  python -m scaling.family --targets=1e6,3e6,1e7 --aspect=32 --head_dim=16 --family=gpt2
"""

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence

import ml_collections
from absl import flags

from models.config import ROPE_FIELDS, ModelConfig
from scaling import budget
from train import cli

FAMILIES = ('gpt2', 'llama')
COUNTS = ('params', 'non_embedding_params')

FLAGS = flags.FlagValues()  # this module's own: tools importing each other share flag names.
flags.DEFINE_list(
  'targets', None, 'comma-separated parameter counts, e.g. 1e6,3e6,1e7', flag_values=FLAGS
)
flags.DEFINE_enum('family', 'gpt2', FAMILIES, 'shape family', flag_values=FLAGS)
flags.DEFINE_float('aspect', 32.0, 'preferred d_model / n_layers', flag_values=FLAGS)
flags.DEFINE_integer(
  'head_dim', 16, 'head dimension (d_model is a multiple of it)', flag_values=FLAGS
)
flags.DEFINE_float('mlp_ratio', None, 'default 4 (gpt2) or 8/3 (llama)', flag_values=FLAGS)
flags.DEFINE_integer('ff_multiple', 8, 'd_ff is rounded to a multiple of this', flag_values=FLAGS)
flags.DEFINE_integer('gqa', 1, 'query heads per kv head', flag_values=FLAGS)
flags.DEFINE_integer('vocab_size', 257, 'vocabulary size', flag_values=FLAGS)
flags.DEFINE_integer('max_len', 128, 'context length', flag_values=FLAGS)
flags.DEFINE_bool('untied', False, 'untied output head', flag_values=FLAGS)
flags.DEFINE_enum('count', 'params', COUNTS, 'which count meets the target', flag_values=FLAGS)
flags.DEFINE_float(
  'tolerance', 0.05, 'relative; shapes within it are preferred by aspect ratio', flag_values=FLAGS
)
flags.DEFINE_integer('max_layers', 96, 'deepest shape searched', flag_values=FLAGS)
flags.DEFINE_bool('json', False, 'print JSON (one object per member) instead', flag_values=FLAGS)
flags.mark_flag_as_required('targets', flag_values=FLAGS)


@dataclasses.dataclass(frozen=True)
class ShapeRule:
  family: str = 'gpt2'
  aspect: float = 32.0  # preferred d_model / n_layers.
  head_dim: int = 16
  mlp_ratio: float | None = None  # None: 4 (gpt2) or 8/3 (llama, SwiGLU).
  ff_multiple: int = 8  # d_ff is rounded to a multiple of this (gpt2 with ratio 4: exact).
  gqa: int = 1  # query heads per kv head (1: multi-head attention).
  vocab_size: int = 257
  max_len: int = 128
  tie_embeddings: bool = True
  count: str = 'params'  # 'params' | 'non_embedding_params': which count meets the target.
  tolerance: float = 0.05  # relative; shapes within it are preferred by aspect ratio.
  max_layers: int = 96

  def __post_init__(self) -> None:
    if self.family not in FAMILIES:
      raise ValueError(f'family must be one of {FAMILIES}, got {self.family!r}')
    if self.count not in COUNTS:
      raise ValueError(f'count must be one of {COUNTS}, got {self.count!r}')
    if self.head_dim <= 0 or self.aspect <= 0 or self.gqa <= 0 or self.ff_multiple <= 0:
      raise ValueError(f'head_dim, aspect, gqa and ff_multiple must be positive: {self}')
    if self.family == 'llama' and self.head_dim % 2:
      raise ValueError(f'llama (rope) needs an even head_dim, got {self.head_dim}')

  @property
  def ratio(self) -> float:
    """d_ff / d_model before rounding to ff_multiple."""
    if self.mlp_ratio is not None:
      return float(self.mlp_ratio)
    return 4.0 if self.family == 'gpt2' else 8.0 / 3.0

  @classmethod
  def from_config(
    cls,
    section: Mapping | ml_collections.ConfigDict | None,
    model: Mapping | ml_collections.ConfigDict | None = None,
  ) -> 'ShapeRule':
    """From a config section (dict-like); vocab_size / max_len / tie default to `model`'s."""
    d = section.to_dict() if hasattr(section, 'to_dict') else dict(section or {})
    if model is not None:
      for key in ('vocab_size', 'max_len', 'tie_embeddings'):
        d.setdefault(key, model[key])
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f'shape rule has unknown keys {unknown}; known: {sorted(names)}')
    return cls(**d)


def model_section(rule: ShapeRule, n_layers: int, d_model: int) -> dict:
  """The config.model overrides for one shape of this family."""
  n_heads = d_model // rule.head_dim
  d_ff = max(
    rule.ff_multiple, int(round(rule.ratio * d_model / rule.ff_multiple)) * rule.ff_multiple
  )
  out = dict(
    vocab_size=rule.vocab_size,
    d_model=d_model,
    n_layers=n_layers,
    n_heads=n_heads,
    n_kv_heads=n_heads // rule.gqa,
    head_dim=None,
    d_ff=d_ff,
    max_len=rule.max_len,
    tie_embeddings=rule.tie_embeddings,
  )
  if rule.family == 'gpt2':
    out.update(positions='learned', norm='layernorm', mlp='gelu', use_bias=True)
  else:
    out.update(positions='rope', norm='rmsnorm', mlp='swiglu', use_bias=False)
  # Members train from scratch with plain rope, whatever the base config's (e.g. Llama-3.2's).
  out.update({k: getattr(ModelConfig(), k) for k in ('rope_scaling',) + ROPE_FIELDS['llama3']})
  if rule.gqa == 1:
    out['n_kv_heads'] = None
  return out


def _count(rule: ShapeRule, n_layers: int, d_model: int) -> dict:
  return budget.param_counts(model_section(rule, n_layers, d_model))


@dataclasses.dataclass(frozen=True)
class Member:
  target: float
  n_layers: int
  d_model: int
  n_heads: int
  n_kv_heads: int
  d_ff: int
  params: int
  non_embedding_params: int
  matched: int  # the count the target refers to (rule.count).
  model: dict  # config.model overrides.

  @property
  def error(self) -> float:
    """Relative error of the matched count vs the target."""
    return self.matched / self.target - 1.0

  @property
  def aspect(self) -> float:
    """d_model / n_layers."""
    return self.d_model / self.n_layers


def _best_width(rule: ShapeRule, n_layers: int, target: float) -> list[int]:
  """For n_layers, the d_model multiples just below and above the target (counts grow with d)."""
  step = rule.head_dim * rule.gqa
  size = lambda m: _count(rule, n_layers, m * step)[rule.count]
  lo, hi = 1, 1
  while size(hi) < target:
    lo, hi = hi, hi * 2
    if hi * step > 1 << 20:
      break
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if size(mid) < target:
      lo = mid
    else:
      hi = mid
  return sorted({lo * step, hi * step})


def _member(rule: ShapeRule, n_layers: int, d: int, target: float | None) -> Member:
  """The Member at one depth and width; target None: the matched count itself."""
  m = model_section(rule, n_layers, d)
  c = _count(rule, n_layers, d)
  return Member(
    target=float(c[rule.count] if target is None else target),
    n_layers=n_layers,
    d_model=d,
    n_heads=m['n_heads'],
    n_kv_heads=m['n_kv_heads'] or m['n_heads'],
    d_ff=m['d_ff'],
    params=c['params'],
    non_embedding_params=c['non_embedding_params'],
    matched=c[rule.count],
    model=m,
  )


def design(target: float, rule: ShapeRule) -> Member:
  """The shape for one target count (see module docstring for the choice)."""
  if not target > 0:
    raise ValueError(f'target must be positive, got {target}')
  cands = []
  for n_layers in range(1, rule.max_layers + 1):
    for d in _best_width(rule, n_layers, target):
      c = _count(rule, n_layers, d)
      err = c[rule.count] / target - 1.0
      cands.append((abs(math.log1p(err)), abs(math.log(d / n_layers / rule.aspect)), n_layers, d))
  within = [c for c in cands if c[0] <= math.log1p(rule.tolerance)]
  if within:
    _, _, n_layers, d = min(within, key=lambda c: (c[1], c[0]))
  else:
    _, _, n_layers, d = min(cands, key=lambda c: (c[0], c[1]))
  return _member(rule, n_layers, d, target)


def at_width(rule: ShapeRule, n_layers: int, d_model: int) -> Member:
  """The family's shape at a given depth and width (for width-transfer sweeps)."""
  if d_model % (rule.head_dim * rule.gqa):
    raise ValueError(
      f'width {d_model} is not a multiple of head_dim x gqa = {rule.head_dim * rule.gqa}'
    )
  return _member(rule, n_layers, d_model, None)


def family(targets: Iterable[float], rule: ShapeRule) -> list[Member]:
  """design() for each target, in the given order."""
  return [design(t, rule) for t in targets]


def table(members: Sequence[Member], rule: ShapeRule) -> str:
  """A plain-text table of a family."""
  head = (
    f'{"target":>12} {"params":>12} {"non-embedding":>14} {"n_layers":>8} {"d_model":>7} '
    f'{"n_heads":>7} {"kv":>3} {"d_ff":>6} {"d/L":>6} {"error %":>8}'
  )
  lines = [
    f'# family={rule.family} aspect={rule.aspect:g} head_dim={rule.head_dim} '
    f'mlp_ratio={rule.ratio:.4g} vocab={rule.vocab_size} max_len={rule.max_len} '
    f'tied={rule.tie_embeddings} target count={rule.count} tolerance={rule.tolerance:.0%}',
    head,
  ]
  for m in members:
    lines.append(
      f'{m.target:>12.4g} {m.params:>12,} {m.non_embedding_params:>14,} {m.n_layers:>8} '
      f'{m.d_model:>7} {m.n_heads:>7} {m.n_kv_heads:>3} {m.d_ff:>6} {m.aspect:>6.1f} '
      f'{100 * m.error:>+8.2f}'
    )
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  """The command line (module docstring); argv excludes the program name (None: sys.argv[1:])."""
  cli.parse(FLAGS, argv, __doc__)
  try:
    targets = [float(t) for t in FLAGS.targets if t.strip()]
  except ValueError:
    cli.usage_error(f'--targets={",".join(FLAGS.targets)}: not a comma-separated list of numbers')
  try:
    rule = ShapeRule(
      family=FLAGS.family,
      aspect=FLAGS.aspect,
      head_dim=FLAGS.head_dim,
      mlp_ratio=FLAGS.mlp_ratio,
      ff_multiple=FLAGS.ff_multiple,
      gqa=FLAGS.gqa,
      vocab_size=FLAGS.vocab_size,
      max_len=FLAGS.max_len,
      tie_embeddings=not FLAGS.untied,
      count=FLAGS.count,
      tolerance=FLAGS.tolerance,
      max_layers=FLAGS.max_layers,
    )
    members = family(targets, rule)
  except ValueError as e:
    cli.usage_error(e)
  if FLAGS.json:
    for m in members:
      print(json.dumps({**dataclasses.asdict(m), 'error': m.error}))
  else:
    print(table(members, rule))


if __name__ == '__main__':
  main()
