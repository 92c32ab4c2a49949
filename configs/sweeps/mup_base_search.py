"""μP's base-width hyperparameters: one setting of the grid per run, each at the base
shape only (d_model 32, 4 layers, head dim 16), 5 peak lrs a factor 2 apart, seed 0, 500 steps
of 16 x 64 bytes: 5 members per setting, 13 settings = 65 members.

  for s in default in0.25 in4 out0.25 out4 attn0.5 attn2 emb_lr0.25 emb_lr4 vec_lr0.25 vec_lr4 \
      iwd untied_zero; do
    python main.py --config=configs/sweeps/mup_base_search.py:$s --workdir=workdirs/mup_base/$s
  done

Plan (python -m scaling.sweep --config=configs/sweeps/mup_base_search.py:default): 5 members,
9.4e11 training FLOPs (untied_zero 1.07e12). Estimated CPU time (smoke runs on the shared 2-core
machine: ~0.05 CPU-s per step at d32 plus ~25 s start-up and compilation per member): ~1 min per member, ~5 min per
setting, ~1.1 h for the 13 settings (~35 min with two in parallel).
"""

import ml_collections

from configs.sweeps import mup_width

LRS = tuple(2.0**e for e in range(-9, -4))  # 2.0e-3 .. 3.1e-2, around μP's 100-step optimum 2^-7
STEPS = 500
# name -> model keys; 'iwd' also sets optimizer.weight_decay (IWD_DECAY, per step at lr(t)/peak).
GRID = {
  'default': {},
  'in0.25': {'mup_input_mult': 0.25},
  'in4': {'mup_input_mult': 4.0},
  'out0.25': {'mup_output_mult': 0.25},
  'out4': {'mup_output_mult': 4.0},
  'attn0.5': {'mup_attn_mult': 0.5},
  'attn2': {'mup_attn_mult': 2.0},
  'emb_lr0.25': {'mup_lr_embedding': 0.25},
  'emb_lr4': {'mup_lr_embedding': 4.0},
  'vec_lr0.25': {'mup_lr_vector': 0.25},
  'vec_lr4': {'mup_lr_vector': 4.0},
  'iwd': {'independent_wd': True},
  'untied_zero': {'tie_embeddings': False, 'mup_readout_init': 'zero'},
  # Second round: the two winners of the first (out4, emb_lr4) together, and emb_lr further.
  'out4_emb4': {'mup_output_mult': 4.0, 'mup_lr_embedding': 4.0},
  'emb_lr16': {'mup_lr_embedding': 16.0},
  'out4_emb16': {'mup_output_mult': 4.0, 'mup_lr_embedding': 16.0},
}
# α_out was 1 when this search ran; μP's default is now its winner (4), so every setting names it.
BEFORE = {'mup_output_mult': 1.0}
IWD_DECAY = 1e-4  # Wortsman et al. 2023's independent decay (0.1 x a 1e-3 lr, coupled).


def get_config(setting: str = 'default') -> ml_collections.ConfigDict:
  if setting not in GRID:
    raise ValueError(f'mup_base_search.py:<arg> must be one of {tuple(GRID)}, got {setting!r}')
  c = mup_width.study_config(
    'mup',
    widths=mup_width.WIDTHS[:1],
    tokens=(STEPS * mup_width.TOKENS_PER_STEP,),
    lrs=LRS,
    seeds=(0,),
    **{**BEFORE, **GRID[setting]},
  )
  if setting == 'iwd':
    c.optimizer.weight_decay = IWD_DECAY
  return c
