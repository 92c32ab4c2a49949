"""μP width transfer at a horizon where width is used: 4 layers, head dim 16, widths 32
to 256 (8x), 7 peak lrs a factor 2 apart, 2 seeds, 1,500 steps of 16 x 64 bytes = 56 members per
parametrization. The shared base of the other mup_*.py studies (mup_base_search, mup_depth,
mup_horizon).

  python -m scaling.parallel --groups=2 --config=configs/sweeps/mup_width.py:mup \
      --workdir=workdirs/mup_width/mup     # likewise :sp and :umup

  (or python main.py --config=configs/sweeps/mup_width.py:mup --workdir=workdirs/mup_width/mup)

Plan (python -m scaling.sweep --config=configs/sweeps/mup_width.py:mup, same for sp/umup): 56
members, 5.62e14 training FLOPs (6·N·D). Estimated CPU time from 60- and 120-step smoke members on
the shared 2-core machine (CPU-s per step: d256 ~0.5, d128 ~0.2, d64 ~0.08, d32 ~0.04; ~25 s
start-up and compilation per member): ~22 min per (lr, seed) over the 4 widths, ~5 CPU-hours per
parametrization (~2.6 h wall with --groups=2), ~15 CPU-hours for all three: far over the issue's
2 CPU-hour budget. Widths 32-128 only (WIDTHS[:3]) cost ~2 CPU-hours per parametrization; the
full range wants the GPU or fewer lrs once the base search has placed the optimum.
"""

import ml_collections

from configs import base, default

WIDTHS = (32, 64, 128, 256)
SEEDS = (0, 1)
N_LAYERS = 4
HEAD_DIM = 16
STEPS = 1500
TOKENS_PER_STEP = 16 * 64
# 7 peak lrs a factor 2 apart, centred near each parametrization's optimum of docs/mup.md's
# 100-step sweep, one grid step lower (longer runs, twice the depth).
LRS = {
  'sp': tuple(2.0**e for e in range(-12, -5)),  # 2.4e-4 .. 1.6e-2
  'mup': tuple(2.0**e for e in range(-10, -3)),  # 9.8e-4 .. 6.3e-2
  'umup': tuple(2.0**e for e in range(-3, 4)),  # 0.125 .. 8
}


# The CPU design (the 2-core machine cannot hold the grid above in the budget): 1,000 steps,
# seed 0, widths 32, 128, 256. At the base width every lr of LRS; wider, by rule: μP and u-μP the
# lr carried from d32's optimum and its two neighbours; SP at d128 4 lrs from d32's optimum down
# (its optimum falls with width), at d256 the optimum extrapolated from d32 and d128 (one step
# per doubling: 2^-9) and its two neighbours. A grid is extended by one lr where its optimum lies
# on its edge (SP d256: best at 2^-10, so 2^-11; μP d128: 2^-6 and 2^-5 tied within 0.001, d256:
# best at 2^-5, so 2^-4). u-μP at d256: the carried lr only (the CPU budget). Diagnostics of
# μP's gap to SP: docs/mup.md.
CPU_STEPS = 1000
CPU_LRS = {  # parametrization -> width -> exponents of 2; d32 optima (1,000 steps): all at 2^-6
  # for SP and μP, 2^-1 for u-μP (SP's first grid, 2^-12..2^-6, was extended: optimum on its edge).
  'sp': {32: tuple(range(-12, -2)), 128: tuple(range(-9, -5)), 256: (-11, -10, -9, -8)},
  'mup': {32: tuple(range(-10, -3)), 128: (-7, -6, -5, -4), 256: (-7, -6, -5, -4)},
  'umup': {32: tuple(range(-3, 4)), 128: (-2, -1, 0), 256: (-2, -1, 0)},
}


def study_config(
  parametrization: str,
  widths: tuple = WIDTHS,
  tokens: tuple = (STEPS * TOKENS_PER_STEP,),
  lrs: tuple | None = None,
  seeds: tuple = SEEDS,
  **model: object,
) -> ml_collections.ConfigDict:
  """A width sweep of the byte-level GPT-2 family (tied, 4 layers, head dim 16) at μP's base
  width widths[0], cosine schedule, AdamW (b2 0.95, wd 0.1), unclipped; `model` overrides."""
  if parametrization not in LRS:
    raise ValueError(f'<arg> must start with one of {tuple(LRS)}, got {parametrization!r}')
  c = default.get_config()
  c.model.update(vocab_size=257, max_len=64, n_layers=N_LAYERS, dtype='float32')
  c.model.update(parametrization=parametrization)
  c.model.base_d_model = widths[0] if parametrization == 'mup' else 0
  if (
    parametrization == 'mup'
  ):  # these studies ran with μP's constant embedding lr (the old default).
    c.model.mup_lr_embedding_width_exp = 0.0
  c.model.update(model)
  c.data.update(seq_len=64, tokenizer='byte', dataset='stdlib_corpus')
  c.train.update(global_batch_size=16, grad_accum_steps=1, eval_batches=16, async_checkpoint=False)
  c.optimizer.update(
    schedule='cosine', min_lr_ratio=0.1, b1=0.9, b2=0.95, weight_decay=0.1, grad_clip=0.0
  )
  c.sweep = base.get_sweep_config(
    kind='width',
    widths=widths,
    tokens=tokens,
    lrs=LRS[parametrization] if lrs is None else lrs,
    seeds=seeds,
    warmup_fraction=0.05,
    min_warmup_steps=10,
    min_steps=10,
    checkpoints_per_member=1,
    logs_per_member=5,
    evals_per_member=5,
  )
  c.sweep.family = ml_collections.ConfigDict(
    {'family': 'gpt2', 'aspect': 32.0, 'head_dim': HEAD_DIM, 'tolerance': 0.1}
  )
  return c


def get_config(arg: str = 'mup') -> ml_collections.ConfigDict:
  """`:<p>` the full design; `:<p>,<width>` one width of the CPU design (CPU_LRS, 1,000 steps)."""
  parametrization, _, width = arg.partition(',')
  if not width:
    return study_config(parametrization)
  if parametrization not in CPU_LRS or int(width) not in CPU_LRS[parametrization]:
    raise ValueError(f'mup_width.py:<p>,<width>: one of {_cpu_args()}, got {arg!r}')
  exponents = CPU_LRS[parametrization][int(width)]
  c = study_config(
    parametrization,
    tokens=(CPU_STEPS * TOKENS_PER_STEP,),
    lrs=tuple(2.0**e for e in exponents),
    seeds=(0,),  # second seeds: --config.sweep.seeds (docs/mup.md).
  )
  c.sweep.widths = (int(width),)  # μP's base stays WIDTHS[0] (set by study_config above).
  return c


def _cpu_args() -> list:
  return [f'{p},{w}' for p, ws in CPU_LRS.items() for w in ws]
