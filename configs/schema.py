"""The config schema: one frozen dataclass per section, each with its keys, types, defaults,
allowed values and own checks, and `Config` composing them (the parsed, typed config).

Here in configs/ (data, below the trainer) so configs/base.py can build its ConfigDicts from these
dataclasses without importing trainer code: this module imports only models.config. Checks that
need trainer code (mixture syntax, the mesh against the devices, steps from the token budget)
are train/validation.py's `derive`, which parses with `Config.make` and runs `Config.check`.
"""

import dataclasses
import difflib
import math
import os
import types
import typing
from typing import Any, ClassVar

import ml_collections

from models.config import CHOICES as MODEL_CHOICES
from models.config import (
  LORA_TARGET_GROUPS,
  LORA_TARGETS,
  ROPE_FIELDS,
  ModelConfig,
  head_dim,
  kv_heads,
)

Section = ml_collections.ConfigDict | dict
MISSING_DISTILL = 'config.distill: missing section (see configs/base.py get_distill_config)'
DIVERGENCES = ('forward', 'reverse', 'mix')  # distill.divergence (train/distillation/trainer.py)
MAX_READ_THREADS = 256  # data.read_threads: a sane bound (a million threads hang the reader).


def unknown_key(name: str, key: str, known: typing.Iterable[str]) -> str:
  """The one message for a key the schema lacks, in a config file or on the command line."""
  close = difflib.get_close_matches(key, list(known), n=1)
  hint = f'did you mean {close[0]!r}? ' if close else ''
  return f'{name}: unknown key ({hint}known: {", ".join(sorted(known))})'


def check_type(name: str, value: Any, ref_type: type) -> None:
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


def _base_type(tp: Any) -> type:
  """int for `int | None`, tuple for `tuple[str, ...]`: the type a value is checked against."""
  if typing.get_origin(tp) in (typing.Union, types.UnionType):
    tp = next(a for a in typing.get_args(tp) if a is not type(None))
  return typing.get_origin(tp) or tp


def _ok(name: str, value: float, ok: bool, want: str) -> None:
  """config.<name> finite and `ok`, else one line naming it ('must be <want>, got <value>')."""
  if not math.isfinite(value):
    raise ValueError(f'config.{name} must be finite, got {value}')
  if not ok:
    raise ValueError(f'config.{name} must be {want}, got {value}')


def _positive(section: Any, prefix: str, *keys: str) -> None:
  for key in keys:
    value = getattr(section, key)
    _ok(f'{prefix}.{key}', value, value > 0, 'positive')


def _field(default: Any, **metadata: Any) -> Any:
  return dataclasses.field(default=default, metadata=metadata)


class _Section:
  """ConfigDict-style reads (item access, get, keys, to_dict) and parsing for a section dataclass."""

  NAME: ClassVar[str] = ''

  def __getitem__(self, key: str) -> Any:
    if key not in self.keys():
      raise KeyError(key)
    return getattr(self, key)

  def get(self, key: str, default: Any = None) -> Any:
    return getattr(self, key) if key in self.keys() else default

  def keys(self) -> list[str]:
    return [f.name for f in dataclasses.fields(self)]

  def items(self) -> list[tuple[str, Any]]:
    return [(k, getattr(self, k)) for k in self.keys()]

  def to_dict(self) -> dict:
    """Plain values, sections as dicts (ConfigDict.to_dict's shape)."""
    out = {}
    for k, v in self.items():
      is_dataclass = dataclasses.is_dataclass(v) and not hasattr(v, 'to_dict')
      out[k] = (
        v.to_dict() if hasattr(v, 'to_dict') else dataclasses.asdict(v) if is_dataclass else v
      )
    return out

  def replace(self, **kw: Any) -> Any:
    return dataclasses.replace(self, **kw)

  @classmethod
  def make(cls, section: Any) -> Any:
    """From an instance, a ConfigDict or a dict: unknown keys, types and choices checked."""
    return section if isinstance(section, cls) else parse_section(cls, section, cls.NAME)

  @classmethod
  def config_dict(cls, **overrides: Any) -> ml_collections.ConfigDict:
    """The section as a ConfigDict with every field at its default (then `overrides`)."""
    d = section_dict(cls)
    d.update(overrides)
    return d


