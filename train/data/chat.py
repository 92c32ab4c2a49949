"""Chat conversations -> token ids with a loss mask on the assistant turns.

The byte tokenizer renders with a small built-in template, every message as
`<|role|>\\n` + content + `\\n`; the assistant turns' content and closing newline are targets, their
`<|assistant|>\\n` header (the generation prompt) is not; BYTE_TEMPLATE is the same in jinja, for
exports. A HuggingFace tokenizer renders with its own chat template: the template's
`{% generation %}` markers give the mask where present (`return_assistant_tokens_mask`), else each
assistant turn's targets are the tokens the template adds after the prompt that precedes it
(rendered with `add_generation_prompt=True`). `byte_prompt` / `hf_prompt` render a conversation
with the generation prompt after it, for sampling the next assistant turn.
"""

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

Messages = Sequence[dict[str, str]]
_GENERATION = re.compile(r'\{%-?\s*generation\s*-?%\}')


def byte_chat(messages: Messages) -> tuple[np.ndarray, np.ndarray, str]:
  """(UTF-8 byte ids, mask 1 on the assistant turns' content and closing newline, the text)."""
  ids, mask, text = [], [], []
  for m in messages:
    head, body = f'<|{m["role"]}|>\n'.encode(), (m['content'] + '\n').encode()
    ids += [head, body]
    mask += [np.zeros(len(head), np.uint8), np.full(len(body), m['role'] == 'assistant', np.uint8)]
    text.append(f'<|{m["role"]}|>\n{m["content"]}\n')
  ids_T = np.frombuffer(b''.join(ids), np.uint8).astype(np.int64)
  return ids_T, np.concatenate(mask) if mask else np.zeros(0, np.uint8), ''.join(text)


# byte_chat's template in jinja, for HF exports of byte-tokenizer runs: the same text, and the
# assistant turns' content and newline marked as generation (their loss mask).
BYTE_TEMPLATE = (
  "{% for m in messages %}<|{{ m['role'] }}|>\n"
  "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}\n{% endgeneration %}"
  "{% else %}{{ m['content'] }}\n{% endif %}{% endfor %}"
  '{% if add_generation_prompt %}<|assistant|>\n{% endif %}'
)
BYTE_GENERATION_PROMPT = '<|assistant|>\n'


def byte_prompt(messages: Messages) -> np.ndarray:
  """The byte template's ids of `messages` and the next assistant turn's header (for sampling)."""
  ids_T = byte_chat(messages)[0]
  return np.concatenate([ids_T, np.frombuffer(BYTE_GENERATION_PROMPT.encode(), np.uint8)])


def template(hf_tokenizer: Any) -> str | None:
  """The tokenizer's default chat template, or None when it has none."""
  t = getattr(hf_tokenizer, 'chat_template', None)
  if isinstance(t, dict):
    t = t.get('default')
  return t or None


def has_generation_markers(chat_template: str) -> bool:
  """Whether the template marks assistant output with {% generation %} ... {% endgeneration %}."""
  return bool(_GENERATION.search(chat_template))


def _render(hf_tokenizer: Any, messages: Messages, **kw: Any) -> list[int]:
  return list(
    hf_tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=True, **kw)[
      'input_ids'
    ]
  )


def _marked(hf_tokenizer: Any, messages: Messages) -> tuple[list[int], np.ndarray]:
  out = hf_tokenizer.apply_chat_template(
    list(messages), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
  )
  return list(out['input_ids']), np.asarray(out['assistant_masks'], np.uint8)


def _by_prefix(hf_tokenizer: Any, messages: Messages) -> tuple[list[int], np.ndarray]:
  """Each assistant turn's targets: what rendering through it adds after its generation prompt."""
  ids = _render(hf_tokenizer, messages)
  mask = np.zeros(len(ids), np.uint8)
  for i, m in enumerate(messages):
    if m['role'] != 'assistant':
      continue
    prompt = _render(hf_tokenizer, messages[:i], add_generation_prompt=True) if i else []
    through = _render(hf_tokenizer, messages[: i + 1])
    if through[: len(prompt)] != prompt or ids[: len(through)] != through:
      raise ValueError(
        f'its chat template does not render assistant turn {i} after the prompt before it '
        '(no {% generation %} markers to use instead), so its loss mask is unknown'
      )
    mask[len(prompt) : len(through)] = 1
  return ids, mask


def hf_prompt(hf_tokenizer: Any, messages: Messages) -> np.ndarray:
  """The chat template's ids of `messages` with its generation prompt (for sampling)."""
  if template(hf_tokenizer) is None:
    raise ValueError('chat formatting needs a chat template, and the tokenizer has none')
  return np.asarray(_render(hf_tokenizer, messages, add_generation_prompt=True), np.int64)


def hf_chat(hf_tokenizer: Any, messages: Messages) -> tuple[np.ndarray, np.ndarray, str]:
  """(ids, mask on the assistant turns, the rendered text) with the tokenizer's chat template;
  ValueError (a clause, for the caller to place) when it has none."""
  t = template(hf_tokenizer)
  if t is None:
    raise ValueError('"messages" needs a chat template, and the tokenizer has none')
  ids, mask = (_marked if has_generation_markers(t) else _by_prefix)(hf_tokenizer, messages)
  text = hf_tokenizer.apply_chat_template(list(messages), tokenize=False)
  return np.asarray(ids, np.int64), mask, text
