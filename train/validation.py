"""Config validation and derived quantities, computed once and checked before any compile.

`derive(config, num_devices, process_count)` is the single place where head dim, step
count from a token budget, per-device and micro batch sizes are computed, and where the whole
config is checked in one pass: the base schema, the `distill` section (train/distill.py) and the
`sweep` section's keys and types (its grid is scaling/sweep.py's); every inconsistency raises
ValueError naming the offending field.
"""

import dataclasses
import difflib
import os

import ml_collections

from configs import base
from models.config import CHOICES as model_choices
from models.config import ROPE_FIELDS, ModelConfig, head_dim, kv_heads
from train import sharding
from train.data import pipeline

CHOICES = {
  **{'model.' + k: v for k, v in model_choices.items()},
  'optimizer.schedule': ('cosine', 'linear', 'constant', 'wsd'),
  'train.loss_scale': ('auto', 'dynamic', 'none'),
  'distributed.initialize': ('auto', 'yes', 'no'),
}
# Optional sections with schemas of their own (base.get_distill_config, base.get_sweep_config),
# checked by _check_distill and _check_sweep_section.
EXTRA_SECTIONS = ('distill', 'sweep')
MODES = ('online', 'offline', 'sequence')  # config.distill.mode
DIVERGENCES = ('forward', 'reverse', 'mix')  # config.distill.divergence
LOGITS_DTYPES = ('float16', 'bfloat16', 'float32')  # config.distill.logits_dtype
_MISSING_DISTILL = 'config.distill: missing section (see configs/base.py get_distill_config)'


@dataclasses.dataclass(frozen=True)
class Derived:
  model: ModelConfig
  num_steps: int
  tokens_per_step: int
  mesh_shape: dict
  batch_shards: int  # data * fsdp: devices the batch is split over.
  per_device_batch: int  # sequences per device per optimizer step.
  micro_batch: int  # global sequences per microbatch.
  host_batch: int  # sequences this host feeds per step.
  loss_scale: bool  # dynamic loss scaling on (train.loss_scale, model.dtype).
  # config.distill with its defaults filled in (base.get_distill_config); None without one.
  distill: ml_collections.ConfigDict | None = None


def unknown_key(name: str, key: str, known) -> str:
  """The one message for a key the schema lacks, in a config file or on the command line."""
  close = difflib.get_close_matches(key, list(known), n=1)
  hint = f'did you mean {close[0]!r}? ' if close else ''
  return f'{name}: unknown key ({hint}known: {", ".join(sorted(known))})'