def parse_section(cls: type, section: Any, name: str) -> Any:
  """`cls` (a section dataclass or ModelConfig) from `section`, checking keys, types, choices."""
  if not isinstance(section, (ml_collections.ConfigDict, dict)):
    raise ValueError(f'config.{name}: expected a section, got {section!r}')
  fields = {f.name: f for f in dataclasses.fields(cls)}
  kw = {}
  for key, value in section.items():
    if key not in fields:
      raise ValueError(unknown_key(f'config.{name}.{key}', key, fields))
    f = fields[key]
    if f.metadata.get('section'):  # a free-form sub-section (sweep.family, sweep.distill).
      if value is not None and not isinstance(value, (ml_collections.ConfigDict, dict)):
        raise ValueError(f'config.{name}.{key}: expected a section, got {value!r}')
      kw[key] = None if value is None else ml_collections.FrozenConfigDict(value)
      continue
    check_type(f'{name}.{key}', value, _base_type(f.type))
    choices = MODEL_CHOICES.get(key) if cls is ModelConfig else f.metadata.get('choices')
    if choices and value not in choices:
      raise ValueError(f'config.{name}.{key}: {value!r} is not one of {choices}')
    kw[key] = tuple(value) if isinstance(value, list) else value
  return cls(**kw)


def section_dict(cls: type) -> ml_collections.ConfigDict:
  """A ConfigDict of `cls`'s fields at their defaults (optional fields typed by FieldReference)."""
  d = ml_collections.ConfigDict()
  for f in dataclasses.fields(cls):
    if f.metadata.get('extra'):  # accepted when given, not part of the default section.
      continue
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if f.default is None:
      d[f.name] = ml_collections.FieldReference(None, field_type=_base_type(f.type))
    elif f.metadata.get('section'):
      d[f.name] = ml_collections.ConfigDict(default)
    else:
      d[f.name] = default
  return d


# --------------------------------------------------------------------------- model


def check_model(m: ModelConfig) -> None:
  """config.model on its own: sizes positive, heads dividing, rope and kernel combinations."""
  _positive(m, 'model', 'vocab_size', 'd_model', 'n_layers', 'n_heads', 'd_ff', 'max_len')
  _positive(m, 'model', 'vocab_multiple', 'attention_block', 'rope_theta', 'norm_eps')
  _ok('model.init_std', m.init_std, m.init_std >= 0, '>= 0')
  _ok('model.scan_unroll', m.scan_unroll, m.scan_unroll >= 0, '>= 0 (0: off / all)')
  if m.head_dim is None and m.d_model % m.n_heads:
    raise ValueError(
      f'config.model.n_heads={m.n_heads} does not divide '
      f'config.model.d_model={m.d_model} (or set config.model.head_dim)'
    )
  if m.n_heads % kv_heads(m):
    raise ValueError(
      f'config.model.n_kv_heads={kv_heads(m)} does not divide config.model.n_heads={m.n_heads}'
    )
  if m.positions == 'rope' and head_dim(m) % 2:
    raise ValueError(f'config.model: rope needs an even head dim, got {head_dim(m)}')
  _check_rope_scaling(m)
  if m.attention_impl == 'cudnn' and m.dtype == 'float32':
    raise ValueError(
      "config.model.attention_impl='cudnn' needs config.model.dtype bfloat16 or "
      "float16 (the cuDNN flash kernel has no float32 path); use 'xla' for float32"
    )
  for key in ('base_d_model', 'base_d_ff', 'base_head_dim', 'base_n_layers'):
    if getattr(m, key) < 0:
      raise ValueError(
        f"config.model.{key} must be >= 0 (0: the model's own), got {getattr(m, key)}"
      )
  if m.parametrization != 'mup' and (
    m.base_d_model or m.base_d_ff or m.base_head_dim or m.base_n_layers
  ):
    raise ValueError("config.model.base_*: a base shape only applies to parametrization 'mup'")
  _check_mup_hparams(m)
  _check_lora(m)
  _ok('model.weight_group', m.weight_group, m.weight_group >= 0, '>= 0 (0: per channel)')
  if m.weight_group and m.weight_quant == 'none':
    raise ValueError('config.model.weight_group: a quantization group needs model.weight_quant')
  _check_act_quant(m)


def _check_act_quant(m: ModelConfig) -> None:
  """Activation quantization (models/act_quant.py): act_scale only with act_quant; neither it nor
  SmoothQuant with LoRA adapters (they read the float input and kernel)."""
  if m.act_scale != ModelConfig.act_scale and m.act_quant == 'none':
    raise ValueError(
      f'config.model.act_scale={m.act_scale!r}: applies to activation quantization; set '
      'model.act_quant (int8 or fp8)'
    )
  for key in ('act_quant', 'act_smooth'):
    if getattr(m, key) not in ('none', False) and m.lora_rank:
      raise ValueError(f'config.model.{key}: not with LoRA adapters (model.lora_rank > 0)')


