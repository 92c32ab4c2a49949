"""Entry point: `python main.py --config=configs/default.py[:arg] [--config.a.b=v] --workdir=W`.

Wires the config to the right trainer: plain LM training, distillation (a `distill`
section) or a scaling sweep (a `sweep` section). Reruns resume from `--workdir`.
"""
import json
import logging
import os

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path[:arg]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and logs.')
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries(logging.Filter):
  """Drop orbax's per-save INFO chatter from the console; warnings still pass."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  del argv
  for handler in logging.getLogger().handlers:
    handler.addFilter(_QuietLibraries())
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  config, workdir = _CONFIG.value, _WORKDIR.value
  from train import distributed  # JAX must not be touched before distributed init.
  distributed.initialize(config.distributed)
  import jax
  logging.info('JAX %s on %d %s device(s), %d process(es)', jax.__version__, jax.device_count(),
               jax.devices()[0].device_kind, jax.process_count())
  if 'sweep' in config:
    from scaling import sweep
    result = sweep.run(config, workdir)
  elif 'distill' in config:
    from train import distill
    result = distill.run(config, workdir)
  else:
    from train import init_from, loop
    result = loop.run(config, workdir, init_params_fn=init_from.params_fn(config))
  if jax.process_index() == 0:
    print(json.dumps(result, indent=1, sort_keys=True), flush=True)


if __name__ == '__main__':
  app.run(main)
