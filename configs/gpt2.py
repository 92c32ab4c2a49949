"""GPT-2 shapes (Radford et al. 2019): 124m, 350m, 774m, 1.5b; HF-exact parameter counts.

  python main.py --config=configs/gpt2.py:124m --workdir=gs://bucket/runs/gpt2_124m

Defaults train on the embedded corpus with the byte tokenizer so the command runs anywhere;
for real pre-training point it at a TFDS dataset and the GPT-2 tokenizer, tokenized once into
shards by the same command with `python -m train.data.prepare` (docs/data.md), e.g.
  DATA="--config.data.dataset=c4/en:3.1.0 --config.data.data_dir=gs://bucket/tfds \
    --config.data.tokenizer=/path/to/gpt2_tokenizer_dir --config.data.prepared_dir=gs://bucket/tokens"
  python -m train.data.prepare --config=configs/gpt2.py:124m $DATA --workers=8
  python main.py --config=configs/gpt2.py:124m --workdir=gs://bucket/runs/gpt2_124m $DATA
Batch: 512 x 1024 tokens (~0.5M) per step, accumulated over 8 microbatches; bf16 compute.
"""

from configs import base

# size: (n_layers, d_model, n_heads, mesh)
SIZES = {
  '124m': (12, 768, 12, dict(data=-1, fsdp=1, tensor=1)),
  '350m': (24, 1024, 16, dict(data=-1, fsdp=1, tensor=1)),
  '774m': (36, 1280, 20, dict(data=1, fsdp=-1, tensor=1)),
  '1.5b': (48, 1600, 25, dict(data=1, fsdp=-1, tensor=1)),
}
LR = {'124m': 6e-4, '350m': 3e-4, '774m': 2.5e-4, '1.5b': 2e-4}


def get_config(size: str = '124m'):
  if size not in SIZES:
    raise ValueError(f'configs/gpt2.py:<size>: unknown {size!r}; choose from {list(SIZES)}')
  n_layers, d_model, n_heads, mesh = SIZES[size]
  c = base.get_config()
  c.model.update(
    vocab_size=50257,
    d_model=d_model,
    n_layers=n_layers,
    n_heads=n_heads,
    d_ff=4 * d_model,
    max_len=1024,
    positions='learned',
    norm='layernorm',
    mlp='gelu',
    tie_embeddings=True,
    use_bias=True,
    dtype='bfloat16',
    remat='dots_no_batch',
  )
  c.data.seq_len = 1024
  c.train.update(
    global_batch_size=512,
    grad_accum_steps=8,
    total_tokens=10_000_000_000,
    log_every=100,
    eval_every=2000,
    eval_batches=20,
    checkpoint_every=2000,
    keep_checkpoints=2,
    keep_every=10000,
  )
  c.optimizer.update(lr=LR[size], warmup_steps=2000, schedule='cosine', weight_decay=0.1)
  c.mesh.update(mesh)
  return c