def _check_lora(m: ModelConfig) -> None:
  """LoRA: a rank >= 0, targets from the table, alpha >= 0, a positive LoRA+ ratio, a dropout
  in [0, 1); dropout, DoRA and a quantized base (QLoRA) only with adapters."""
  _ok('model.lora_rank', m.lora_rank, m.lora_rank >= 0, '>= 0 (0: off)')
  _ok('model.lora_alpha', m.lora_alpha, m.lora_alpha >= 0, '>= 0 (0: alpha = rank)')
  _ok('model.lora_lr_ratio', m.lora_lr_ratio, m.lora_lr_ratio > 0, '> 0')
  _ok('model.lora_dropout', m.lora_dropout, 0 <= m.lora_dropout < 1, 'in [0, 1)')
  names = tuple(LORA_TARGETS.values()) + tuple(LORA_TARGET_GROUPS)
  bad = [t for t in m.lora_targets if t not in names]
  if bad or (m.lora_rank and not m.lora_targets):
    raise ValueError(f'config.model.lora_targets={tuple(m.lora_targets)}: choose from {names}')
  for key in ('lora_dropout', 'lora_dora'):
    if getattr(m, key) and not m.lora_rank:
      raise ValueError(f'config.model.{key}: applies to LoRA adapters; set model.lora_rank > 0')
  if m.lora_base_resident != 'float' and not m.lora_rank:
    raise ValueError(
      f'config.model.lora_base_resident={m.lora_base_resident!r}: a quantized base is for LoRA '
      "(QLoRA); set model.lora_rank > 0 or lora_base_resident='float'"
    )


MUP_HPARAMS = ('mup_input_mult', 'mup_output_mult', 'mup_attn_mult') + tuple(
  f'mup_lr_{r}' for r in ('embedding', 'readout', 'vector')
)


def _check_mup_hparams(m: ModelConfig) -> None:
  """μP's base hyperparameters: positive, under 'mup' / 'umup' only, readout ones when untied."""
  defaults = ModelConfig()
  for key in MUP_HPARAMS:
    if key == 'mup_output_mult':  # 0: the parametrization's tuned value.
      _ok(f'model.{key}', m.mup_output_mult, m.mup_output_mult >= 0, '>= 0 (0: tuned)')
    else:
      _ok(f'model.{key}', getattr(m, key), getattr(m, key) > 0, 'positive')
  changed = [
    k for k in MUP_HPARAMS + ('mup_readout_init',) if getattr(m, k) != getattr(defaults, k)
  ]
  if changed and m.parametrization == 'sp':
    raise ValueError(f"config.model.{changed[0]}: a μP hyperparameter; needs 'mup' or 'umup'")
  exp = m.mup_lr_embedding_width_exp
  _ok('model.mup_lr_embedding_width_exp', exp, exp >= 0, '>= 0')
  if exp != defaults.mup_lr_embedding_width_exp and m.parametrization != 'mup':
    raise ValueError("config.model.mup_lr_embedding_width_exp: a μP width rule; needs 'mup'")
  untied = [k for k in ('mup_lr_readout', 'mup_readout_init') if k in changed]
  if untied and m.tie_embeddings:
    raise ValueError(f'config.model.{untied[0]}: needs an untied readout (tie_embeddings=False)')


