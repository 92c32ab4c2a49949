"""AdamW with warmup + (cosine | linear | constant | warmup-stable-decay), clipping and a decay mask."""
import jax
import optax


def lr_schedule(opt, num_steps: int) -> optax.Schedule:
  """Learning rate per optimizer step, from the `config.optimizer` section."""
  peak, warmup = opt.lr, opt.warmup_steps
  floor = peak * opt.min_lr_ratio
  warm = optax.linear_schedule(0.0, peak, max(warmup, 1))
  rest = max(num_steps - warmup, 1)
  if opt.schedule == 'cosine':
    after = optax.cosine_decay_schedule(peak, rest, alpha=opt.min_lr_ratio)
  elif opt.schedule == 'linear':
    after = optax.linear_schedule(peak, floor, rest)
  elif opt.schedule == 'constant':
    after = optax.constant_schedule(peak)
  elif opt.schedule == 'wsd':
    decay = max(int(round(opt.decay_fraction * num_steps)), 1)
    stable = max(rest - decay, 0)
    after = optax.join_schedules(
        [optax.constant_schedule(peak), optax.linear_schedule(peak, floor, decay)], [stable])
  else:
    raise ValueError(f'config.optimizer.schedule: unknown {opt.schedule!r}')
  return optax.join_schedules([warm, after], [warmup])


def decay_mask(params, exclude):
  """True where weight decay applies: a param is excluded when one of `exclude` is a whole
  '_'-separated word of a name on its path (e.g. 'norm' in 'attn_norm', 'bias' in 'query_bias')."""
  exclude = set(exclude)

  def keep(path, _):
    words = {w for k in path for w in str(getattr(k, 'key', k)).split('_')}
    return not (words & exclude)

  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(opt, num_steps: int) -> optax.GradientTransformation:
  chain = []
  if opt.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(opt.grad_clip))
  chain.append(optax.adamw(lr_schedule(opt, num_steps), b1=opt.b1, b2=opt.b2, eps=opt.eps,
                           weight_decay=opt.weight_decay,
                           mask=lambda p: decay_mask(p, opt.wd_exclude)))
  return optax.chain(*chain)
