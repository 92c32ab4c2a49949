"""Divergence guard: stop a run whose loss spikes or whose gradients blow up, before it checkpoints.

Checked on every step whose metrics the loop reads (log, eval and checkpoint steps, so every
checkpointed state passes it). A spike is a loss above `factor` times the running median of
the last `window` checked losses (before any, of ln(vocab_size), the loss of a uniform guess).
"""

import collections
import math
import statistics


class Diverged(FloatingPointError):
  """The run diverged at a step; nothing from that step on was checkpointed."""


class Guard:
  """Raises Diverged from `check` on a non-finite loss or grad norm, or a loss spike."""

  def __init__(self, factor: float, window: int, vocab_size: int) -> None:
    self.factor = factor
    self.recent = collections.deque(maxlen=max(window, 1))
    self.uniform_loss = math.log(vocab_size)

  def check(self, step: int, m: dict, workdir: str, last_checkpoint: int | None) -> None:
    kept = (
      f'the last good checkpoint (step {last_checkpoint}) in {workdir} is kept'
      if last_checkpoint
      else f'no checkpoint of this run in {workdir} was written'
    )
    loss = m['train/loss']
    skipped = m.get('train/skipped', 0.0) > 0  # float16 loss scaling skips overflowing steps.
    if not math.isfinite(loss):
      raise Diverged(f'train/loss is {loss} at step {step}; {kept}')
    if not skipped and not math.isfinite(m.get('train/grad_norm', 0.0)):
      raise Diverged(f'train/grad_norm is {m["train/grad_norm"]} at step {step}; {kept}')
    if self.factor > 0:
      ref = statistics.median(self.recent) if self.recent else self.uniform_loss
      if loss > self.factor * ref:
        raise Diverged(
          f'train/loss {loss:.4g} at step {step} is above {self.factor:g} x its '
          f'running median {ref:.4g} (config.train.spike_factor); {kept}'
        )
    self.recent.append(loss)