def _check_rope_scaling(m: ModelConfig) -> None:
  """rope_scaling's fields: set only those it reads, each in range (as transformers uses them)."""
  kind, defaults = m.rope_scaling, ModelConfig()
  if kind != 'none' and m.positions != 'rope':
    raise ValueError(f"config.model.rope_scaling={kind!r} needs config.model.positions='rope'")
  for key in ('rope_factor', 'rope_low_freq_factor', 'rope_high_freq_factor'):
    _ok(f'model.{key}', getattr(m, key), True, '')  # finite; ranges below, per kind.
  for key in (
    'rope_factor',
    'rope_low_freq_factor',
    'rope_high_freq_factor',
    'rope_original_max_len',
  ):
    if key not in ROPE_FIELDS[kind] and getattr(m, key) != getattr(defaults, key):
      raise ValueError(
        f'config.model.{key}={getattr(m, key)} is not used by '
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


# --------------------------------------------------------------------------- sections


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
  """config.data: the dataset or mixture, its tokenizer, sequence length and token shards."""

  NAME: ClassVar[str] = 'data'
  # A TFDS text dataset (default: the embedded corpus), or a mixture 'name=weight,name=weight'
  # (its syntax and weights are checked by train/data/pipeline.py, in validation.derive).
  # 'jsonl:DIR' is supervised data: local files DIR/<train_split>.jsonl and DIR/<eval_split>.jsonl,
  # lines {"text"} | {"prompt", "completion"} | {"messages": [...]}, loss on completions / assistant
  # turns, examples packed whole with segment ids (train/data/supervised.py; DIR without ',' or
  # '='); e.g. 'jsonl:/data/sft=4,stdlib_corpus=1' mixes in pre-training text.
  dataset: str = 'stdlib_corpus'
  data_dir: str | None = None  # TFDS data_dir (e.g. gs://bucket/tfds).
  train_split: str = 'train'
  eval_split: str = 'validation'
  text_key: str = 'text'  # the TFDS feature holding the text (not read for jsonl: sources).
  tokenizer: str = 'byte'  # 'byte' | path to a local HuggingFace tokenizer directory.
  seq_len: int = 256
  max_documents: int = 0  # 0: whole split; else read at most this many documents per split.
  # Tokenized shards (`python -m train.data.prepare`; local or gs://): '' = <data_dir>/tokenized.
  prepared_dir: str = ''
  read_threads: int = 4  # grain threads reading upcoming batches (0: read when asked).
  # jsonl: sources (train/data/examples.py): examples packed whole into rows, or one per row; an
  # example longer than a row is cut from the left of its prompt (its completion kept) or, with
  # 'right', to its first seq_len + 1 tokens; a source with no DIR/<eval_split>.jsonl evaluates on
  # this fraction of its training examples, spread over the file and excluded from training.
  pack: bool = True
  truncation: str = _field('left', choices=('left', 'right'))
  eval_fraction: float = 0.05

  def check(self) -> None:
    _positive(self, 'data', 'seq_len')
    _ok('data.eval_fraction', self.eval_fraction, 0 < self.eval_fraction < 1, 'in (0, 1)')
    for key in ('max_documents', 'read_threads'):
      _ok(f'data.{key}', self[key], self[key] >= 0, '>= 0 (0: off / all)')
    if self.read_threads > MAX_READ_THREADS:
      raise ValueError(
        f'config.data.read_threads must be <= {MAX_READ_THREADS} (reader threads per host), '
        f'got {self.read_threads}'
      )


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Section):
  """config.train: batch, step budget, logging/eval/checkpoint cadence, guards, loss scaling."""

  NAME: ClassVar[str] = 'train'
  global_batch_size: int = 32  # sequences per optimizer step (all hosts, all microbatches).
  grad_accum_steps: int = 1
  num_steps: int = 1000  # ignored when total_tokens > 0.
  total_tokens: int = 0  # >0: num_steps = total_tokens // (global_batch_size * seq_len).
  log_every: int = 50
  eval_every: int = 250
  eval_batches: int = 8
  # Sequences per eval batch (0: global_batch_size). The eval set is eval_batches x eval_batch_size
  # rows of the eval split: fix both across a sweep whose members' batches differ, or their eval
  # losses are measured on different rows.
  eval_batch_size: int = 0
  # Which rows: 'spread' evenly over the whole eval split (row j of n is row floor(j * rows / n));
  # 'first': its first n rows (one stretch of a few files; how studies before 2026-12 measured).
  eval_set: str = _field('spread', choices=('spread', 'first'))
  checkpoint_every: int = 500
  # Keep the params of the best eval by this metric ('eval/loss', 'lm_eval/<task>/<metric>'; '':
  # off) as W/best, a workdir of one checkpoint (init_from=W/best, export, sample, lm-eval load
  # it); early_stop_patience > 0 stops the run after that many evals without an improvement.
  best_metric: str = ''
  best_mode: str = _field('min', choices=('min', 'max'))
  early_stop_patience: int = 0
  keep_checkpoints: int = 2  # keep the last N ...
  keep_every: int = 0  # ... plus every K-th step (0: none).
  async_checkpoint: bool = True
  # Persistent XLA compilation cache (a local or gs:// path; '': jax's own setting, e.g. the
  # JAX_COMPILATION_CACHE_DIR variable): a restarted or resumed run loads its compiled step
  # instead of compiling it again (minutes for a large model after a preemption).
  compilation_cache_dir: str = ''
  # Divergence guard (train/divergence.py): stop before checkpointing when a checked loss exceeds
  # spike_factor x the median of the last spike_window checked losses (0: only non-finite stops).
  spike_factor: float = 10.0
  spike_window: int = 20
  # Dynamic loss scaling (jmp): 'auto' = on for model.dtype float16, off otherwise | 'dynamic' |
  # 'none'.
  loss_scale: str = _field('auto', choices=('auto', 'dynamic', 'none'))
  loss_scale_init: float = 2.0**15  # on the token-mean loss (the summed loss gets it / tokens).
  loss_scale_period: int = 2000  # finite steps before the scale doubles (halves on overflow).

  def check(self) -> None:
    # Intervals and counts the loop divides by or keeps by: 0 would crash mid-run or, for
    # keep_checkpoints, delete every checkpoint.
    _positive(self, 'train', 'global_batch_size', 'grad_accum_steps', 'log_every', 'eval_every')
    _positive(self, 'train', 'eval_batches', 'checkpoint_every', 'keep_checkpoints')
    _positive(self, 'train', 'spike_window')
    for key in ('keep_every', 'spike_factor', 'total_tokens', 'eval_batch_size'):
      _ok(f'train.{key}', self[key], self[key] >= 0, '>= 0 (0: off / all)')
    _ok(
      'train.early_stop_patience', self.early_stop_patience, self.early_stop_patience >= 0, '>= 0'
    )
    metric = self.best_metric
    if metric and not metric.startswith(('eval/', 'lm_eval/')):
      raise ValueError(
        f"config.train.best_metric must be '' or an eval metric ('eval/...', "
        f"'lm_eval/<task>/<metric>'), got {metric!r}"
      )
    if self.early_stop_patience and not metric:
      raise ValueError('config.train.early_stop_patience needs config.train.best_metric')
    init, period = self.loss_scale_init, self.loss_scale_period
    if self.loss_scale != 'none' and not (math.isfinite(init) and init > 0 and period > 0):
      raise ValueError(
        f'config.train.loss_scale_init ({init}) and loss_scale_period ({period}) must be '
        'positive' + ('' if math.isfinite(init) else ' and finite')
      )


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(_Section):
  """config.optimizer: AdamW, its schedule and clipping (train/optimizer.py)."""

  NAME: ClassVar[str] = 'optimizer'
  lr: float = 3e-4
  schedule: str = _field('cosine', choices=('cosine', 'linear', 'constant', 'wsd'))
  warmup_steps: int = 100
  min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio (cosine, linear, wsd).
  decay_fraction: float = 0.2  # wsd: fraction of steps spent in the final decay.
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1
  grad_clip: float = 1.0  # global-norm clipping; 0 disables.
  # Params whose path contains any of these get no decay.
  wd_exclude: tuple[str, ...] = ('norm', 'bias', 'embed')

  def check(self) -> None:
    _positive(self, 'optimizer', 'lr', 'eps')
    for key in ('b1', 'b2'):
      _ok(f'optimizer.{key}', self[key], 0 <= self[key] < 1, 'in [0, 1)')
    for key in ('min_lr_ratio', 'decay_fraction'):
      _ok(f'optimizer.{key}', self[key], 0 <= self[key] <= 1, 'in [0, 1]')
    for key in ('weight_decay', 'grad_clip', 'warmup_steps'):
      _ok(f'optimizer.{key}', self[key], self[key] >= 0, '>= 0')


