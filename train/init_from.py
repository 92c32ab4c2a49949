"""`config.init_from`: start training from existing weights instead of random init."""


def params_fn(config):
  """None for random init, else a function Run -> params placed on the run's param shardings."""
  src = config.init_from
  if not src:
    return None
  raise ValueError(f'config.init_from={src!r}: not supported yet')
