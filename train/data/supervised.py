"""Supervised JSONL -> examples of token ids with a loss mask; one JSON object per line, one of:

  {"text": "..."}                                   every token a target
  {"prompt": "...", "completion": "..."}            the completion's tokens are the targets
  {"messages": [{"role": "...", "content": "..."}, ...]}
                                                    rendered with the tokenizer's chat template
                                                    (train/data/chat.py), assistant turns targets

Other keys are ignored and blank lines skipped. Each example is followed by EOS, itself a target
after a text, a completion or a final assistant turn (the model learns to stop). Bad input is one
ValueError line naming the file and line.
"""

import json
from collections.abc import Iterator

import numpy as np

from train.data import tokenizers

SHAPES = {'text': ('text',), 'completion': ('prompt', 'completion'), 'messages': ('messages',)}
_SHAPES_TEXT = '{"text"}, {"prompt", "completion"} or {"messages": [{"role", "content"}, ...]}'


def _shape_of(obj: object, where: str) -> str:
  """Which of SHAPES a parsed line has (ValueError naming `where` if none, or several)."""
  found = [s for s, keys in SHAPES.items() if isinstance(obj, dict) and any(k in obj for k in keys)]
  if len(found) != 1 or not all(k in obj for k in SHAPES[found[0]]):
    keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(f'{where}: not one of the shapes {_SHAPES_TEXT} (got {keys})')
  shape = found[0]
  if shape != 'messages':
    bad = [k for k in SHAPES[shape] if not isinstance(obj[k], str)]
    if bad:
      raise ValueError(f'{where}: "{bad[0]}" must be a string, got {type(obj[bad[0]]).__name__}')
    return shape
  msgs = obj['messages']
  ok = (
    isinstance(msgs, list)
    and msgs
    and all(
      isinstance(m, dict) and isinstance(m.get('role'), str) and isinstance(m.get('content'), str)
      for m in msgs
    )
  )
  if not ok:
    raise ValueError(
      f'{where}: "messages" must be a non-empty list of {{"role": str, "content": str}}'
    )
  return shape


def parse(line: str, where: str) -> tuple[str, dict]:
  """(shape, object) of one JSONL line; ValueError naming `where` (file:line) when it is bad."""
  try:
    obj = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f'{where}: malformed JSON ({e.msg} at character {e.pos})') from None
  return _shape_of(obj, where), obj


def lines(path: str, lo: int = 0, hi: int | None = None) -> Iterator[tuple[str, str]]:
  """(file:line, text) of examples lo..hi-1 of the file (blank lines skipped, not counted)."""
  k = 0
  with open(path, 'rb') as f:
    for n, raw in enumerate(f, 1):
      try:
        line = raw.decode('utf-8')
      except UnicodeDecodeError as e:
        raise ValueError(
          f'{path}:{n}: not UTF-8 (byte {raw[e.start]:#04x} at character {e.start}); save the file '
          'as UTF-8'
        ) from None
      if not line.strip():
        continue
      if hi is not None and k >= hi:
        return
      if k >= lo:
        yield f'{path}:{n}', line
      k += 1


def _has_targets(shape: str, obj: dict) -> bool:
  return shape != 'messages' or any(m['role'] == 'assistant' for m in obj['messages'])


def check_file(path: str, tokenizer: tokenizers.Tokenizer, name: str, limit: int = 0) -> int:
  """The number of examples in `path` (at most `limit` if > 0), every line parsed; ValueError
  (one line, file and line) for a malformed line, a line of none of the shapes, `messages` with a
  tokenizer (named `name`) without a chat template, or a file with no target at all."""
  count, targets, where = 0, False, f'{path}:1'
  for where, line in lines(path, 0, limit or None):
    shape, obj = parse(line, where)
    if shape == 'messages' and not tokenizer.has_chat_template:
      raise ValueError(
        f'{where}: "messages" needs a chat template, and tokenizer {name!r} has none '
        '(use {"prompt", "completion"} lines or a tokenizer with a chat template)'
      )
    targets = targets or _has_targets(shape, obj)
    count += 1
  if not count:
    raise ValueError(f'{path}: no examples (an empty file)')
  if not targets:
    raise ValueError(
      f'{path}: lines 1-{where.rsplit(":", 1)[1]}: no target tokens (the loss mask is all zero: '
      'no completion and no assistant turn)'
    )
  return count


def encode(
  tokenizer: tokenizers.Tokenizer, shape: str, obj: dict, where: str
) -> tuple[np.ndarray, np.ndarray, bytes]:
  """(ids with the closing EOS [T], loss mask [T] uint8, the example's UTF-8 text) of one line."""
  if shape == 'text':
    ids = tokenizer.encode_batch([obj['text']])[0]
    mask, text, last = np.ones(len(ids), np.uint8), obj['text'], 1
  elif shape == 'completion':
    prompt, completion = tokenizer.encode_batch([obj['prompt'], obj['completion']])
    ids = np.concatenate([prompt, completion])
    mask = np.concatenate([np.zeros(len(prompt), np.uint8), np.ones(len(completion), np.uint8)])
    text, last = obj['prompt'] + obj['completion'], 1
  else:
    try:
      ids, mask, text = tokenizer.encode_chat(obj['messages'])
    except ValueError as e:
      raise ValueError(f'{where}: {e}') from None
    except Exception as e:  # the chat template's own error (jinja's raise_exception, a bad role).
      first = str(e).splitlines()[0] if str(e) else ''
      raise ValueError(f'{where}: the chat template failed: {type(e).__name__}: {first}') from None
    last = int(obj['messages'][-1]['role'] == 'assistant')
  ids = np.append(np.asarray(ids, np.int64), tokenizer.eos_id)
  return ids, np.append(np.asarray(mask, np.uint8), np.uint8(last)), text.encode('utf-8')
