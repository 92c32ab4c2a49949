"""LLaMA-style shapes from ~100M to ~8B (RMSNorm, SwiGLU, rope, grouped-query attention).

  python main.py --config=configs/llama.py:1b --workdir=gs://bucket/runs/llama_1b

Sizes: 100m, 300m, 1b (Llama-3.2-1B shape), 3b (Llama-3.2-3B), 7b (Llama-2-7B), 8b (Llama-3-8B);
1b and 3b have Llama-3.2's rope scaling, so `init_from=hf:` loads those checkpoints.
Defaults train on the embedded corpus with the byte tokenizer so the command runs anywhere;
for real runs set --config.data.dataset=..., --config.data.data_dir=gs://... and
--config.data.tokenizer=/path/to/hf_tokenizer_dir (vocab must fit model.vocab_size).
Batch: 256 x 2048 tokens (~0.5M) per step; FSDP over all devices; bf16 compute.
"""

from configs import base

# size: (n_layers, d_model, n_heads, n_kv_heads, d_ff, vocab, tied, rope_theta, lr)
SIZES = {
  '100m': (12, 768, 12, 4, 2048, 32000, True, 10000.0, 6e-4),
  '300m': (24, 1024, 16, 8, 2816, 32000, True, 10000.0, 4e-4),
  '1b': (16, 2048, 32, 8, 8192, 128256, True, 500000.0, 3e-4),
  '3b': (28, 3072, 24, 8, 8192, 128256, True, 500000.0, 3e-4),
  '7b': (32, 4096, 32, 32, 11008, 32000, False, 10000.0, 3e-4),
  '8b': (32, 4096, 32, 8, 14336, 128256, False, 500000.0, 3e-4),
}
# Llama-3.2's rope scaling (HF rope_scaling 'llama3').
LLAMA3_ROPE = dict(
  rope_scaling='llama3',
  rope_factor=32.0,
  rope_low_freq_factor=1.0,
  rope_high_freq_factor=4.0,
  rope_original_max_len=8192,
)


def get_config(size: str = '1b'):
  if size not in SIZES:
    raise ValueError(f'configs/llama.py:<size>: unknown {size!r}; choose from {list(SIZES)}')
  n_layers, d_model, n_heads, n_kv, d_ff, vocab, tied, theta, lr = SIZES[size]
  c = base.get_config()
  c.model.update(
    vocab_size=vocab,
    d_model=d_model,
    n_layers=n_layers,
    n_heads=n_heads,
    n_kv_heads=n_kv,
    d_ff=d_ff,
    max_len=2048,
    positions='rope',
    rope_theta=theta,
    norm='rmsnorm',
    norm_eps=1e-5,
    mlp='swiglu',
    tie_embeddings=tied,
    use_bias=False,
    dtype='bfloat16',
    remat='dots_no_batch',
  )
  if size in ('1b', '3b'):
    c.model.update(LLAMA3_ROPE)
  c.data.seq_len = 2048
  c.train.update(
    global_batch_size=256,
    grad_accum_steps=1,
    total_tokens=20 * 10**9,
    log_every=100,
    eval_every=2000,
    eval_batches=20,
    checkpoint_every=1000,
    keep_checkpoints=2,
    keep_every=10000,
  )
  c.optimizer.update(lr=lr, warmup_steps=2000, schedule='cosine', weight_decay=0.1, b2=0.95)
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  return c
