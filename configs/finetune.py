"""Fine-tune a pretrained workdir on the stdlib function-naming task (train/data/name_task.py):
full, LoRA or from scratch; task accuracy from lm-eval logged next to the loss, the pre-training
loss tracked for forgetting, the best checkpoint by the task's validation loss kept in W/best.

  python -m train.data.name_task --out=workdirs/name_task                  # once, ~1 min
  python main.py --config=configs/default.py --workdir=workdirs/default     # once: the base
  python main.py --config=configs/finetune.py --workdir=workdirs/ft_full    # full fine-tuning
  python main.py --config=configs/finetune.py:lora=4 --workdir=workdirs/ft_lora4
  python main.py --config=configs/finetune.py:scratch --workdir=workdirs/ft_scratch
  python -m train.tools.export --workdir=workdirs/ft_lora4/best --out=/tmp/peft --what=adapter

Variants, comma-separated: `lora=<rank>` (adapters on every LORA_TARGETS kernel, the base frozen),
`scratch` (random init of the same shape: the baseline), `base=<workdir>` (default
workdirs/default; its config.json gives the model), `data=<dir>` (default workdirs/name_task),
`examples=<n>` (the steps' rule below; default: the lines of the data dir's train.jsonl),
`lm_eval=0` (no lm-eval in the loop: scaling/studies/finetune.py scores W/best afterwards).

The rule (docs/finetuning.md): batch 16 rows of 128 bytes (about one example each); steps
max(60, 3 epochs); linear warmup over 10 %, cosine to 0.1x; lr: full fine-tuning at 1/4 of the
base's peak pre-training lr, LoRA and scratch at it (LoRA alpha = rank, i.e. scale 1);
evaluation 10 times per run, early stop after 3 evaluations without a better task loss. The data
mix the pre-training corpus in at weight 0: evaluated (eval/stdlib_corpus/loss: forgetting), never
trained on.
"""

import json
import os

from configs import default

BATCH = 16
EVAL_ROWS = 208  # name_task's validation examples of one row each.


def examples_in(data: str) -> int:
  """Training examples of a name_task directory (its train.jsonl lines; 4987 before it exists)."""
  path = os.path.join(data, 'train.jsonl')
  if not os.path.exists(path):
    return 4987  # train/data/name_task.py's full set on CPython 3.11.
  with open(path) as f:
    return sum(1 for line in f if line.strip())


def steps_for(examples: int) -> int:
  """max(60, 3 epochs) of `examples` one-row examples at BATCH rows per step."""
  return max(60, -(-3 * examples // BATCH))


def get_config(arg: str = ''):
  opts = dict(kv.partition('=')[::2] for kv in arg.split(',') if kv)
  unknown = set(opts) - {'lora', 'scratch', 'base', 'data', 'examples', 'lm_eval'}
  if unknown:
    raise ValueError(f'configs/finetune.py: unknown variant(s) {sorted(unknown)} in {arg!r}')
  base, data = opts.get('base', 'workdirs/default'), opts.get('data', 'workdirs/name_task')
  c = default.get_config()
  pretrain_lr = c.optimizer.lr
  path = os.path.join(base, 'config.json')
  if os.path.exists(path):  # the base's model and lr (a fresh checkout: run the base first).
    with open(path) as f:
      saved = json.load(f)
    c.model.update(saved['model'])
    pretrain_lr = saved['optimizer']['lr']
  c.init_from = '' if 'scratch' in opts else base
  rank = int(opts.get('lora', 0))
  if rank:
    c.model.update(lora_rank=rank, lora_alpha=float(rank))
  c.data.update(dataset=f'jsonl:{data}=1,stdlib_corpus=0', seq_len=128, tokenizer='byte')
  c.data.prepared_dir = os.path.join(data, 'prepared')
  steps = steps_for(int(opts.get('examples', 0)) or examples_in(data))
  every = max(steps // 10, 1)
  c.train.update(
    global_batch_size=BATCH,
    num_steps=steps,
    log_every=every,
    eval_every=every,
    eval_batch_size=BATCH,
    eval_batches=-(-EVAL_ROWS // BATCH),
    checkpoint_every=steps,
    keep_checkpoints=1,
    best_metric='eval/loss',
    early_stop_patience=3,
  )
  full = not rank and 'scratch' not in opts
  c.optimizer.update(
    lr=pretrain_lr / 4 if full else pretrain_lr,
    schedule='cosine',
    warmup_steps=max(steps // 10, 1),
    min_lr_ratio=0.1,
    weight_decay=0.0 if rank else 0.1,
  )
  if opts.get('lm_eval', '1') != '0':
    c.lm_eval.update(tasks=('name_gen', 'name_mc'), include_path=data, batch_size=16)
  return c