@dataclasses.dataclass(frozen=True)
class MeshConfig(_Section):
  """config.mesh: the (data, fsdp, tensor) device mesh (train/sharding.py resolves the -1)."""

  NAME: ClassVar[str] = 'mesh'
  data: int = -1  # -1: all devices not used by the other axes.
  fsdp: int = 1
  tensor: int = 1
  # A member group's member axis (train/group.py) over this mesh axis: each slice of devices
  # along it trains K / size of the members ('': every member on every device).
  members: str = _field('', choices=('', 'data', 'fsdp', 'tensor'))

  def check(self) -> None:
    """Axis sizes alone; whether they fill the devices is sharding.mesh_shape's (in derive)."""
    shape = {k: v for k, v in self.items() if k != 'members'}
    if list(shape.values()).count(-1) > 1:
      raise ValueError(f'config.mesh: at most one axis may be -1, got {shape}')
    if any(n == 0 or n < -1 for n in shape.values()):
      raise ValueError(f'config.mesh: axis sizes must be positive or -1, got {shape}')


@dataclasses.dataclass(frozen=True)
class DistributedConfig(_Section):
  """config.distributed: jax.distributed start-up (train/distributed.py)."""

  NAME: ClassVar[str] = 'distributed'
  initialize: str = _field('auto', choices=('auto', 'yes', 'no'))  # 'auto': TPU pods / env.
  coordinator_address: str = ''
  num_processes: int = 0
  process_id: int = -1
  # Seconds a process waits at start-up for all the others to connect, then exits with one line
  # (a process that was never started, a wrong address or num_processes).
  timeout_s: int = 300

  def check(self) -> None:
    _ok('distributed.num_processes', self.num_processes, self.num_processes >= 0, '>= 0 (0: auto)')
    _ok('distributed.process_id', self.process_id, self.process_id >= -1, '>= -1 (-1: auto)')
    _ok('distributed.timeout_s', self.timeout_s, self.timeout_s > 0, '> 0')


