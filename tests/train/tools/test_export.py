"""HF exports carry the run's tokenizer and generation_config: the byte tokenizer as files
transformers loads (the same ids both ways, EOS = BOS = pad = 256, the same chat template), an HF
tokenizer's own files copied; `train.tools.sample` on the export samples what it samples on the
workdir, and `--chat` formats prompts with the template the supervised data used."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, cpu_env

from train.data import chat, supervised, tokenizers
from train.tools import export, sample

BYTE = tokenizers.ByteTokenizer()
TEXTS = [
  'def main():\n\treturn 0',
  'héllo wörld ✓ 日本語 😀',
  'a literal <|endoftext|> and <|user|> stay bytes',
  '',
  ' \x00 \x7f',
]
CHAT = [
  {'role': 'system', 'content': 'Be brief.'},
  {'role': 'user', 'content': 'upper abc'},
  {'role': 'assistant', 'content': 'ABC'},
  {'role': 'user', 'content': 'reverse é'},
]


def test_byte_tokenizer_files_load_in_transformers_as_ours(tmp_path):
  """AutoTokenizer on the files: ids == UTF-8 bytes, decode == ours (invalid UTF-8 included),
  EOS = BOS = pad = 256 put before a text by add_special_tokens; its chat template renders and
  masks a conversation exactly as the built-in one (train/data/chat.py byte_chat)."""
  import transformers

  files = BYTE.write_hf(str(tmp_path))
  assert set(files) >= {'tokenizer.json', 'tokenizer_config.json'}
  hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  assert (len(hf), hf.eos_token_id, hf.bos_token_id, hf.pad_token_id) == (257, 256, 256, 256)
  for text in TEXTS:
    ids = hf(text, add_special_tokens=False)['input_ids']
    assert ids == list(text.encode('utf-8')) == BYTE.encode(text)
    assert hf(text)['input_ids'] == [256, *ids]
    assert hf.decode(ids) == text == BYTE.decode(ids)
  for broken in ([0xE6, 0x97], [0xFF, 65, 0xC3], [0xF0, 0x9F, 0x98, 120]):
    assert hf.decode(broken) == BYTE.decode(broken) == bytes(broken).decode('utf-8', 'replace')
  ours = tokenizers.make_tokenizer(str(tmp_path))
  conversation = [*CHAT, {'role': 'assistant', 'content': 'É'}]
  for got, want in zip(ours.encode_chat(conversation), chat.byte_chat(conversation)):
    np.testing.assert_array_equal(got, want)  # ids, assistant mask, text.
  assert ours.encode_chat_prompt(CHAT) == BYTE.encode_chat_prompt(CHAT)


def test_an_hf_tokenizer_is_copied_file_for_file(tmp_path):
  """A tokenizer read from a model directory: its tokenizer files copied byte for byte, never
  the directory's config.json or weights."""
  from test_sft import CHATML, _hf_tokenizer

  src = tmp_path / 'model'
  tok = _hf_tokenizer(src, CHATML)
  (src / 'config.json').write_text('{}')
  (src / 'model.safetensors').write_bytes(b'x')
  out = tmp_path / 'out'
  copied = tok.write_hf(str(out))
  assert 'tokenizer.json' in copied and sorted(os.listdir(out)) == copied
  assert not {'config.json', 'model.safetensors'} & set(copied)
  for name in copied:
    assert (out / name).read_bytes() == (src / name).read_bytes()
  again = tokenizers.make_tokenizer(str(out))
  assert again.encode_chat_prompt(CHAT) == tok.encode_chat_prompt(CHAT)


def test_chat_prompts_use_the_template_the_data_used(tmp_path):
  """--chat: a conversation's prompt is exactly what an SFT example of it ending in an assistant
  turn holds before its first target (the byte template and an HF ChatML template with
  generation markers), after the prefix; plain text is one user turn; a bad list is one line."""
  from test_sft import CHATML, _hf_tokenizer

  answer = [*CHAT, {'role': 'assistant', 'content': 'É'}]
  for tok in (BYTE, _hf_tokenizer(tmp_path / 't', CHATML)):
    ids, mask, _ = supervised.encode(tok, 'messages', {'messages': answer}, 'x')
    start = np.flatnonzero(mask == 0)[-1] + 1  # the last answer's targets: the prompt is before.
    got = sample.prompt_ids(tok, [tok.eos_id], json.dumps(CHAT), chat=True)
    assert got == [tok.eos_id, *ids[:start].tolist()]
  text = '<|system|>\nBe brief.\n<|user|>\nupper abc\n<|assistant|>\nABC\n<|user|>\nreverse é\n'
  assert sample.prompt_ids(BYTE, [], json.dumps(CHAT), chat=True) == list(
    (text + '<|assistant|>\n').encode()
  )
  one = sample.prompt_ids(BYTE, [256], 'upper abc', chat=True)
  assert BYTE.decode(one[1:]) == '<|user|>\nupper abc\n<|assistant|>\n'
  with pytest.raises(ValueError, match=r'--prompt=.*"messages" must be a non-empty list'):
    sample.messages_of('[{"role": "user"}]')


