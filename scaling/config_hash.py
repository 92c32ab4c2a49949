"""A sweep member's identity: the hash of its config's keys that differ from the schema defaults
(so keys added later at their defaults leave it alone), and the frozen rule of older workdirs.

config_hash: the sha256 (first 16 hex digits) of the canonical JSON of {dotted key: value} over the
keys whose value differs from configs/base.py's default (a key the schema lacks always counts),
without PLACEMENT keys, which place a run but do not change its result. Values are canonical:
tuples are lists and integral floats are ints, so 2.0**15 and 32768 hash alike.

legacy_config_hash: the rule sweeps were written under before (the resolved config JSON without
PLACEMENT, and the LEGACY_DEFAULTS keys dropped at their defaults), frozen: keys that are not in
LEGACY_KEYS (added since) are dropped at their schema defaults first, so the old hash of an old
member stays computable whatever keys come later. `recognises` accepts either.
"""

import functools
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import ml_collections

from configs import base

PLACEMENT = (
  'data.data_dir',
  'distributed',
  'mesh',
  'train.async_checkpoint',
  'train.compilation_cache_dir',
  'train.spike_factor',
  'train.spike_window',
)
# Keys whose default changed after members were written under another value: both rules compare
# them with that value, so a member is re-run, not reused, when the key now means something else.
WRITTEN_UNDER = {
  'train.eval_set': ('first', "evaluated on the eval split's first rows (before 'spread')"),
  'model.mup_lr_embedding_width_exp': (1, 'trained with μP embedding lr ∝ 1/width (before 0)'),
}
# Keys that mean nothing unless another key has a value (validation keeps them at their defaults
# otherwise): left out of the hash there, so a changed default moves only the runs it changes.
ONLY_UNDER = {'model.mup_lr_embedding_width_exp': ('model.parametrization', 'mup')}
# Frozen with the legacy rule: never edit (sweeps written before the default-diff hash carry it).
LEGACY_DEFAULTS = {
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
# Frozen with the legacy rule: every key the schema had when it was replaced, by section.
LEGACY_KEYS = frozenset(
  f'{section}.{key}' if section else key
  for section, keys in {
    '': 'init_from seed',
    'data': 'data_dir dataset eval_split max_documents prepared_dir read_threads seq_len text_key '
    'tokenizer train_split',
    'distributed': 'coordinator_address initialize num_processes process_id',
    'lm_eval': 'batch_size include_path limit num_fewshot tasks',
    'mesh': 'data fsdp tensor',
    'model': 'attention_block attention_impl base_d_ff base_d_model base_head_dim d_ff d_model '
    'dtype embed_scale fp8 head_dim init_std loss_chunk max_len mlp n_heads n_kv_heads n_layers '
    'norm norm_eps norm_plus_one out_bias parametrization positions qk_norm qkv_bias remat '
    'rope_factor rope_high_freq_factor rope_low_freq_factor rope_original_max_len rope_scaling '
    'rope_theta scan_layers scan_unroll tie_embeddings use_bias vocab_multiple vocab_size',
    'optimizer': 'b1 b2 decay_fraction eps grad_clip lr min_lr_ratio schedule warmup_steps '
    'wd_exclude weight_decay',
    'train': 'async_checkpoint checkpoint_every eval_batches eval_every global_batch_size '
    'grad_accum_steps keep_checkpoints keep_every log_every loss_scale loss_scale_init '
    'loss_scale_period num_steps spike_factor spike_window total_tokens',
    'distill': 'teacher mode temperature alpha divergence mix_weight top_k logits_dir '
    'logits_dtype prompt_len gen_temperature gen_top_k gen_top_p mask_prompt sequences_dir',
  }.items()
  for key in keys.split()
)


def _flat(d: Mapping[str, Any], prefix: str = '') -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}; an empty section stays a value."""
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping) and v:
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _canonical(v: Any) -> Any:
  """JSON types, with integral floats as ints (1.0 and 1 are the same setting)."""
  if isinstance(v, float) and v.is_integer():
    return int(v)
  if isinstance(v, list | tuple):
    return [_canonical(x) for x in v]
  if isinstance(v, Mapping):
    return {k: _canonical(x) for k, x in v.items()}
  return v


def _json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


@functools.cache
def _defaults() -> dict:
  """Every schema key's canonical default, the optional distill section's included."""
  d = _json(base.get_config())
  d['distill'] = _json(base.get_distill_config())
  return {
    **{k: _canonical(v) for k, v in _flat(d).items()},
    **{k: v for k, (v, _) in WRITTEN_UNDER.items()},
  }


def _inert(flat: Mapping[str, Any], defaults: Mapping[str, Any]) -> set:
  """The ONLY_UNDER keys that mean nothing in this config."""
  return {k for k, (key, value) in ONLY_UNDER.items() if flat.get(key, defaults.get(key)) != value}


def _placement(key: str) -> bool:
  return any(key == p or key.startswith(p + '.') for p in PLACEMENT)


def _digest(d: Mapping[str, Any]) -> str:
  return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def config_hash(config: ml_collections.ConfigDict) -> str:
  """The hash of the keys that differ from the schema defaults, placement aside (docstring)."""
  defaults = _defaults()
  flat = {k: _canonical(v) for k, v in _flat(_json(config)).items() if not _placement(k)}
  inert = _inert(flat, defaults)
  return _digest(
    {k: v for k, v in flat.items() if k not in inert and (k not in defaults or v != defaults[k])}
  )


def _drop(d: dict, dotted: str) -> None:
  head, _, rest = dotted.partition('.')
  if head in d:
    if rest:
      _drop(d[head], rest)
    else:
      del d[head]


def legacy_config_hash(config: ml_collections.ConfigDict) -> str:
  """The frozen rule of sweeps written before config_hash (module docstring)."""
  d, defaults = _json(config), _defaults()
  flat = {k: _canonical(v) for k, v in _flat(d).items()}
  inert = _inert(flat, defaults)
  for key, value in flat.items():
    if key not in LEGACY_KEYS and (key in inert or (key in defaults and value == defaults[key])):
      _drop(d, key)  # added since the rule was frozen, at its default (or meaning nothing here).
  legacy_sections = {k.split('.')[0] for k in LEGACY_KEYS}
  for section in [k for k, v in d.items() if v == {} and k not in legacy_sections]:
    del d[section]  # a section added since, all at its defaults (e.g. sparsity).
  for key in PLACEMENT:
    _drop(d, key)
  for key, default in LEGACY_DEFAULTS.items():
    section, name = key.split('.')
    if d.get(section, {}).get(name, default) == default:
      _drop(d, key)
  return _digest(d)


def written_under(config: ml_collections.ConfigDict, stored: str | None) -> tuple | None:
  """(key, old value, what it meant) of the WRITTEN_UNDER key whose old value makes `stored`
  this config's hash (a member written before that default changed), or None."""
  for key, (value, why) in WRITTEN_UNDER.items():
    old = ml_collections.ConfigDict(config.to_dict())
    section, name = key.split('.')
    old[section][name] = type(old[section][name])(value)
    if recognises(old, stored):
      return key, value, why
  return None


def recognises(config: ml_collections.ConfigDict, stored: str | None) -> bool:
  """Whether a hash stored in a member directory is this config's, under either rule."""
  return stored is not None and stored in (config_hash(config), legacy_config_hash(config))