@dataclasses.dataclass(frozen=True)
class LmEvalConfig(_Section):
  """config.lm_eval: downstream tasks at every eval step through lm-evaluation-harness
  (train/tools/harness.py, which checks the task names), logged as lm_eval/<task>/<metric>."""

  NAME: ClassVar[str] = 'lm_eval'
  tasks: tuple[str, ...] = ()  # lm-eval task / group names, e.g. ('hellaswag', 'arc_easy').
  include_path: str = ''  # a directory of extra task YAMLs (lm-eval's --include_path).
  limit: int = 0  # documents per task (0: all).
  num_fewshot: int | None = None  # None: the task's own.
  batch_size: int = 16  # rows per forward (rounded up to a multiple of data x fsdp).

  def check(self) -> None:
    for key in ('limit', 'num_fewshot'):
      if self[key] is not None and self[key] < 0:
        raise ValueError(f'config.lm_eval.{key} must be >= 0, got {self[key]}')
    _positive(self, 'lm_eval', 'batch_size')
    if self.include_path and not os.path.isdir(self.include_path):
      raise ValueError(f'config.lm_eval.include_path={self.include_path!r} is not a directory')


def _check_pattern(pattern: str) -> None:
  """sparsity.pattern: 'unstructured' or 'N:M' with 0 < N < M (models/sparsity.py parse_pattern)."""
  n, _, m = pattern.partition(':')
  if pattern != 'unstructured' and not (n.isdigit() and m.isdigit() and 0 < int(n) < int(m)):
    raise ValueError(
      f"config.sparsity.pattern must be 'unstructured' or 'N:M' with 0 < N < M, got {pattern!r}"
    )


def _check_group(pattern: str, m: ModelConfig) -> None:
  """An N:M pattern's M divides every compressible kernel's fan-in (d_model, d_ff, heads x dh)."""
  if pattern == 'unstructured':
    return
  group = int(pattern.split(':')[1])
  fan_ins = {'d_model': m.d_model, 'd_ff': m.d_ff, 'n_heads*head_dim': m.n_heads * head_dim(m)}
  bad = [k for k, v in fan_ins.items() if v % group]
  if bad:
    raise ValueError(
      f'config.sparsity.pattern={pattern!r}: M={group} does not divide the fan-in '
      f'config.model.{bad[0]}={fan_ins[bad[0]]}'
    )


@dataclasses.dataclass(frozen=True)
class SparsityConfig(_Section):
  """config.sparsity: magnitude pruning of the compressible kernels during training
  (models/sparsity.py; train/optimizer.py keep_sparse keeps the mask in the optimizer state).
  The params of step t (after t updates) are re-masked when begin_step <= t <= end_step and
  (t - begin_step) % every == 0 or t == end_step, to the cubic schedule's fraction at t (Zhu &
  Gupta 2017), from the |w| the update gives; between and after, the mask is kept (pruned
  weights stay exactly zero). begin_step == end_step: one-shot at that step."""

  NAME: ClassVar[str] = 'sparsity'
  target: float = 0.0  # final pruned fraction of the compressible kernels (0: off).
  # 'unstructured' | 'N:M' (e.g. '2:4': the N largest |w| of every M along the fan-in; the
  # fraction is then 1 - N/M, `target` only turns it on).
  pattern: str = 'unstructured'
  scope: str = _field('global', choices=('global', 'layer'))  # rank all kernels / each layer.
  begin_step: int = 0  # the first step whose params are pruned (>= 1 when on).
  end_step: int = 0  # the step that reaches `target` (>= begin_step).
  every: int = 100  # steps between mask updates.

  def check(self) -> None:
    _ok('sparsity.target', self.target, 0 <= self.target < 1, 'in [0, 1) (0: off)')
    _check_pattern(self.pattern)
    _positive(self, 'sparsity', 'every')
    _ok('sparsity.begin_step', self.begin_step, self.begin_step >= 0, '>= 0')
    if self.target > 0 and self.begin_step < 1:
      raise ValueError(
        f'config.sparsity.begin_step must be >= 1 (the first step pruned), got {self.begin_step}'
      )
    if self.end_step < self.begin_step:
      raise ValueError(
        f'config.sparsity.end_step={self.end_step} must be >= '
        f'config.sparsity.begin_step={self.begin_step}'
      )


