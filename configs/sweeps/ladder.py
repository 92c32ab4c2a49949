"""The prediction ladder (issue 23): 7 GPT-2 sizes, 75K to 651K parameters (57K to 608K without
embeddings), each at 5, 10 and 20 tokens per parameter (WSD cooldown branches of one trunk), two
sizes also at 40 and 80; fit on the small sizes and predict the final loss of the large ones.

  bash configs/sweeps/ladder.sh workdirs/ladder        # every variant below, in its order
  python -m scaling.parallel --groups=2 --config=configs/sweeps/ladder.py:6 --workdir=workdirs/ladder
  python -m scaling.validate --results=docs/scaling/ladder_results.csv \
      --curves=docs/scaling/ladder_curves.csv --laws=chinchilla,kaplan,compute,curve --rollout

Variants (one workdir holds them all; a variant's members are its own, named by size, tokens, lr
and seed):
  :<rung>        rung 0-6 at the rule's lr, seed 0; rungs in LONG also at 40 and 80 tokens/param
  :<rung>,scan   the rule checked: the lr one factor 2 below and above (rungs in SCAN)
  :<rung>,seed   the noise floor: seed 1 at the rule's lr (rungs in SEEDS)
  :small         below the ladder, not part of its fit: 2 x 32 (37,792 parameters, μP's base
                 shape) at 5, 10 and 20 tokens/param, the distillation law's smallest student
                 (scaling/studies/distillation.py)

The rule, written before the run (docs/scaling.md has the reasons):
  shapes     byte-level GPT-2 (tied, learned positions), head dim 16, d_model / n_layers 21-32,
             d_model multiples of 16 (RUNGS), seq 128; N for token budgets is the total count.
  tokens     D = k·N for k in TOKENS_PER_PARAM (Chinchilla's 20 the largest), one trunk per (size,
             lr, seed) and a 20 % linear cooldown branched from it for each k (sweep kind 'wsd').
  batch      8 x 128 bytes below 200K parameters, 16 x 128 above (>= 1,400 steps at k = 20).
  eval       the same 16 x 16 rows of 128 bytes for every rung (eval_batch_size 16 where the batch
             is 8: the eval set is eval_batches x eval_batch_size rows, and the first ladder, which
             evaluated rungs 0-2 on 8 x 16 rows, mixed two eval sets; docs/scaling.md).
  warmup     N tokens (Porian et al. 2024), i.e. 0.2 of the smallest budget (k = 5).
  lr         μP (issue 22's tuned defaults: α_out 4, embedding lr ∝ 1/width) from the base shape
             d_model 32, d_ff 128, head dim 16, at the base lr 2^-7: the width/depth-stable optimum
             of docs/mup.md is 2^-6 at 1-4M tokens, and its horizon study moves it to 2^-7 at ~4,000
             steps, the ladder's range (1,500-6,400 steps). A first ladder at 2^-6 confirmed it: its
             scan at rungs 0 and 1 put 2^-7 below 2^-6 by 0.014-0.023 nats at 10 and 20 tokens/param.
             AdamW b1 0.9, b2 0.95, wd 0.1, unclipped, WSD to 0.1x.
"""

import ml_collections

from configs import base, default

RUNGS = ((2, 48), (2, 64), (3, 64), (3, 80), (3, 96), (4, 96), (4, 112))  # (n_layers, d_model)
# Total parameters of each rung's shape (python -m scaling.family cannot pin a shape, so the
# targets are the shapes' exact counts and the family rule is told each rung's aspect ratio).
PARAMS = (75120, 124736, 174720, 264480, 372672, 484512, 651280)
TOKENS_PER_PARAM = (5, 10, 20)
LONG = {0: (40, 80), 1: (40, 80)}  # 4x Chinchilla at the two smallest rungs.
SCAN = (0, 1, 2, 3)  # rungs whose lr is checked by a 3-point scan (the fitted sizes).
SEEDS = (1, 3)  # rungs trained again at seed 1 (the noise floor).
BASE_LR = 2.0**-7
SEQ_LEN = 128
EVAL_BATCH = 16


