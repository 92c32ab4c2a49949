"""Parameter counts and FLOPs per token of a config (the conventions and formulas are
models/count.py's), with the training tokens and FLOPs of a training config; the command line.

  python -m scaling.count --config=configs/gpt2.py:124m [--config.model.n_layers=6]
"""

import json

import ml_collections
from absl import flags
from ml_collections import config_flags

from models.count import (
  ConfigLike,
  checked_param_counts,
  flop_counts,
  model_config,
  param_counts,
  pytree_param_counts,
)
from train import cli, validation

__all__ = (
  'checked_param_counts',
  'count',
  'flop_counts',
  'param_counts',
  'pytree_param_counts',
  'training_tokens',
)


def training_tokens(config: ml_collections.ConfigDict) -> int:
  """Tokens a config trains on: num_steps (or total_tokens rounded down to whole steps) × B·T."""
  return int(validation.steps_for(config) * config.train.global_batch_size * config.data.seq_len)


def count(config: ConfigLike, seq_len: int | None = None, check: bool = True) -> dict:
  """Parameter counts (checked against the pytree unless check=False) and FLOPs per token."""
  out = dict(checked_param_counts(config) if check else param_counts(config))
  out['tied_embeddings'] = bool(model_config(config).tie_embeddings)
  out.update(flop_counts(config, seq_len))
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
