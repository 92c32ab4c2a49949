"""Supervised fine-tuning of the main job's model on a toy JSONL task (loss on completions only):

  python main.py --config=configs/sft.py --workdir=workdirs/sft

It needs, once, the base model and the data (both offline, from the repository root):

  python main.py --config=configs/default.py --workdir=workdirs/default
  python -m train.data.toy_sft --out=workdirs/sft_data

The data are `jsonl:` files (workdirs/sft_data/{train,validation}.jsonl; shapes in
train/data/supervised.py), prepared into token shards with a loss mask by the run itself, packed
whole into rows with segment ids (`--config.data.pack=false`: one per row); an over-long example's
prompt is cut from the left (`--config.data.truncation=right`: its end), and without
validation.jsonl the eval set is carved from train.jsonl (config.data.eval_fraction). Export with
its tokenizer and sample it: `python -m train.tools.export --workdir=workdirs/sft
--out=exported/sft`, `python -m train.tools.sample --checkpoint=hf:exported/sft --chat
--prompt='upper abc'`. Start from another workdir or HF directory with
`--config.init_from=...`; mix in pre-training text to limit forgetting with
`--config.data.dataset=jsonl:workdirs/sft_data=4,stdlib_corpus=1`.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.init_from = 'workdirs/default'
  c.data.update(dataset='jsonl:workdirs/sft_data', prepared_dir='workdirs/sft_data/prepared')
  c.train.update(num_steps=300, log_every=25, eval_every=100, eval_batches=4, checkpoint_every=100)
  c.optimizer.update(lr=1e-3, warmup_steps=30, weight_decay=0.0)
  return c
