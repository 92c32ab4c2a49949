"""Our train step against HuggingFace GPT-2 on PyTorch at the same shape, interleaved.

  python -m bench.compare                       # all shapes, fp32, AdamW, T=256, batch 12
  python -m bench.compare --shapes=10m --rounds=7 --steps_per_round=3
  python -m bench.compare --shapes=1m,10m --before   # plus the pre-#13 step, same rounds

Each round times `--steps_per_round` steps of ours, then of HF (SDPA attention, torch AdamW with the same
betas, eps, weight decay and global-norm clipping); the ratio is taken per round, so load from
other processes affects both sides alike. Prints a markdown table: median tokens/s of each, the
median ratio with its min-max spread, and our model FLOP/s (models/count.py convention) as a
share of a measured 2048^3 float32 matmul on the same device (the ceiling the step could reach).
"""

import os
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from bench.throughput import Step
from configs import base
from models import backend, count

# name -> (n_layers, d_model, n_heads): GPT-2 blocks (learned positions, layernorm, GELU, tied),
# byte vocabulary (257), d_ff = 4 d_model.
SHAPES = {'1m': (4, 144, 4), '10m': (6, 384, 6), '50m': (8, 704, 11), '100m': (12, 832, 13)}

_SHAPES = flags.DEFINE_list('shapes', list(SHAPES), f'subset of {list(SHAPES)}')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'interleaved rounds')
_STEPS = flags.DEFINE_integer('steps_per_round', 3, 'timed steps per side per round')
_BATCH = flags.DEFINE_integer('batch', 12, 'sequences per step')
_SEQ = flags.DEFINE_integer('seq_len', 256, 'tokens per sequence')
_BEFORE = flags.DEFINE_bool(
  'before',
  False,
  'also time, in the same rounds, our step as it was before the per-backend defaults '
  "(model.attention_impl='xla', model.scan_unroll=1): a before/after column",
)
BEFORE = {'attention_impl': 'xla', 'scan_unroll': 1}


def our_config(shape: str, batch: int, seq_len: int):
  n_layers, d, heads = SHAPES[shape]
  c = base.get_config()
  c.model.update(d_model=d, n_layers=n_layers, n_heads=heads, d_ff=4 * d, max_len=seq_len)
  c.data.seq_len = seq_len
  c.train.update(global_batch_size=batch, num_steps=1000)
  c.optimizer.update(
    lr=3e-4, warmup_steps=10, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0
  )
  return c


class HFStep:
  """transformers GPT2LMHeadModel: forward with labels, backward, clip, AdamW step."""

  def __init__(self, shape: str, batch: int, seq_len: int):
    # Lazy: heavy optional libraries, only for the HF side of the comparison.
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    n_layers, d, heads = SHAPES[shape]
    cfg = transformers.GPT2Config(
      vocab_size=257,
      n_positions=seq_len,
      n_embd=d,
      n_layer=n_layers,
      n_head=heads,
      n_inner=4 * d,
      resid_pdrop=0.0,
      embd_pdrop=0.0,
      attn_pdrop=0.0,
    )
    cfg._attn_implementation = 'sdpa'
    torch.manual_seed(0)
    self.torch = torch
    self.model = transformers.GPT2LMHeadModel(cfg).train()
    assert self.model.config._attn_implementation == 'sdpa'
    decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2 and 'wpe' not in n]
    rest = [p for n, p in self.model.named_parameters() if not (p.ndim >= 2 and 'wpe' not in n)]
    self.opt = torch.optim.AdamW(
      [{'params': decay, 'weight_decay': 0.1}, {'params': rest, 'weight_decay': 0.0}],
      lr=3e-4,
      betas=(0.9, 0.95),
      eps=1e-8,
    )
    self.tokens = torch.randint(0, 257, (batch, seq_len + 1))
    self.tokens_per_step = batch * seq_len

  def __call__(self, n: int) -> float:
    torch = self.torch
    start = time.perf_counter()
    for _ in range(n):
      loss = self.model(self.tokens[:, :-1], labels=self.tokens[:, :-1]).loss
      loss.backward()
      torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
      self.opt.step()
      self.opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / n


def matmul_flops_per_s(n: int = 2048, reps: int = 10) -> float:
  """float32 n^3 matmul FLOP/s on the default device (compiled, best of 3)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  jax.block_until_ready(f(a))
  best = float('inf')
  for _ in range(3):
    start = time.perf_counter()
    for _ in range(reps):
      out = f(a)
    jax.block_until_ready(out)
    best = min(best, (time.perf_counter() - start) / reps)
  return 2 * n**3 / best


def _spread(ratios) -> str:
  return f'{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})'


def main(argv):
  del argv
  os.environ.update(backend.xla_env())  # the trainer's per-backend flags (main.py sets them too).
  ceiling = matmul_flops_per_s()
  print(
    f'device {jax.devices()[0].device_kind}, {os.cpu_count()} CPU threads; 2048^3 float32 '
    f'matmul: {ceiling / 1e9:.1f} GFLOP/s; fp32, AdamW, T={_SEQ.value}, batch {_BATCH.value}, '
    f'{_ROUNDS.value} rounds x {_STEPS.value} steps each side\n'
  )
  before = ' before / HF |' if _BEFORE.value else ''
  print(
    '| shape | params | ours tokens/s | HF tokens/s | ours / HF (median, min-max) '
    f'| model FLOP/s / matmul |{before}'
  )
  print('|---|---|---|---|---|---|' + ('---|' if before else ''))
  for shape in _SHAPES.value:
    config = our_config(shape, _BATCH.value, _SEQ.value)
    ours, theirs = Step(config), HFStep(shape, _BATCH.value, _SEQ.value)
    ours(2), theirs(2)
    old = None
    if _BEFORE.value:
      config.model.update(BEFORE)
      old = Step(config)
      old(2)
    ours_tps, hf_tps, old_tps = [], [], []
    for _ in range(_ROUNDS.value):
      ours_tps.append(ours.tokens_per_step / ours(_STEPS.value))
      hf_tps.append(theirs.tokens_per_step / theirs(_STEPS.value))
      if old:
        old_tps.append(old.tokens_per_step / old(_STEPS.value))
    ratios = [a / b for a, b in zip(ours_tps, hf_tps)]
    old_col = f' {_spread([a / b for a, b in zip(old_tps, hf_tps)])} |' if old else ''
    params = sum(p.numel() for p in theirs.model.parameters())
    flop_share = (
      statistics.median(ours_tps) * count.train_flops_per_token(ours.model, _SEQ.value) / ceiling
    )
    print(
      f'| {shape} ({SHAPES[shape][0]}x{SHAPES[shape][1]}) | {params / 1e6:.2f}M '
      f'| {statistics.median(ours_tps):,.0f} | {statistics.median(hf_tps):,.0f} '
      f'| {_spread(ratios)} | {100 * flop_share:.0f} % |{old_col}',
      flush=True,
    )


if __name__ == '__main__':
  app.run(main)
