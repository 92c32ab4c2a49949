"""A training config's budget: its parameter counts and FLOPs per token (the conventions and formulas are
models/count.py's, which takes a ModelConfig; here a full config, a section or a dict is parsed
once), with the training tokens and FLOPs of a training config; the command line.

  python -m scaling.budget --config=configs/gpt2.py:124m [--config.model.n_layers=6]
"""

import json
from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from models import count as count_lib
from models.config import ModelConfig
from train import cli, validation

__all__ = (
  'checked_param_counts',
  'count',
  'flop_counts',
  'param_counts',
  'pytree_param_counts',
  'training_tokens',
)

# A full config (with .model), a model section, a dict or a ModelConfig.
ConfigLike = ModelConfig | ml_collections.ConfigDict | Mapping[str, Any]


def model_config(config: ConfigLike) -> ModelConfig:
  """The ModelConfig of a full config (with .model), a model section, a dict or a ModelConfig."""
  if isinstance(config, ModelConfig):
    return config
  if hasattr(config, 'model') or (isinstance(config, dict) and 'model' in config):
    config = config['model']
  return ModelConfig.make(config)


def _seq_len(config: ConfigLike, seq_len: int | None) -> int | None:
  """seq_len, else a full config's data.seq_len (None: models/count.py's default, max_len)."""
  if seq_len is not None:
    return int(seq_len)
  try:
    return int(config['data']['seq_len'])
  except (KeyError, TypeError, AttributeError):
    return None


def param_counts(config: ConfigLike) -> dict:
  """models/count.py's param_counts of any config form (model_config)."""
  return count_lib.param_counts(model_config(config))


def pytree_param_counts(config: ConfigLike) -> dict:
  """models/count.py's pytree_param_counts of any config form."""
  return count_lib.pytree_param_counts(model_config(config))


def checked_param_counts(config: ConfigLike) -> dict:
  """models/count.py's checked_param_counts of any config form."""
  return count_lib.checked_param_counts(model_config(config))


def flop_counts(config: ConfigLike, seq_len: int | None = None) -> dict:
  """models/count.py's flop_counts at seq_len (default: data.seq_len of a full config)."""
  return count_lib.flop_counts(model_config(config), _seq_len(config, seq_len))


def training_tokens(config: ml_collections.ConfigDict) -> int:
  """Tokens a config trains on: num_steps (or total_tokens rounded down to whole steps) × B·T."""
  return int(validation.steps_for(config) * config.train.global_batch_size * config.data.seq_len)


def count(config: ConfigLike, seq_len: int | None = None, check: bool = True) -> dict:
  """Parameter counts (checked against the pytree unless check=False) and FLOPs per token."""
  m = model_config(config)
  out = dict(count_lib.checked_param_counts(m) if check else count_lib.param_counts(m))
  out['tied_embeddings'] = bool(m.tie_embeddings)
  out.update(count_lib.flop_counts(m, _seq_len(config, seq_len)))
  if hasattr(config, 'train') and hasattr(config, 'data'):
    tokens = training_tokens(config)
    out['train_tokens'] = tokens
    out['train_flops_6n'] = out['flops_per_token_6n'] * tokens
    out['train_flops_chinchilla'] = out['flops_per_token_chinchilla'] * tokens
  return out


def main(argv: list[str]) -> None:
  del argv
  config = _CONFIG.value
  out = count(config, check=not _NO_CHECK.value)
  out['pytree_checked'] = not _NO_CHECK.value
  print(json.dumps(out, indent=1))


if __name__ == '__main__':
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path[:arg]).')
  _NO_CHECK = flags.DEFINE_bool('no_check', False, 'Skip the pytree cross-check (formula only).')
  flags.mark_flags_as_required(['config'])
  cli.run(main)
