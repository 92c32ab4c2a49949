"""Sample text from one of our workdirs or a HuggingFace directory, with a KV cache.

  python -m train.sample --checkpoint=workdirs/default --prompt='def main(' --prompt='import '
  python -m train.sample --checkpoint=hf:/path/to/dir --prompt='Hello' --temperature=0.8 --top_p=0.95

Prompts of different lengths are batched (left-padded); params are sharded over a mesh of all
devices by the training rules. Prints each continuation, then the decode tokens/s.
"""

import time

import jax
import numpy as np
from absl import app, flags, logging

import models
from models import generation
from models.config import PyTree
from train import cli, init_from, sharding
from train.data import tokenizers

FLAGS = flags.FLAGS
flags.DEFINE_string('checkpoint', None, "one of our workdirs (its latest checkpoint) or 'hf:/dir'")
flags.DEFINE_multi_string('prompt', [], 'a text prompt; repeat the flag for a batch')
flags.DEFINE_integer('max_new_tokens', 64, 'tokens generated per prompt')
flags.DEFINE_float('temperature', 0.0, '0: greedy')
flags.DEFINE_integer('top_k', 0, '0: off')
flags.DEFINE_float('top_p', 1.0, '1: off')
flags.DEFINE_integer('seed', 0, 'sampling seed (temperature > 0)')
flags.DEFINE_string('tokenizer', None, "default: the workdir's data.tokenizer, or the hf: dir")
flags.DEFINE_boolean('stop_at_eos', True, 'cut each continuation at the tokenizer EOS')


def load(
  checkpoint: str, tokenizer: str | None = None
) -> tuple[models.ModelConfig, PyTree, tokenizers.Tokenizer, list[int]]:
  """(ModelConfig, params sharded over all devices, tokenizer, prefix ids) for a checkpoint.

  Our runs pack documents as `text EOS text EOS ...`, so their prompts start after an EOS."""
  cfg = init_from.source_model_config(checkpoint)
  tok = tokenizers.make_tokenizer(tokenizer or init_from.source_tokenizer(checkpoint))
  tokenizers.check_vocab(tok, cfg.vocab_size)
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
  shardings = sharding.tree_shardings(models.logical_axes(cfg), models.param_shapes(cfg), mesh)
  cfg, params = init_from.load_params(checkpoint, cfg, shardings)
  prefix = [] if checkpoint.startswith('hf:') else [tok.eos_id]
  return cfg, params, tok, prefix


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  if not FLAGS.checkpoint or not FLAGS.prompt:
    raise app.UsageError('--checkpoint and at least one --prompt are required')
  logging.set_verbosity(logging.WARNING)  # no per-restore library chatter on the console.
  with cli.one_line_errors():
    cfg, params, tok, prefix = load(FLAGS.checkpoint, FLAGS.tokenizer)
    prompts = [prefix + tok.encode(p) for p in FLAGS.prompt]
    generation.check_options(
      cfg, max(map(len, prompts)), FLAGS.max_new_tokens, FLAGS.temperature, FLAGS.top_k, FLAGS.top_p
    )
  kw = dict(
    temperature=FLAGS.temperature,
    top_k=FLAGS.top_k,
    top_p=FLAGS.top_p,
    rng=jax.random.key(FLAGS.seed),
    eos_id=tok.eos_id if FLAGS.stop_at_eos else None,
  )
  start = time.perf_counter()
  out = np.asarray(generation.generate(cfg, params, prompts, FLAGS.max_new_tokens, **kw))
  first = time.perf_counter() - start
  start = time.perf_counter()  # again, compiled: the decode speed.
  jax.block_until_ready(generation.generate(cfg, params, prompts, FLAGS.max_new_tokens, **kw))
  seconds = time.perf_counter() - start
  for text, row in zip(FLAGS.prompt, out[:, -FLAGS.max_new_tokens :]):
    if FLAGS.stop_at_eos and tok.eos_id in row:
      row = row[: list(row).index(tok.eos_id)]
    print(f'--- {text!r}\n{text}{tok.decode(row)}')
  new = len(prompts) * FLAGS.max_new_tokens
  print(
    f'decode: {new / seconds:,.0f} tokens/s ({len(prompts)} x {FLAGS.max_new_tokens} new '
    f'tokens in {seconds:.3f} s incl. prefill; first call with compile {first:.1f} s; '
    f'{jax.devices()[0].platform})'
  )


if __name__ == '__main__':
  cli.run(main)
