"""The main job: a small byte-level GPT on the embedded stdlib corpus (~5 min on a 2-core CPU).

  python main.py --config=configs/default.py --workdir=/tmp/lm_default

The corpus is the Python standard library's own .py files (built offline by the
`stdlib_corpus` TFDS builder). Override anything, e.g. `--config.train.num_steps=100`.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.model.update(vocab_size=257, d_model=128, n_layers=4, n_heads=4, d_ff=512, max_len=128)
  c.data.seq_len = 128
  c.train.update(
    global_batch_size=32,
    num_steps=500,
    log_every=25,
    eval_every=100,
    eval_batches=8,
    checkpoint_every=100,
  )
  c.optimizer.update(lr=3e-3, warmup_steps=50, weight_decay=0.1)
  return c