def _check_schema(config, schema, prefix=''):
  for key, value in config.items():
    name = f'{prefix}{key}'
    if key not in schema:
      if not prefix and key in EXTRA_SECTIONS:
        continue
      raise ValueError(unknown_key(f'config.{name}', key, schema.keys()))
    ref = schema[key]
    if isinstance(ref, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ValueError(f'config.{name}: expected a section, got {value!r}')
      _check_schema(value, ref, name + '.')
      continue
    _check_type(name, value, schema.get_type(key) if hasattr(schema, 'get_type') else type(ref))
    if name in CHOICES and value not in CHOICES[name]:
      raise ValueError(f'config.{name}: {value!r} is not one of {CHOICES[name]}')


def _check_type(name, value, ref_type):
  """config.<name> has the schema's type (None always passes; an int is a float, a list a tuple)."""
  if value is None or ref_type is type(None):
    return
  ok = isinstance(value, ref_type) or (ref_type is float and isinstance(value, int))
  if isinstance(value, bool) and ref_type is not bool:
    ok = False
  if ref_type is tuple and isinstance(value, list):
    ok = True
  if not ok:
    raise ValueError(
      f'config.{name}: expected {ref_type.__name__}, got {type(value).__name__} {value!r}'
    )


def _check_distill(config) -> ml_collections.ConfigDict | None:
  """config.distill (train/distill.py): keys, types, choices and ranges; the section with its
  defaults filled in, or None when the config has none."""
  if 'distill' not in config:
    return None
  if not isinstance(config.distill, ml_collections.ConfigDict):
    raise ValueError(_MISSING_DISTILL)
  d, schema = config.distill, base.get_distill_config()
  for key, value in d.items():
    if key not in schema:
      raise ValueError(unknown_key(f'config.distill.{key}', key, schema.keys()))
    _check_type(f'distill.{key}', value, type(schema[key]))
  d = ml_collections.ConfigDict({**schema.to_dict(), **d.to_dict()})
  if not d.teacher:
    raise ValueError("config.distill.teacher: required (one of our workdirs or 'hf:/path')")
  for key, choices in (
    ('mode', MODES),
    ('divergence', DIVERGENCES),
    ('logits_dtype', LOGITS_DTYPES),
  ):
    if d[key] not in choices:
      raise ValueError(f'config.distill.{key}: {d[key]!r} is not one of {choices}')
  if not d.temperature > 0:
    raise ValueError(f'config.distill.temperature must be positive, got {d.temperature}')
  for key in ('alpha', 'mix_weight'):
    if not 0.0 <= d[key] <= 1.0:
      raise ValueError(f'config.distill.{key} must be in [0, 1], got {d[key]}')
  if d.mode == 'offline' and not 1 <= d.top_k <= config.model.vocab_size:
    raise ValueError(
      f'config.distill.top_k={d.top_k} must be in [1, config.model.vocab_size='
      f'{config.model.vocab_size}]'
    )
  if d.mode == 'sequence':
    _check_distill_sequence(d, config)
  return d


def _check_distill_sequence(d, config):
  seq_len, vocab = config.data.seq_len, config.model.vocab_size
  if not 1 <= d.prompt_len <= seq_len:
    raise ValueError(
      f'config.distill.prompt_len={d.prompt_len} must be in [1, '
      f'config.data.seq_len={seq_len}] (the teacher continues it to seq_len + 1)'
    )
  if not d.gen_temperature >= 0:
    raise ValueError(
      f'config.distill.gen_temperature must be >= 0 (0: greedy), got {d.gen_temperature}'
    )
  if not 0 <= d.gen_top_k <= vocab:
    raise ValueError(
      f'config.distill.gen_top_k={d.gen_top_k} must be in [0 (off), '
      f'config.model.vocab_size={vocab}]'
    )
  if not 0 < d.gen_top_p <= 1:
    raise ValueError(f'config.distill.gen_top_p must be in (0, 1], got {d.gen_top_p}')


def distill_section(derived: Derived) -> ml_collections.ConfigDict:
  """derived.distill, or the ValueError of a distillation run whose config has no such section."""
  if derived.distill is None:
    raise ValueError(_MISSING_DISTILL)
  return derived.distill


def _check_sweep_section(config):
  """config.sweep's keys and types against base.get_sweep_config(). What the grid means is
  scaling/sweep.py's (_check_sweep, in members()); so are the keys of the `family` shape rule
  (scaling/family.py ShapeRule) and the optional `distill` axis, here only required to be
  sections. Sweep members drop the section (scaling/sweep.py _member_config)."""
  if 'sweep' not in config:
    return
  s = config.sweep
  if not isinstance(s, ml_collections.ConfigDict):
    raise ValueError(f'config.sweep: expected a section, got {s!r}')
  schema = base.get_sweep_config()
  known = [*schema.keys(), 'distill']
  for key, value in s.items():
    name = f'sweep.{key}'
    if key not in known:
      raise ValueError(unknown_key(f'config.{name}', key, known))
    if key in ('family', 'distill'):
      if value is not None and not isinstance(value, ml_collections.ConfigDict):
        raise ValueError(f'config.{name}: expected a section, got {value!r}')
      continue
    _check_type(name, value, schema.get_type(key))


def _positive(config, *names):
  for name in names:
    section, key = name.split('.')
    if config[section][key] <= 0:
      raise ValueError(f'config.{name} must be positive, got {config[section][key]}')


def _check_rope_scaling(m):
  """rope_scaling's fields: set only those it reads, each in range (as transformers uses them)."""
  kind, defaults = m.rope_scaling, ModelConfig()
  if kind != 'none' and m.positions != 'rope':
    raise ValueError(f"config.model.rope_scaling={kind!r} needs config.model.positions='rope'")
  for key in (
    'rope_factor',
    'rope_low_freq_factor',
    'rope_high_freq_factor',
    'rope_original_max_len',
  ):
    if key not in ROPE_FIELDS[kind] and m[key] != getattr(defaults, key):
      raise ValueError(
        f'config.model.{key}={m[key]} is not used by '
        f'config.model.rope_scaling={kind!r}; leave it at its default'
      )
  if kind != 'none' and m.rope_factor <= 0:
    raise ValueError(f'config.model.rope_factor must be positive, got {m.rope_factor}')
  if kind in ('llama3', 'dynamic') and m.rope_original_max_len <= 0:
    raise ValueError(
      f'config.model.rope_original_max_len must be positive for rope_scaling '
      f'{kind!r}, got {m.rope_original_max_len}'
    )
  if kind == 'llama3' and not 0 < m.rope_low_freq_factor < m.rope_high_freq_factor:
    raise ValueError(
      f'config.model.rope_high_freq_factor={m.rope_high_freq_factor} must exceed '
      f'config.model.rope_low_freq_factor={m.rope_low_freq_factor} > 0'
    )
  if kind == 'dynamic' and m.max_len > m.rope_original_max_len:
    raise ValueError(
      f'config.model.max_len={m.max_len} exceeds config.model.rope_original_max_len='
      f"{m.rope_original_max_len}: past it dynamic NTK rope rescales theta with each call's "
      'length (statefully, in transformers), which fixed shapes cannot reproduce'
    )


def _check_lm_eval(config):
  """config.lm_eval: counts in range, include_path a directory, every task name known to lm-eval."""
  e = config.get('lm_eval')
  if e is None:
    return
  for key in ('limit', 'num_fewshot'):
    if e[key] is not None and e[key] < 0:
      raise ValueError(f'config.lm_eval.{key} must be >= 0, got {e[key]}')
  if e.batch_size <= 0:
    raise ValueError(f'config.lm_eval.batch_size must be positive, got {e.batch_size}')
  if e.include_path and not os.path.isdir(e.include_path):
    raise ValueError(f'config.lm_eval.include_path={e.include_path!r} is not a directory')
  if e.tasks:
    from train import harness  # imports lm-eval: only when tasks are set.

    harness.check_tasks(e.tasks, e.include_path, 'config.lm_eval.tasks')


def steps_for(config) -> int:
  """Optimizer steps: train.num_steps, or train.total_tokens rounded down to whole steps."""
  t = config.train
  tokens_per_step = t.global_batch_size * config.data.seq_len
  return t.total_tokens // tokens_per_step if t.total_tokens > 0 else t.num_steps


def schedule_warnings(config, derived: 'Derived') -> list:
  """Settings that are legal but rarely meant: a run that is all warm-up, a token budget that
  rounds down to whole steps. The loop logs them once at the start."""
  out, t = [], config.train
  warmup = config.optimizer.warmup_steps
  if warmup >= derived.num_steps:
    out.append(
      f'config.optimizer.warmup_steps={warmup} >= the {derived.num_steps} training steps: '
      'the whole run is warm-up and the learning rate never decays'
    )
  used = derived.num_steps * derived.tokens_per_step
  if t.total_tokens > 0 and used != t.total_tokens:
    out.append(
      f'config.train.total_tokens={t.total_tokens:,} rounds down to {derived.num_steps} '
      f'steps x {derived.tokens_per_step:,} tokens = {used:,} tokens'
    )
  return out


def derive(config, num_devices: int, process_count: int = 1) -> Derived:
  """Validate `config` for this many devices/processes and return the derived quantities."""
  _check_schema(config, base.get_config())
  _check_sweep_section(config)
  distill = _check_distill(config)
  m = config.model
  # Intervals and counts the loop divides by or keeps by: 0 would crash mid-run or, for
  # keep_checkpoints, delete every checkpoint.
  _positive(
    config,
    'model.vocab_size',
    'model.d_model',
    'model.n_layers',
    'model.n_heads',
    'model.d_ff',
    'model.max_len',
    'data.seq_len',
    'train.global_batch_size',
    'train.grad_accum_steps',
    'optimizer.lr',
    'train.log_every',
    'train.eval_every',
    'train.eval_batches',
    'train.checkpoint_every',
    'train.keep_checkpoints',
    'train.spike_window',
    'model.vocab_multiple',
    'model.attention_block',
  )
  if m.loss_chunk < 0 or (m.loss_chunk and config.data.seq_len % m.loss_chunk):
    raise ValueError(
      f'config.model.loss_chunk={m.loss_chunk} must be 0 (whole rows) or divide '
      f'config.data.seq_len={config.data.seq_len}'
    )
  for name in (
    'train.keep_every',
    'data.max_documents',
    'data.read_threads',
    'train.spike_factor',
    'model.scan_unroll',
  ):
    section, key = name.split('.')
    if config[section][key] < 0:
      raise ValueError(f'config.{name} must be >= 0 (0: off / all), got {config[section][key]}')
  if m.head_dim is None and m.d_model % m.n_heads:
    raise ValueError(
      f'config.model.n_heads={m.n_heads} does not divide '
      f'config.model.d_model={m.d_model} (or set config.model.head_dim)'
    )
  kv = kv_heads(m)
  if m.n_heads % kv:
    raise ValueError(
      f'config.model.n_kv_heads={kv} does not divide config.model.n_heads={m.n_heads}'
    )
  hd = head_dim(m)
  if m.positions == 'rope' and hd % 2:
    raise ValueError(f'config.model: rope needs an even head dim, got {hd}')
  _check_rope_scaling(m)
  if m.attention_impl == 'cudnn' and m.dtype == 'float32':
    raise ValueError(
      "config.model.attention_impl='cudnn' needs config.model.dtype bfloat16 or "
      "float16 (the cuDNN flash kernel has no float32 path); use 'xla' for float32"
    )
  for key in ('base_d_model', 'base_d_ff', 'base_head_dim'):
    if m[key] < 0:
      raise ValueError(f"config.model.{key} must be >= 0 (0: the model's own), got {m[key]}")
  if m.parametrization != 'mup' and (m.base_d_model or m.base_d_ff or m.base_head_dim):
    raise ValueError("config.model.base_*: a base shape only applies to parametrization 'mup'")
  pipeline.parse_sources(config.data)  # mixture syntax and weights.
  if config.data.seq_len > m.max_len:
    raise ValueError(
      f'config.data.seq_len={config.data.seq_len} exceeds config.model.max_len={m.max_len}'
    )

  mesh_shape = sharding.mesh_shape(config.mesh, num_devices)
  t = config.train
  shards = mesh_shape['data'] * mesh_shape['fsdp']
  k = t.grad_accum_steps
  if t.global_batch_size % (shards * k):
    raise ValueError(
      f'config.train.global_batch_size={t.global_batch_size} is not divisible by data*fsdp '
      f'({shards}) x config.train.grad_accum_steps ({k}) = {shards * k}'
    )
  if t.global_batch_size % process_count:
    raise ValueError(
      f'config.train.global_batch_size={t.global_batch_size} is not divisible by '
      f'the number of processes ({process_count})'
    )
  tokens_per_step = t.global_batch_size * config.data.seq_len
  num_steps = steps_for(config)
  if num_steps <= 0:
    raise ValueError(
      f'config.train: no steps to run (num_steps={t.num_steps}, '
      f'total_tokens={t.total_tokens} < one step of {tokens_per_step} tokens)'
    )
  if config.optimizer.warmup_steps > num_steps:
    raise ValueError(
      f'config.optimizer.warmup_steps={config.optimizer.warmup_steps} exceeds the '
      f'{num_steps} training steps'
    )
  if t.loss_scale != 'none' and (t.loss_scale_init <= 0 or t.loss_scale_period <= 0):
    raise ValueError(
      f'config.train.loss_scale_init ({t.loss_scale_init}) and loss_scale_period '
      f'({t.loss_scale_period}) must be positive'
    )
  loss_scale = t.loss_scale == 'dynamic' or (t.loss_scale == 'auto' and m.dtype == 'float16')
  _check_lm_eval(config)
  return Derived(
    model=ModelConfig.make(m),
    num_steps=num_steps,
    tokens_per_step=tokens_per_step,
    mesh_shape=mesh_shape,
    batch_shards=shards,
    per_device_batch=t.global_batch_size // shards,
    micro_batch=t.global_batch_size // k,
    host_batch=t.global_batch_size // process_count,
    loss_scale=loss_scale,
    distill=distill,
  )