def batch_size(params: int) -> int:
  """Sequences per step by the rule: 8 below 200K parameters, 16 above."""
  return 8 if params < 200_000 else 16


SMALL = ((2, 32), 37792)  # `:small`: shape and exact parameter count.


def rung_config(rung: int, lrs: tuple, seeds: tuple, tokens_per_param: tuple):
  """One rung's sweep: its shape, token budgets, batch, warmup and lrs (see the module doc)."""
  return shape_config(RUNGS[rung], PARAMS[rung], lrs, seeds, tokens_per_param)


def shape_config(shape: tuple, params: int, lrs: tuple, seeds: tuple, tokens_per_param: tuple):
  """The sweep of one (n_layers, d_model) shape of `params` parameters by the ladder's rule."""
  n_layers, d_model = shape
  c = default.get_config()
  c.model.update(vocab_size=257, max_len=SEQ_LEN, n_layers=n_layers, dtype='float32')
  c.model.update(parametrization='mup', base_d_model=32, base_d_ff=128, base_head_dim=16)
  c.model.mup_lr_embedding_width_exp = (
    1.0  # the ladders ran with the 1/width embedding lr (then the default).
  )
  c.data.update(seq_len=SEQ_LEN, tokenizer='byte', dataset='stdlib_corpus')
  c.train.update(
    global_batch_size=batch_size(params),
    grad_accum_steps=1,
    eval_batches=16,
    async_checkpoint=False,
  )
  if batch_size(params) != EVAL_BATCH:  # Set only where it differs: the default is the batch.
    c.train.eval_batch_size = EVAL_BATCH
  c.optimizer.update(
    lr=BASE_LR,
    schedule='wsd',
    decay_fraction=0.2,
    min_lr_ratio=0.1,
    b1=0.9,
    b2=0.95,
    weight_decay=0.1,
    grad_clip=0.0,
  )
  c.sweep = base.get_sweep_config(
    kind='wsd',
    sizes=(params,),
    tokens=tuple(k * params for k in tokens_per_param),
    lrs=lrs,
    seeds=seeds,
    warmup_fraction=0.2,  # of the smallest budget (5 N): N tokens.
    min_warmup_steps=10,
    min_steps=10,
    checkpoints_per_member=1,
    logs_per_member=10,
    evals_per_member=24,
  )
  c.sweep.family = ml_collections.ConfigDict(
    {'family': 'gpt2', 'aspect': d_model / n_layers, 'head_dim': 16, 'tolerance': 0.001}
  )
  return c


def get_config(arg: str = '0') -> ml_collections.ConfigDict:
  """`:<rung>`, `:<rung>,scan`, `:<rung>,seed` or `:small` (module doc)."""
  if arg == 'small':
    return shape_config(*SMALL, (BASE_LR,), (), TOKENS_PER_PARAM)
  rung, _, variant = arg.partition(',')
  if not rung.isdigit() or int(rung) >= len(RUNGS) or variant not in ('', 'scan', 'seed'):
    raise ValueError(
      f'ladder.py:<rung>[,scan|,seed] with rung 0-{len(RUNGS) - 1}, or :small, got {arg!r}'
    )
  r = int(rung)
  if variant == 'scan' and r not in SCAN or variant == 'seed' and r not in SEEDS:
    raise ValueError(
      f'ladder.py:{arg}: {variant} only at rungs {SCAN if variant == "scan" else SEEDS}'
    )
  if variant == 'scan':
    return rung_config(r, (BASE_LR / 2, BASE_LR * 2), (), TOKENS_PER_PARAM)
  if variant == 'seed':
    return rung_config(r, (BASE_LR,), (1,), TOKENS_PER_PARAM)
  return rung_config(r, (BASE_LR,), (), TOKENS_PER_PARAM + LONG.get(r, ()))
