"""Tokenizers with one small interface: bytes (default) or a local HuggingFace tokenizer dir.

Interface: `.vocab_size`, `.eos_id`, `.fingerprint` (cache key), `.encode(text) -> list[int]`,
`.encode_batch(texts) -> list[np.ndarray]`, `.decode(ids) -> str`, `.has_chat_template`,
`.encode_chat(messages) -> (ids, assistant mask, text)`, `.encode_chat_prompt(messages) -> ids`
(train/data/chat.py) and `.write_hf(dir)` (the tokenizer files of an HF export). No special
tokens are added (a chat template adds its own).
"""

import hashlib
import os
import shutil
import sys
from collections.abc import Sequence

import numpy as np

from train.data import chat

EOS_TOKEN = '<|endoftext|>'  # the byte tokenizer's EOS in an HF export (write_hf): GPT-2's name.


def _as_bytes(text: str | bytes) -> bytes:
  return text if isinstance(text, bytes) else text.encode('utf-8')


class ByteTokenizer:
  """UTF-8 bytes are ids 0..255, EOS is 256: no out-of-vocabulary, trivially reversible."""

  vocab_size = 257
  eos_id = 256
  fingerprint = 'byte'

  def encode(self, text: str | bytes) -> list[int]:
    return list(_as_bytes(text))

  def encode_batch(self, texts: Sequence[str | bytes]) -> list[np.ndarray]:
    return [np.frombuffer(_as_bytes(t), dtype=np.uint8) for t in texts]

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode('utf-8', errors='replace')

  has_chat_template = True  # the built-in one (train/data/chat.py byte_chat).

  def encode_chat(self, messages: chat.Messages) -> tuple[np.ndarray, np.ndarray, str]:
    return chat.byte_chat(messages)

  def encode_chat_prompt(self, messages: chat.Messages) -> list[int]:
    return chat.byte_prompt(messages).tolist()

  def write_hf(self, path: str) -> list[str]:
    """tokenizer.json + tokenizer_config.json that `transformers.AutoTokenizer` loads as this
    tokenizer: byte-level BPE without merges (byte b is id b, the text's special tokens split
    as bytes), '<|endoftext|>' = EOS = BOS = pad (id 256, put before a text by
    add_special_tokens, as before each document in training), the built-in chat template."""
    import tokenizers as hf_tokenizers
    import transformers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    unicode_of = bytes_to_unicode()  # GPT-2's byte -> printable character map (ByteLevel's).
    tok = hf_tokenizers.Tokenizer(
      hf_tokenizers.models.BPE(vocab={unicode_of[b]: b for b in range(256)}, merges=[])
    )
    tok.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(
      add_prefix_space=False, use_regex=False
    )
    tok.decoder = hf_tokenizers.decoders.ByteLevel()
    tok.add_special_tokens([hf_tokenizers.AddedToken(EOS_TOKEN, special=True)])
    tok.post_processor = hf_tokenizers.processors.TemplateProcessing(
      single=f'{EOS_TOKEN} $A',
      pair=f'{EOS_TOKEN} $A {EOS_TOKEN} $B',
      special_tokens=[(EOS_TOKEN, self.eos_id)],
    )
    hf = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok,
      bos_token=EOS_TOKEN,
      eos_token=EOS_TOKEN,
      pad_token=EOS_TOKEN,
      split_special_tokens=True,
    )
    hf.chat_template = chat.BYTE_TEMPLATE
    return [os.path.basename(f) for f in hf.save_pretrained(path)]