@dataclasses.dataclass(frozen=True)
class DistillConfig(_Section):
  """config.distill (train/distillation/trainer.py): teacher, temperature, mix, divergence, top-k,
  sequence-KD generation."""

  NAME: ClassVar[str] = 'distill'
  teacher: str = ''  # one of our workdirs, or 'hf:/path/to/dir'.
  # 'online' | 'offline' | 'sequence' (Kim & Rush 2016 sequence KD)
  mode: str = _field('online', choices=('online', 'offline', 'sequence'))
  temperature: float = 1.0  # T > 0; both distributions are softened by T.
  alpha: float = 0.5  # weight of the T^2-scaled divergence; 1 - alpha on hard-label CE.
  divergence: str = _field('forward', choices=DIVERGENCES)
  mix_weight: float = 0.5  # 'mix': weight of forward KL (1 - mix_weight on reverse KL).
  top_k: int = 32  # offline: stored teacher logits per token (1 <= k <= vocab).
  logits_dir: str = ''  # offline: where stored logits live; '' = <workdir>/teacher_logits.
  # offline: stored values 'float16' | 'bfloat16' | 'float32'.
  logits_dtype: str = _field('float16', choices=('float16', 'bfloat16', 'float32'))
  prompt_len: int = 32  # sequence: real tokens per row the teacher continues to seq_len + 1.
  gen_temperature: float = 0.0  # sequence: 0 = greedy; > 0 samples (key from (seed, step)).
  gen_top_k: int = 0  # sequence: sample from the k most likely tokens (0 = off).
  gen_top_p: float = 1.0  # sequence: nucleus sampling mass (1 = off).
  mask_prompt: bool = True  # sequence: no loss on prompt tokens (Kim & Rush: output given source).
  sequences_dir: str = ''  # sequence: the store; '' = <workdir>/teacher_sequences.

  def check(self, vocab_size: int, seq_len: int) -> None:
    """Ranges, and the top-k / prompt / sampling sizes against the student's vocab and rows."""
    if not self.teacher:
      raise ValueError("config.distill.teacher: required (one of our workdirs or 'hf:/path')")
    _ok('distill.temperature', self.temperature, self.temperature > 0, 'positive')
    for key in ('alpha', 'mix_weight'):
      _ok(f'distill.{key}', self[key], 0.0 <= self[key] <= 1.0, 'in [0, 1]')
    if self.mode == 'offline' and not 1 <= self.top_k <= vocab_size:
      raise ValueError(
        f'config.distill.top_k={self.top_k} must be in [1, config.model.vocab_size={vocab_size}]'
      )
    if self.mode != 'sequence':
      return
    if not 1 <= self.prompt_len <= seq_len:
      raise ValueError(
        f'config.distill.prompt_len={self.prompt_len} must be in [1, '
        f'config.data.seq_len={seq_len}] (the teacher continues it to seq_len + 1)'
      )
    t = self.gen_temperature
    _ok('distill.gen_temperature', t, t >= 0, '>= 0 (0: greedy)')
    if not 0 <= self.gen_top_k <= vocab_size:
      raise ValueError(
        f'config.distill.gen_top_k={self.gen_top_k} must be in [0 (off), '
        f'config.model.vocab_size={vocab_size}]'
      )
    _ok('distill.gen_top_p', self.gen_top_p, 0 < self.gen_top_p <= 1, 'in (0, 1]')


FAMILY = {'family': 'gpt2', 'aspect': 32.0, 'head_dim': 16, 'tolerance': 0.1}  # sweep.family


@dataclasses.dataclass(frozen=True)
class SweepConfig(_Section):
  """config.sweep (scaling/sweep.py): a grid of members around a base training config. Here its
  keys and types; what the grid means is scaling/sweep.py's (_check_sweep), so are the keys of the
  `family` shape rule (scaling/family.py ShapeRule) and the optional `distill` axis, here only
  required to be sections. Sweep members drop the section (scaling/sweep.py _member_config)."""

  NAME: ClassVar[str] = 'sweep'
  kind: str = 'isoflop'  # 'isoflop' (budgets x sizes, D = C / 6N) | 'grid' (sizes x tokens)
  # | 'width' (widths x tokens at config.model.n_layers: lr transfer)
  budgets: tuple = ()  # isoflop: compute budgets C in FLOPs.
  sizes: tuple = ()  # target parameter counts (grid; isoflop when sizes_per_budget empty).
  sizes_per_budget: tuple = ()  # isoflop: one tuple of target sizes per budget.
  tokens: tuple = ()  # grid, width: token budgets D.
  widths: tuple = ()  # width: d_model values (the family's shape rule at each).
  lrs: tuple = ()  # peak learning rates, one member each (empty: optimizer.lr).
  seeds: tuple = ()  # seeds, one member each (empty: config.seed).
  count: str = 'params'  # N in D = C / 6N: 'params' (total) | 'non_embedding_params'.
  warmup_fraction: float = 0.05
  min_warmup_steps: int = 5
  min_steps: int = 10
  checkpoints_per_member: int = 2
  logs_per_member: int = 5
  evals_per_member: int = 1  # evaluations along training, written to curves.csv (approach 1).
  member: int = -1  # -1: every member in turn; i: only member i (one job per member).
  vmap: int = 0  # > 1: up to this many members that differ only in seed / lr / weight decay
  # train as one vmapped program (train/group.py); 0 or 1: one member at a time.
  lr_width_exponent: float = 0.0  # lr *= (lr_ref_d_model / d_model) ** exponent (0: same lr).
  lr_ref_d_model: int = 0
  family: Any = dataclasses.field(
    default_factory=lambda: dict(FAMILY), metadata={'section': True}
  )  # scaling/family.py
  distill: Any = _field(None, section=True, extra=True)  # a distill axis (scaling/sweep.py).

  def check(self) -> None:
    """The grid's meaning is scaling/sweep.py's; nothing to check here beyond keys and types."""


