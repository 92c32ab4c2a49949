"""Config validation and derived quantities, computed once and checked before any compile.

`derive(config)` (for this process's devices, or `num_devices` / `process_count`) is the door the
trainers take their config through: its `Derived` (with `.config`, the typed schema.Config, and
`.model`, the ModelConfig) is what loop.run, context.setup, the distillation trainer and store and
train/group.py take (`expect` refuses anything else). It is the single place where head dim, step
count from a token budget, per-device and micro batch sizes are computed, and where the whole
config is checked in one pass: it parses the config into its typed form (configs/schema.py
`Config.make`: keys, types, choices per section), runs each section's own checks and those across
sections (`Config.check`), then those that need the trainer (mixture syntax, the mesh on these
devices, batch divisibility, steps). Every inconsistency raises ValueError naming the field.
"""

import dataclasses
import os
from typing import Any

import jax

from configs import schema
from configs.schema import unknown_key  # noqa: F401 (main.py's message for unknown flags)
from models import attention, quantize
from models.config import ModelConfig
from train import init_from, sharding
from train.data import pipeline

DIVERGENCES = schema.DIVERGENCES  # train/distillation/trainer.py's message


@dataclasses.dataclass(frozen=True)
class Derived:
  config: schema.Config  # the config, parsed: the typed form consumers read.
  model: ModelConfig
  num_steps: int
  tokens_per_step: int
  mesh_shape: dict
  batch_shards: int  # data * fsdp: devices the batch is split over.
  per_device_batch: int  # sequences per device per optimizer step.
  micro_batch: int  # global sequences per microbatch.
  host_batch: int  # sequences this host feeds per step.
  loss_scale: bool  # dynamic loss scaling on (train.loss_scale, model.dtype).
  # config.distill with its defaults filled in (schema.DistillConfig); None without one.
  distill: schema.DistillConfig | None = None


def expect(derived: Any) -> Derived:
  """`derived`, as the trainers take their config: a ConfigDict (or dict, schema.Config) is a
  TypeError saying how to make one."""
  if not isinstance(derived, Derived):
    raise TypeError(
      f'the trainers take a validated config, got {type(derived).__name__}: pass '
      'validation.derive(config)'
    )
  return derived


def distill_section(derived: Derived) -> schema.DistillConfig:
  """derived.distill, or the ValueError of a distillation run whose config has no such section."""
  if derived.distill is None:
    raise ValueError(schema.MISSING_DISTILL)
  return derived.distill


def steps_for(config: schema.Config | schema.Section) -> int:
  """Optimizer steps: train.num_steps, or train.total_tokens rounded down to whole steps."""
  t = config.train
  tokens_per_step = t.global_batch_size * config.data.seq_len
  return t.total_tokens // tokens_per_step if t.total_tokens > 0 else t.num_steps


def schedule_warnings(config: schema.Config | schema.Section, derived: Derived) -> list[str]:
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


def _check_packed(c: schema.Config, sources: list) -> None:
  """What rows packed with supervised examples (jsonl: sources) need: a kernel that takes segment
  ids, and a trainer that reads their loss mask (distillation does not yet)."""
  if not any(s.is_jsonl for s in sources):
    return
  attention.check_packed(c.model.attention_impl)
  if c.distill is not None:
    raise ValueError(
      'config.distill: distillation trains on token rows only; jsonl: (supervised) data in '
      f'config.data.dataset={c.data.dataset!r} is not supported there yet'
    )


def _check_static_scales(m: ModelConfig, src: str) -> None:
  """model.act_scale 'static' (models/act_quant.py) runs on calibrated scales, NaN until set: its
  params come from config.init_from, a W8A8 workdir (or a run of one) whose model has them."""
  if m.act_quant == 'none' or m.act_scale != 'static':
    return
  ours = bool(src) and not src.startswith(('hf:', init_from.PEFT))
  if ours and os.path.exists(os.path.join(src, 'config.json')):
    saved = init_from.workdir_model_config(src)
    if saved.act_quant != 'none' and saved.act_scale == 'static':
      return
  raise ValueError(
    f"config.init_from={src!r}: model.act_scale='static' needs calibrated scales from a W8A8 "
    'workdir (python -m train.tools.compress --workdir=W --out=W8 --quantize=int8 --activations=int8 '
    "--act_scale=static); for QAT from float weights use model.act_scale='tensor' or 'token'"
  )


def derive(
  config: schema.Config | schema.Section,
  num_devices: int | None = None,
  process_count: int | None = None,
) -> Derived:
  """Validate `config` (a ConfigDict, dict or parsed schema.Config) for this many devices and
  processes (None: this process's jax.device_count() / jax.process_count()) and return the
  derived quantities."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  process_count = jax.process_count() if process_count is None else process_count
  c = schema.Config.make(config)
  c.check()
  quantize.check(c.model)  # model.weight_group divides every quantized kernel's fan-in.
  _check_packed(c, pipeline.parse_sources(c.data))  # mixture syntax and weights; jsonl: data.
  if c.model.lora_base_resident == 'quantized':  # QLoRA: its base is a quantized workdir.
    init_from.check_quantized_base(c.init_from)
  _check_static_scales(c.model, c.init_from)
  mesh_shape = sharding.mesh_shape(c.mesh, num_devices)
  t, shards = c.train, mesh_shape['data'] * mesh_shape['fsdp']
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
  if t.eval_batch_size % shards or t.eval_batch_size % process_count:
    raise ValueError(
      f'config.train.eval_batch_size={t.eval_batch_size} is not divisible by data*fsdp '
      f'({shards}) and the number of processes ({process_count})'
    )
  tokens_per_step = t.global_batch_size * c.data.seq_len
  num_steps = steps_for(c)
  if num_steps <= 0:
    raise ValueError(
      f'config.train: no steps to run (num_steps={t.num_steps}, '
      f'total_tokens={t.total_tokens} < one step of {tokens_per_step} tokens)'
    )
  if c.optimizer.warmup_steps > num_steps:
    raise ValueError(
      f'config.optimizer.warmup_steps={c.optimizer.warmup_steps} exceeds the '
      f'{num_steps} training steps'
    )
  if c.sparsity.target > 0 and c.sparsity.end_step > num_steps:
    raise ValueError(
      f'config.sparsity.end_step={c.sparsity.end_step} exceeds the {num_steps} training steps'
    )
  loss_scale = t.loss_scale == 'dynamic' or (t.loss_scale == 'auto' and c.model.dtype == 'float16')
  return Derived(
    config=c,
    model=c.model,
    num_steps=num_steps,
    tokens_per_step=tokens_per_step,
    mesh_shape=mesh_shape,
    batch_shards=shards,
    per_device_batch=t.global_batch_size // shards,
    micro_batch=t.global_batch_size // k,
    host_batch=t.global_batch_size // process_count,
    loss_scale=loss_scale,
    distill=c.distill,
  )