def _greedy(checkpoint, prompts, new=4):
  """train.tools.sample's prompt ids and printed continuations for (prompt, chat) pairs (greedy, one
  batch), through its own functions."""
  import models

  cfg, params, tok, prefix = sample.load(checkpoint)
  ids = [sample.prompt_ids(tok, prefix, p, chat) for p, chat in prompts]
  out = np.asarray(models.generate(cfg, params, ids, new, eos_id=tok.eos_id))[:, -new:]
  texts = []
  for row in out:
    row = list(row)
    texts.append(tok.decode(row[: row.index(tok.eos_id)] if tok.eos_id in row else row))
  return tok, ids, texts


def test_export_samples_what_the_workdir_samples(trained_workdir, tmp_path):
  """The export of a byte-tokenizer run: tokenizer files and generation_config.json (EOS, BOS,
  pad = 256; config.json's BOS/EOS too, no pad id there); `hf:OUT` loads that tokenizer with no
  flag, starts prompts after its BOS and samples the workdir's text, plain and --chat."""
  out = str(tmp_path / 'hf')
  record = export.export(trained_workdir, out)
  assert {'tokenizer.json', 'tokenizer_config.json', 'generation_config.json'} <= set(
    record['files']
  )
  generation = json.load(open(os.path.join(out, 'generation_config.json')))
  assert [generation[f'{k}_token_id'] for k in ('bos', 'eos', 'pad')] == [256, 256, 256]
  config = json.load(open(os.path.join(out, 'config.json')))
  assert (config['bos_token_id'], config['eos_token_id']) == (256, 256)
  assert config.get('pad_token_id') is None
  conversation = json.dumps([{'role': 'user', 'content': 'é'}])  # 28 tokens of max_len 32.
  prompts = [('def ', False), ('import os\n', False), ('é', False), (conversation, True)]
  prompts.append(('hi', True))
  tok_w, ids_w, texts_w = _greedy(trained_workdir, prompts)
  tok_h, ids_h, texts_h = _greedy(f'hf:{out}', prompts)
  assert type(tok_w).__name__ == 'ByteTokenizer' and type(tok_h).__name__ == 'HFTokenizer'
  assert ids_h == ids_w and texts_h == texts_w and all(ids[0] == 256 for ids in ids_h)
  assert ids_h[-1] == [256, *b'<|user|>\nhi\n<|assistant|>\n']


@pytest.mark.slow  # the command lines; test_export_samples_what_the_workdir_samples covers them.
def test_sample_cli_on_the_export_prints_the_workdirs_text_and_transformers_agrees(
  trained_workdir, tmp_path
):
  """`python -m train.tools.sample --checkpoint=hf:OUT` (no --tokenizer) prints what it prints for
  the workdir; transformers' greedy generate on the export with its tokenizer gives the same
  text."""
  import torch
  import transformers

  out = str(tmp_path / 'hf')
  export.export(trained_workdir, out)
  args = ['--prompt=def ', '--prompt=import os', '--max_new_tokens=12']
  printed = []
  for checkpoint in (trained_workdir, f'hf:{out}'):
    cmd = [sys.executable, '-m', 'train.tools.sample', f'--checkpoint={checkpoint}', *args]
    done = subprocess.run(cmd, cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    printed.append(done.stdout.split('decode:')[0])
  assert printed[0] == printed[1] and "--- 'def '" in printed[0]
  tok = transformers.AutoTokenizer.from_pretrained(out)
  model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  for prompt in ('def ', 'import os'):
    inputs = tok(prompt, return_tensors='pt')  # BOS (256) first, as in training.
    with torch.no_grad():
      ids = model.generate(**inputs, max_new_tokens=12, do_sample=False)[
        0, inputs['input_ids'].shape[1] :
      ]
    text = tok.decode(ids, skip_special_tokens=True)
    assert f'--- {prompt!r}\n{prompt}{text}\n' in printed[1]