class HFTokenizer:
  """`transformers.AutoTokenizer` loaded from a local directory (never downloads)."""

  def __init__(self, path: str):
    import transformers  # Heavy import; only when a HF tokenizer is asked for.

    self.path = path
    self._tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    self._tok.model_max_length = (
      sys.maxsize
    )  # We tokenize whole documents; silence length warnings.
    if self._tok.eos_token_id is None:
      raise ValueError(
        f'config.data.tokenizer={path!r}: tokenizer has no eos_token; documents '
        'are separated by EOS, so one is required.'
      )
    self.eos_id = int(self._tok.eos_token_id)
    self.vocab_size = len(self._tok)
    self.fingerprint = 'hf-' + _dir_digest(path)

  def encode(self, text: str | bytes) -> list[int]:
    return self.encode_batch([text])[0].tolist()

  def encode_batch(self, texts: Sequence[str | bytes]) -> list[np.ndarray]:
    texts = [t.decode('utf-8', errors='replace') if isinstance(t, bytes) else t for t in texts]
    ids = self._tok(texts, add_special_tokens=False)['input_ids']
    return [np.asarray(x, dtype=np.int64) for x in ids]

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    return self._tok.decode([int(i) for i in ids])

  def prefix_ids(self) -> list[int]:
    """The special tokens the tokenizer puts before a text (LLaMA: BOS; GPT-2: none; our byte
    export: its EOS), i.e. what `tokenizer(prompt)` hands transformers' generate."""
    with_specials = self._tok('x', add_special_tokens=True)['input_ids']
    plain = self._tok('x', add_special_tokens=False)['input_ids']
    n = len(with_specials) - len(plain) if with_specials[-len(plain) :] == plain else 0
    return [int(i) for i in with_specials[:n]]

  @property
  def has_chat_template(self) -> bool:
    return chat.template(self._tok) is not None

  def encode_chat(self, messages: chat.Messages) -> tuple[np.ndarray, np.ndarray, str]:
    return chat.hf_chat(self._tok, messages)

  def encode_chat_prompt(self, messages: chat.Messages) -> list[int]:
    return chat.hf_prompt(self._tok, messages).tolist()

  def write_hf(self, path: str) -> list[str]:
    """Copies of the tokenizer's own files (tokenizer.json, its config, vocabularies, chat
    template: what from_pretrained reads), none of the directory's other files."""
    names = {*_HF_FILES, *getattr(self._tok, 'vocab_files_names', {}).values()}
    os.makedirs(path, exist_ok=True)
    copied = sorted(n for n in names if os.path.isfile(os.path.join(self.path, n)))
    for name in copied:
      shutil.copyfile(os.path.join(self.path, name), os.path.join(path, name))
    return copied


# The files of a tokenizer directory besides its vocabulary files (vocab_files_names).
_HF_FILES = (
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'added_tokens.json',
  'chat_template.jinja',
  'chat_template.json',
)


def _dir_digest(path: str) -> str:
  """Short sha1 over the names and contents of the files in `path`, to key token caches."""
  h = hashlib.sha1()
  for name in sorted(os.listdir(path)):
    full = os.path.join(path, name)
    if os.path.isfile(full):
      h.update(name.encode('utf-8') + b'\0')
      with open(full, 'rb') as f:
        h.update(f.read())
  return h.hexdigest()[:12]


Tokenizer = ByteTokenizer | HFTokenizer


def make_tokenizer(spec: str) -> Tokenizer:
  """'byte' -> ByteTokenizer; a local directory -> HFTokenizer."""
  if spec == 'byte':
    return ByteTokenizer()
  if not os.path.isdir(spec):
    raise ValueError(
      f"config.data.tokenizer={spec!r} is neither 'byte' nor an existing local "
      'directory holding a HuggingFace tokenizer.'
    )
  return HFTokenizer(spec)


def check_vocab(tokenizer: Tokenizer, model_vocab_size: int) -> None:
  """Raise unless every id the tokenizer can emit (EOS included) fits in the embedding table."""
  needed = max(tokenizer.vocab_size, tokenizer.eos_id + 1)
  if needed > model_vocab_size:
    raise ValueError(
      f'config.model.vocab_size={model_vocab_size} is too small for the tokenizer '
      f'({type(tokenizer).__name__}, vocab_size={tokenizer.vocab_size}, eos_id='
      f'{tokenizer.eos_id}); set config.model.vocab_size >= {needed}.'
    )
