"""Base config: every key the trainer understands, with its default.

Built from the typed schema: models/config.py (ModelConfig) for the model section,
configs/schema.py for the others (keys, types, defaults and their documentation). Not run
directly; the runnable configs (default.py, gpt2.py, llama.py, ...) start from
`base.get_config()` and change what they need. Any key not in the schema is rejected by
validation.
"""

from typing import Any

import ml_collections

from configs import schema
from models import config as model_config


def get_model_config() -> ml_collections.ConfigDict:
  """Model section: its fields, defaults and allowed values are models/config.py's ModelConfig."""
  return model_config.config_dict()


def get_distill_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The `distill` section (train/distillation/trainer.py): teacher, temperature, mix, divergence,
  top-k, sequence-KD generation; keys, defaults and documentation in configs/schema.py
  DistillConfig."""
  return schema.DistillConfig.config_dict(**overrides)


def get_sweep_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The `sweep` section (scaling/sweep.py): a grid of members around a base training config;
  keys, defaults and documentation in configs/schema.py SweepConfig."""
  return schema.SweepConfig.config_dict(**overrides)


def get_config() -> ml_collections.ConfigDict:
  """Every section at its defaults (configs/schema.py Config); distill and sweep are optional."""
  c = ml_collections.ConfigDict()
  c.seed = schema.Config.seed
  c.init_from = schema.Config.init_from  # '' | 'hf:/path/to/dir' | '/path/to/our/workdir'
  c.model = get_model_config()
  for name, section in schema.SECTIONS.items():
    c[name] = section.config_dict()
  return c
