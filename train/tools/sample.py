"""Sample text from one of our workdirs or a HuggingFace directory, with a KV cache.

  python -m train.tools.sample --checkpoint=workdirs/default --prompt='def main(' --prompt='import '
  python -m train.tools.sample --checkpoint=hf:/path/to/dir --prompt='Hello' --temperature=0.8 --top_p=0.95
  python -m train.tools.sample --checkpoint=workdirs/sft --chat --prompt='upper abc' \
    --prompt='[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "len os"}]'

A prompt follows what preceded every document in training: EOS for our workdirs; for an hf:
directory, the bos_token_id of its generation_config.json (our exports: EOS again), else nothing.
`--chat` renders each prompt (a user turn, or a JSON list of {"role", "content"} messages) with
the tokenizer's chat template, the one the supervised data used (train/data/chat.py), and the
generation prompt of the next assistant turn. Prompts of different lengths are batched
(left-padded); params are sharded over a mesh of all devices by the training rules. Prints each
continuation, then the decode tokens/s and the params' resident memory. On a quantized workdir
(train.tools.compress --quantize) `--resident=quantized` keeps the kernels int8 / int4 in memory
(models/resident_quant.py, on one device), dequantized per matmul:

  python -m train.tools.sample --checkpoint=/tmp/q8 --resident=quantized --prompt='def main('
"""

import json
import time

import jax
import numpy as np
from absl import app, flags, logging

import models
from models import generation, resident_quant
from models.config import PyTree
from train import cli, init_from, sharding
from train.data import supervised, tokenizers

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
flags.DEFINE_enum(
  'resident',
  'float',
  ['float', 'quantized'],
  'quantized: a quantized workdir keeps its kernels quantized in memory (dequantized per matmul)',
)
flags.DEFINE_boolean(
  'chat', False, 'format each prompt (a user turn or a JSON message list) by the chat template'
)


def load(
  checkpoint: str, tokenizer: str | None = None, resident: str = 'float'
) -> tuple[models.ModelConfig, PyTree, tokenizers.Tokenizer, list[int]]:
  """(ModelConfig, params sharded over all devices, tokenizer, prefix ids) for a checkpoint;
  resident 'quantized': a quantized workdir's kernels stay quantized (on one device)."""
  cfg = init_from.source_model_config(checkpoint)
  tok = tokenizers.make_tokenizer(tokenizer or init_from.source_tokenizer(checkpoint))
  tokenizers.check_vocab(tok, cfg.vocab_size)
  if resident == 'quantized':
    return *init_from.load_resident(checkpoint), tok, prompt_prefix(checkpoint, tok)
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
  shardings = sharding.tree_shardings(models.logical_axes(cfg), models.param_shapes(cfg), mesh)
  cfg, params = init_from.load_params(checkpoint, cfg, shardings)
  return cfg, params, tok, prompt_prefix(checkpoint, tok)


def prompt_prefix(checkpoint: str, tok: tokenizers.Tokenizer) -> list[int]:
  """What a prompt follows: EOS for our runs (documents are packed `text EOS text EOS ...`); for
  an hf: directory what its tokenizer puts before a text, as transformers' users get (our
  exports' tokenizer: that EOS, so a workdir and its export sample alike)."""
  if checkpoint.startswith('hf:') and hasattr(tok, 'prefix_ids'):
    return tok.prefix_ids()
  return [tok.eos_id]


def messages_of(prompt: str) -> list[dict]:
  """A --chat prompt's messages: a JSON list of {"role", "content"}, or text as one user turn."""
  if not prompt.lstrip().startswith('['):
    return [{'role': 'user', 'content': prompt}]
  try:
    messages = json.loads(prompt)
  except json.JSONDecodeError as e:
    raise ValueError(
      f'--prompt={prompt!r}: malformed JSON ({e.msg} at character {e.pos})'
    ) from None
  supervised.parse(json.dumps({'messages': messages}), f'--prompt={prompt!r}')
  return messages


def prompt_ids(tok: tokenizers.Tokenizer, prefix: list[int], prompt: str, chat: bool) -> list[int]:
  """The ids a prompt is sampled from: the prefix, then its text or its chat rendering with the
  generation prompt (a template that itself starts with the prefix's BOS gets no second one)."""
  if not chat:
    return prefix + tok.encode(prompt)
  ids = tok.encode_chat_prompt(messages_of(prompt))
  return ids if prefix and ids[: len(prefix)] == prefix else prefix + ids


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  if not FLAGS.checkpoint or not FLAGS.prompt:
    raise app.UsageError('--checkpoint and at least one --prompt are required')
  logging.set_verbosity(logging.WARNING)  # no per-restore library chatter on the console.
  with cli.one_line_errors():
    cfg, params, tok, prefix = load(FLAGS.checkpoint, FLAGS.tokenizer, FLAGS.resident)
    if FLAGS.chat and not tok.has_chat_template:
      raise ValueError(f'--chat: the tokenizer of {FLAGS.checkpoint} has no chat template')
    prompts = [prompt_ids(tok, prefix, p, FLAGS.chat) for p in FLAGS.prompt]
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
  for text, ids, row in zip(FLAGS.prompt, prompts, out[:, -FLAGS.max_new_tokens :]):
    if FLAGS.stop_at_eos and tok.eos_id in row:
      row = row[: list(row).index(tok.eos_id)]
    shown = tok.decode(ids[len(prefix) :]) if FLAGS.chat else text  # chat: the rendered prompt.
    print(f'--- {text!r}\n{shown}{tok.decode(row)}')
  new = len(prompts) * FLAGS.max_new_tokens
  print(
    f'decode: {new / seconds:,.0f} tokens/s ({len(prompts)} x {FLAGS.max_new_tokens} new '
    f'tokens in {seconds:.3f} s incl. prefill; first call with compile {first:.1f} s; '
    f'{jax.devices()[0].platform})'
  )
  mib = resident_quant.resident_bytes(params) / 2**20
  held = 'quantized' if resident_quant.holds(params) else 'float'  # (a QLoRA run's base: held)
  print(f'params resident: {mib:.2f} MiB ({held})')


if __name__ == '__main__':
  cli.run(main)
