"""Evaluators: what the loop measures on the params at every eval step.

An evaluator is any object with `start(run, task)` (bind to the run before its first step: mesh,
tokenizer, frozen inputs; compile nothing) and `__call__(params) -> {name: float}`. The loop runs
the task's eval loss first, then those its caller passes (e.g. lm-eval tasks,
train/tools/harness.py).
"""

from typing import Protocol

import jax
import jax.numpy as jnp

from models.config import PyTree
from train import context


class Evaluator(Protocol):
  """What the loop calls at its eval cadence."""

  def start(self, r: context.Run, task: context.Task) -> None: ...

  def __call__(self, params: PyTree) -> dict[str, float]: ...


def evaluate(r: context.Run, eval_step: object, params: PyTree, frozen: tuple) -> dict:
  """Mean eval loss (and other per-token sums) over `eval_batches` fixed validation batches of
  each data source -> eval/loss, eval/bits_per_byte (and eval/<source>/... for a mixture)."""
  means = {}
  for name, source in r.eval_ds.sources.items():
    total = None
    for i in range(r.config.train.eval_batches):
      sums = eval_step(params, context.global_batch(r, source.eval_arrays(i)), *frozen)
      total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    total = jax.device_get(total)
    if not float(total['tokens']):  # a mean over nothing is no loss (0.0 would look like the best).
      raise ValueError(
        f'the eval batches of data source {name!r} hold no scored token (every completion cut '
        f'off at config.data.seq_len={r.config.data.seq_len}?); raise data.seq_len or '
        'train.eval_batches'
      )
    n = float(total['tokens'])
    means[name] = {k: float(v) / n for k, v in total.items() if k != 'tokens'}
  return r.eval_ds.metrics(means)


class EvalLoss:
  """The task's eval loss (its `eval_loss_fn`, else `loss_fn`) on the fixed validation batches."""

  def __init__(self) -> None:
    self._run, self._step, self._frozen = None, None, ()

  def start(self, r: context.Run, task: context.Task) -> None:
    self._run, self._frozen = r, task.frozen
    self._step = context.jit_eval_step(r, task.eval_loss_fn or task.loss_fn, task.frozen_shardings)

  def __call__(self, params: PyTree) -> dict[str, float]:
    return evaluate(self._run, self._step, params, self._frozen)