# --------------------------------------------------------------------------- the whole config


@dataclasses.dataclass(frozen=True)
class Config(_Section):
  """The whole config, parsed: attribute- and item-compatible with the ConfigDict it came from
  for every key consumers read (config.train.global_batch_size, config['mesh'], ...)."""

  seed: int = 0
  init_from: str = ''  # '' | 'hf:/path/to/dir' | '/path/to/our/workdir'
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
  mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
  distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)
  lm_eval: LmEvalConfig = dataclasses.field(default_factory=LmEvalConfig)
  sparsity: SparsityConfig = dataclasses.field(default_factory=SparsityConfig)
  distill: DistillConfig | None = None  # optional sections: base.get_distill_config,
  sweep: SweepConfig | None = None  # base.get_sweep_config.

  OPTIONAL: ClassVar[tuple[str, ...]] = ('distill', 'sweep')

  def __contains__(self, key: str) -> bool:
    return getattr(self, key, None) is not None

  def to_dict(self) -> dict:
    """As the ConfigDict's to_dict: optional sections only when present."""
    return {k: v for k, v in super().to_dict().items() if k not in self.OPTIONAL or v is not None}

  @classmethod
  def make(cls, config: Any) -> 'Config':
    """Parse a full config (ConfigDict or dict): unknown keys, types and choices, section by
    section, each missing key at its default. An instance is returned as it is."""
    if isinstance(config, cls):
      return config
    fields = {f.name: f for f in dataclasses.fields(cls)}
    known = [k for k in fields if k not in cls.OPTIONAL]
    kw = {}
    for key, value in config.items():
      if key not in fields:
        raise ValueError(unknown_key(f'config.{key}', key, known))
      section = _base_type(fields[key].type)
      if key == 'distill' and not isinstance(value, (ml_collections.ConfigDict, dict)):
        raise ValueError(MISSING_DISTILL)
      if section in (int, str):
        check_type(key, value, section)
        kw[key] = value
      else:
        kw[key] = parse_section(section, value, key)
    return cls(**kw)

  def check(self) -> None:
    """Every section's own checks, then those across sections that need no trainer code."""
    check_model(self.model)
    for section in (self.data, self.train, self.optimizer, self.mesh, self.distributed):
      section.check()
    self.lm_eval.check()
    self.sparsity.check()
    if self.sparsity.target > 0 and self.model.lora_rank:
      raise ValueError(
        'config.sparsity.target: sparsity is not supported with LoRA (model.lora_rank)'
      )
    if self.sparsity.target > 0:
      _check_group(self.sparsity.pattern, self.model)
    if self.sweep is not None:
      self.sweep.check()
    m, seq_len = self.model, self.data.seq_len
    if self.distill is not None:
      self.distill.check(m.vocab_size, seq_len)
    if m.loss_chunk < 0 or (m.loss_chunk and seq_len % m.loss_chunk):
      raise ValueError(
        f'config.model.loss_chunk={m.loss_chunk} must be 0 (whole rows) or divide '
        f'config.data.seq_len={seq_len}'
      )
    if seq_len > m.max_len:
      raise ValueError(f'config.data.seq_len={seq_len} exceeds config.model.max_len={m.max_len}')


SECTIONS = {
  'data': DataConfig,
  'train': TrainConfig,
  'optimizer': OptimizerConfig,
  'mesh': MeshConfig,
  'distributed': DistributedConfig,
  'lm_eval': LmEvalConfig,
  'sparsity': SparsityConfig,
}
