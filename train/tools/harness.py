"""Downstream evaluation with EleutherAI's lm-evaluation-harness (lm-eval).

`LMScaleLM` (registered in lm-eval as 'lmscale') serves loglikelihood, loglikelihood_rolling and
generate_until for one of our models: a workdir's latest checkpoint, an `hf:/dir` checkpoint, or
in-memory (model_config, params, tokenizer), optionally sharded on a mesh. Rows are scored in
fixed-size batches padded to a few bucket lengths, so nothing recompiles per request.

Command line (prints lm-eval's table, writes <workdir>/lm_eval_results.json):

  python -m train.tools.harness --workdir=workdirs/default --tasks=lambada_openai,hellaswag \
    [--include_path=my_tasks] [--limit=N] [--num_fewshot=K] [--batch_size=B]

It also prints the params' resident memory and the decode tokens/s of generate_until. On a
quantized workdir (train.tools.compress --quantize) `--resident=quantized` keeps the kernels int8 /
int4 in memory, dequantized per matmul (models/resident_quant.py).
"""

import dataclasses
import difflib
import functools
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import lm_eval
import ml_collections
import numpy as np
from absl import flags
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from lm_eval import utils
from lm_eval.api import registry
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import handle_non_serializable, make_table

import models
from models import loss, resident_quant
from models.config import ModelConfig, PyTree
from train import cli, init_from, metrics
from train import workdir as workdir_lib
from train.data import tokenizers

if TYPE_CHECKING:
  from lm_eval.tasks import TaskManager

  from train.context import Run

Tokenizer = tokenizers.ByteTokenizer | tokenizers.HFTokenizer  # make_tokenizer's result.

REGISTRY_NAME = 'lmscale'
RESULTS_FILE = 'lm_eval_results.json'
FEWSHOT_SEED = 1234  # lm-eval's default few-shot sampler seed.
# Lazy entry (module:class): `python -m train.tools.harness` and `import train.tools.harness`
# register alike.
registry.model_registry.register(REGISTRY_NAME, target='train.tools.harness:LMScaleLM')


def task_names(tasks: str | Sequence[str]) -> list[str]:
  """A tuple / list / comma-separated string of names -> names ('a,b' on a command line)."""
  tasks = [tasks] if isinstance(tasks, str) else list(tasks)
  return [n.strip() for t in tasks for n in str(t).split(',') if n.strip()]


@functools.lru_cache(maxsize=8)
def task_manager(include_path: str = '', defaults: bool = True) -> 'TaskManager':
  """lm-eval's TaskManager: built-in tasks (indexing them takes seconds, hence the cache) and
  `include_path`'s."""
  from lm_eval.tasks import TaskManager  # lazy: lm_eval.tasks imports HF datasets (slow).

  return TaskManager(include_path=include_path or None, include_defaults=defaults)


def _manager_for(names: list[str], include_path: str = ''):
  """include_path's own tasks when `names` are all plain tasks there (fast), else every task
  (groups and tags may gather built-in tasks)."""
  if include_path:
    from lm_eval.tasks._index import Kind  # lazy: lm_eval.tasks imports HF datasets (slow).

    local = task_manager(include_path, defaults=False)
    entries = [local.task_index.get(n) for n in names]
    if all(e is not None and e.kind in (Kind.TASK, Kind.PY_TASK) for e in entries):
      return local
  return task_manager(include_path)


def check_tasks(
  tasks: str | Sequence[str], include_path: str = '', field: str = '--tasks'
) -> list[str]:
  """The task names, or ValueError naming `field` and the first name lm-eval does not know."""
  names = task_names(tasks)
  if not names:
    raise ValueError(f'{field}: no task names given')
  if include_path and not os.path.isdir(include_path):
    raise ValueError(f'{field}: include_path {include_path!r} is not a directory')
  manager = _manager_for(names, include_path)
  known = manager.all_tasks
  for name in names:
    if name not in manager.task_index and not os.path.isfile(name):
      close = difflib.get_close_matches(name, known, n=3)
      hint = f'; did you mean {", ".join(map(repr, close))}?' if close else ''
      where = f', with those in {include_path}' if include_path else ''
      raise ValueError(
        f'{field}: unknown lm-eval task {name!r} (lm-eval knows {len(known)} '
        f'tasks, groups and tags{where}){hint}'
      )
  return names


def _buckets(max_len: int) -> tuple[int, ...]:
  """Padded row lengths: 16, 32, 64, ... below max_len, then max_len."""
  out, n = [], 16
  while n < max_len:
    out.append(n)
    n *= 2
  return tuple(out) + (max_len,)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _score(
  cfg: models.ModelConfig,
  mesh: Mesh | None,
  params: PyTree,
  tokens_BxL: jax.Array,
  targets_BxL: jax.Array,
  mask_BxL: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """Per row: float32 sum of log p(target) over masked positions, and whether each is the argmax."""
  logits_BxLxV = models.logits(cfg, params, tokens_BxL)
  nll_BxL, _ = loss.nll(logits_BxLxV, targets_BxL)
  greedy_BxL = jnp.argmax(logits_BxLxV, axis=-1) == targets_BxL
  sum_B = -jnp.sum(jnp.where(mask_BxL, nll_BxL, 0.0), axis=1)
  is_greedy_B = jnp.all(greedy_BxL | ~mask_BxL, axis=1)
  if mesh is not None:  # every process gets the whole (small) answer.
    sum_B, is_greedy_B = jax.lax.with_sharding_constraint(
      (sum_B, is_greedy_B), NamedSharding(mesh, P())
    )
  return sum_B, is_greedy_B


class LMScaleLM(TemplateLM):
  """lm-eval model for our transformers: from `pretrained` (a workdir or 'hf:/dir') or in memory."""

  def __init__(
    self,
    pretrained: str = '',
    *,
    model_config: ModelConfig | None = None,
    params: PyTree | None = None,
    tokenizer: str | Tokenizer | None = None,
    batch_size: int | str = 16,
    mesh: Mesh | None = None,
    max_gen_toks: int = 256,
    seed: int = 0,
    resident: str = 'float',
    **_,
  ) -> None:
    """`tokenizer`: our tokenizer object, or 'byte' / a HF tokenizer dir; None: the source's.
    `resident` 'quantized': a quantized workdir's kernels stay quantized in memory."""
    super().__init__()
    self.decoded = (0, 0.0)  # (tokens generated, seconds), for the decode tokens/s.
    if pretrained:
      model_config, params = load(pretrained, resident)
      tokenizer = tokenizer or init_from.source_tokenizer(pretrained)
    if model_config is None or tokenizer is None:
      raise ValueError(
        'LMScaleLM: give pretrained=<workdir | hf:/dir>, or model_config, params and tokenizer'
      )
    self.model_config = ModelConfig.expect(model_config)
    self.params = params
    self.tok = tokenizers.make_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    tokenizers.check_vocab(self.tok, self.model_config.vocab_size)
    self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16  # 'auto' -> 16.
    self.mesh = mesh
    self.max_gen_toks = int(max_gen_toks)
    self.seed = int(seed)
    self.buckets = _buckets(self.model_config.max_len)

  # ------------------------------------------------------------------ lm-eval's model interface
  @property
  def eot_token_id(self) -> int:
    return self.tok.eos_id

  @property
  def max_length(self) -> int:
    return self.model_config.max_len

  @property
  def tokenizer_name(self) -> str:
    return self.tok.fingerprint

  def tok_encode(
    self,
    string: str,
    add_special_tokens: bool | None = None,
    left_truncate_len: int | None = None,
    **kwargs,
  ) -> list[int]:
    """Token ids as in training (no special tokens), optionally only the last left_truncate_len."""
    ids = [int(i) for i in self.tok.encode(string)]
    return ids[-left_truncate_len:] if left_truncate_len else ids

  def _put(self, x: np.ndarray):
    """Host array -> replicated global array on the mesh (every process holds the same data)."""
    if self.mesh is None:
      return x
    return jax.make_array_from_process_local_data(NamedSharding(self.mesh, P()), x, x.shape)

  def score_tokens(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
    """(float32 sum of log p(continuation | context), is greedy) per (context, continuation) ids.

    Like lm-eval's HF adapter, a row longer than max_len + 1 loses tokens from the left.
    """
    if self.params is None:
      raise ValueError('LMScaleLM: no params to evaluate')
    n = self.max_length
    rows = []
    for ctx, cont in pairs:
      if not cont or len(cont) > n:
        raise ValueError(f'continuation of {len(cont)} tokens: need 1 to max_len={n}')
      rows.append((list(ctx) + list(cont))[-(n + 1) :])
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    out = [None] * len(rows)
    bs = self.batch_size
    for start in range(0, len(order), bs):
      idx = order[start : start + bs]
      width = next(b for b in self.buckets if b >= len(rows[idx[0]]) - 1)
      tokens, targets = np.zeros((bs, width), np.int32), np.zeros((bs, width), np.int32)
      mask = np.zeros((bs, width), bool)
      for r, i in enumerate(idx):
        row, cont_len = rows[i], len(pairs[i][1])
        tokens[r, : len(row) - 1], targets[r, : len(row) - 1] = row[:-1], row[1:]
        mask[r, len(row) - 1 - cont_len : len(row) - 1] = True
      sums, greedy = _score(
        self.model_config,
        self.mesh,
        self.params,
        self._put(tokens),
        self._put(targets),
        self._put(mask),
      )
      sums, greedy = jax.device_get((sums, greedy))
      for r, i in enumerate(idx):
        out[i] = (float(np.float32(sums[r])), bool(greedy[r]))
    return out

  def _loglikelihood_tokens(
    self, requests: list[tuple], disable_tqdm: bool = False, **kwargs
  ) -> list[tuple[float, bool]]:
    """lm-eval's token-level entry: [((context, continuation) | None, ctx ids, cont ids)]."""
    answers = self.score_tokens([(ctx, cont) for _, ctx, cont in requests])
    for (key, _, _), answer in zip(requests, answers):
      if key is not None:
        self.cache_hook.add_partial('loglikelihood', key, answer)
    return answers

  def loglikelihood_rolling(
    self, requests: list[Instance], disable_tqdm: bool = False
  ) -> list[float]:
    """Whole-string log-likelihood in disjoint max_len windows (lm-eval's rolling scheme)."""
    windows, owner = [], []
    for i, (string,) in enumerate(req.args for req in requests):
      for w in utils.get_rolling_token_windows(
        self.tok_encode(string), self.prefix_token_id, self.max_length, context_len=1
      ):
        windows.append(utils.make_disjoint_window(w))
        owner.append(i)
    totals = [0.0] * len(requests)
    for i, (logp, _) in zip(owner, self.score_tokens(windows)):
      totals[i] += logp
    for req, total in zip(requests, totals):
      self.cache_hook.add_partial('loglikelihood_rolling', req.args, total)
    return totals

  def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
    """models.generate's continuations, cut at the first EOS and at the requests' `until`."""
    if self.params is None:
      raise ValueError('LMScaleLM: no params to evaluate')
    groups = {}
    for i, req in enumerate(requests):
      context, gen_kwargs = req.args
      groups.setdefault(json.dumps(gen_kwargs, sort_keys=True, default=str), []).append(i)
    out = [None] * len(requests)
    for idx in groups.values():
      kwargs = normalize_gen_kwargs(requests[idx[0]].args[1], self.max_gen_toks)
      until = kwargs['until'] if isinstance(kwargs['until'], list) else [kwargs['until']]
      texts = self._generate([requests[i].args[0] for i in idx], kwargs)
      for i, text in zip(idx, texts):
        out[i] = postprocess_generated_text(text, until, None)
        self.cache_hook.add_partial('generate_until', requests[i].args, out[i])
    return out

  def _generate(self, contexts: list[str], kwargs: dict) -> list[str]:
    """Decoded new text per context (before `until` cuts), in fixed-shape batches."""
    n = self.max_length
    new = int(kwargs['max_gen_toks'])
    if new >= n:
      logging.warning(
        'lm-eval: max_gen_toks=%d does not fit max_len=%d; generating %d', new, n, n // 2
      )
      new = n // 2
    prompts = [
      self.tok_encode(c, left_truncate_len=n - new) or [self.eot_token_id] for c in contexts
    ]
    sampling = dict(
      temperature=float(kwargs.get('temperature') or 0.0),
      top_k=int(kwargs.get('top_k') or 0),
      top_p=float(kwargs.get('top_p') or 1.0),
    )
    if not kwargs.get('do_sample'):
      sampling = dict(temperature=0.0, top_k=0, top_p=1.0)
    rng = jax.random.key(self.seed)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    texts = [None] * len(prompts)
    # Fixed shapes: batch_size rows (filler rows pad a short batch), the last row a bucket-long
    # filler, so the left-padded prompt length is a bucket.
    chunk = max(self.batch_size - 1, 1)
    for b, start in enumerate(range(0, len(order), chunk)):
      idx = order[start : start + chunk]
      width = min(next(w for w in self.buckets if w >= len(prompts[idx[0]])), n - new)
      batch = [prompts[i] for i in idx] + [[self.eot_token_id]] * (chunk - len(idx))
      batch.append([self.eot_token_id] * width)
      start = time.perf_counter()
      tokens = models.generate(
        self.model_config,
        self.params,
        batch,
        new,
        rng=jax.random.fold_in(rng, b),
        eos_id=self.eot_token_id,
        **sampling,
      )
      if not tokens.is_fully_addressable:  # rows sharded over processes: every one gets all.
        tokens = multihost_utils.process_allgather(tokens, tiled=True)
      new_BxT = np.asarray(jax.device_get(tokens))[:, -new:]
      self.decoded = (self.decoded[0] + new_BxT.size, self.decoded[1] + time.perf_counter() - start)
      for r, i in enumerate(idx):
        ids = new_BxT[r].tolist()
        ids = ids[: ids.index(self.eot_token_id)] if self.eot_token_id in ids else ids
        texts[i] = self.tok.decode(ids)
    return texts

  def get_model_info(self) -> dict:
    return {'model_config': dataclasses.asdict(self.model_config)}


# ------------------------------------------------------------------------------ loading


def load(src: str, resident: str = 'float') -> tuple:
  """(ModelConfig, params) of a workdir's latest checkpoint or an 'hf:/dir' checkpoint; resident
  'quantized': a quantized workdir's kernels held quantized (models/resident_quant.py)."""
  return init_from.load_resident(src) if resident == 'quantized' else init_from.load_params(src)


# ------------------------------------------------------------------------------ running tasks


class TaskSet:
  """Tasks loaded once (datasets, few-shot settings) and evaluated on an LM as often as needed."""

  def __init__(
    self,
    tasks: str | Sequence[str],
    include_path: str = '',
    num_fewshot: int | None = None,
  ) -> None:
    self.names = task_names(tasks)
    self.loaded = _manager_for(self.names, include_path).load(self.names)
    for task in self.loaded['tasks'].values():  # as lm_eval.simple_evaluate does.
      if num_fewshot is not None and task.get_config('num_fewshot') != 0:
        task.set_config(key='num_fewshot', value=num_fewshot)
      elif task.get_config('num_fewshot') is None:
        task.set_config(key='num_fewshot', value=0)

  def evaluate(self, lm: TemplateLM, limit: int | None = None, bootstrap_iters: int = 0) -> dict:
    """lm-eval's results dict; the same few-shot examples every call."""
    from lm_eval import evaluator  # lazy: imports HF datasets (slow).

    for task in self.loaded['tasks'].values():
      task.set_fewshot_seed(seed=FEWSHOT_SEED)
    return evaluator.evaluate(
      lm=lm, task_dict=self.loaded, limit=limit, bootstrap_iters=bootstrap_iters, log_samples=False
    )


def flat_metrics(results: dict) -> dict[str, float]:
  """{'lm_eval/<task>/<metric>[/<filter>]': value} for every numeric metric (no stderrs)."""
  out = {}
  for section in ('results', 'groups'):
    for task, row in (results.get(section) or {}).items():
      for key, value in row.items():
        if ',' not in key or '_stderr' in key or isinstance(value, bool):
          continue
        if not isinstance(value, (int, float, np.number)):
          continue
        metric, filt = key.split(',', 1)
        out[f'lm_eval/{task}/{metric}' + ('' if filt == 'none' else f'/{filt}')] = float(value)
  return out


class LmEvalEvaluator:
  """The training loop's lm-eval evaluator (train/evaluators.py) for `config.lm_eval`: params ->
  flat lm_eval/<task>/<metric>. Task names are checked and the tasks loaded when it is built, so
  a bad name stops the run before anything is compiled or written."""

  def __init__(self, lm_eval_config: ml_collections.ConfigDict) -> None:
    c = self.config = lm_eval_config
    check_tasks(c.tasks, c.include_path, 'config.lm_eval.tasks')
    self.tasks = TaskSet(c.tasks, c.include_path, c.num_fewshot)
    self.lm, self.held = None, {}

  def start(self, r: 'Run', task: object = None) -> None:
    """Score on the run's mesh with its tokenizer and seed (a sweep member's own), batch rows
    rounded up to the batch shards."""
    shards = r.derived.batch_shards
    self.lm = LMScaleLM(
      model_config=r.derived.model,
      tokenizer=r.tokenizer,
      mesh=r.mesh,
      batch_size=-(-self.config.batch_size // shards) * shards,
      seed=r.config.seed,
    )
    # QLoRA: the base's held kernels are the step's last frozen input (train/loop.py with_held).
    last = task.frozen[-1] if task is not None and task.frozen else None
    self.held = last if last is not None and resident_quant.holds(last) else {}

  def __call__(self, params: PyTree) -> dict[str, float]:
    self.lm.params = resident_quant.join(params, self.held) if self.held else params
    try:
      return flat_metrics(self.tasks.evaluate(self.lm, limit=self.config.limit or None))
    finally:
      self.lm.params = None  # the train step donates these buffers.


def write_results(results: dict, path: str) -> None:
  """lm-eval's results as strict JSON (no NaN); unserializable values as strings."""
  workdir_lib.write_json(
    path, metrics.strict_json(json.loads(json.dumps(results, default=handle_non_serializable)))
  )


def evaluate_source(
  src: str,
  tasks: str | Sequence[str],
  include_path: str = '',
  limit: int | float | None = None,
  num_fewshot: int | None = None,
  batch_size: int = 16,
  tokenizer: str = '',
  output: str = '',
  bootstrap_iters: int = 100000,
  resident: str = 'float',
) -> dict:
  """lm_eval.simple_evaluate on a workdir / 'hf:/dir'; writes the results JSON; returns them."""
  if include_path and not os.path.isdir(include_path):
    raise ValueError(f'--include_path={include_path}: not a directory')
  names = check_tasks(tasks, include_path)  # before loading anything.
  if not os.path.isdir(init_from.source_path(src)):
    raise ValueError(f'--workdir={src}: no such directory')
  lm = LMScaleLM(src, tokenizer=tokenizer or None, batch_size=batch_size, resident=resident)
  results = lm_eval.simple_evaluate(
    model=lm,
    tasks=names,
    task_manager=_manager_for(names, include_path),
    limit=limit,
    num_fewshot=num_fewshot,
    log_samples=False,
    bootstrap_iters=bootstrap_iters,
  )
  step = None if src != init_from.source_path(src) else workdir_lib.latest_checkpoint_step(src)
  results['config'].update(model=src, batch_size=lm.batch_size, checkpoint_step=step)
  tokens, seconds = lm.decoded
  results['config'].update(
    resident=resident,
    params_resident_bytes=resident_quant.resident_bytes(lm.params),
    decode_tokens_per_s=tokens / seconds if seconds else None,  # incl. compiles and prefill.
  )
  output = output or os.path.join(init_from.source_path(src), RESULTS_FILE)
  write_results(results, output)
  results['output'] = output
  return results


def main(argv: list[str]) -> None:
  """The command line: see the module docstring."""
  del argv
  f = flags.FLAGS
  limit = None if f.limit is None else (int(f.limit) if f.limit >= 1 else f.limit)
  # OSError: e.g. a dataset unreachable.
  with cli.one_line_errors(f.debug, input_errors=(ValueError, OSError, NotImplementedError)):
    results = evaluate_source(
      f.workdir,
      f.tasks,
      f.include_path,
      limit,
      f.num_fewshot,
      f.batch_size,
      f.tokenizer,
      f.output,
      f.bootstrap_iters,
      f.resident,
    )
  print(make_table(results))
  if results.get('groups'):
    print(make_table(results, 'groups'))
  c = results['config']
  print(f'params resident: {c["params_resident_bytes"] / 2**20:.2f} MiB ({c["resident"]})')
  if c['decode_tokens_per_s']:
    print(f'decode: {c["decode_tokens_per_s"]:,.0f} tokens/s (generate_until, incl. compiles)')
  print(f'results: {results["output"]}')


def _define_flags():
  flags.DEFINE_string('workdir', None, 'One of our workdirs (latest checkpoint) or hf:/dir.')
  flags.DEFINE_list('tasks', None, 'lm-eval task / group names, comma-separated.')
  flags.DEFINE_string('include_path', '', 'A directory of extra task YAMLs.')
  flags.DEFINE_float('limit', None, 'Documents per task (N >= 1) or a fraction (< 1); unset: all.')
  flags.DEFINE_integer('num_fewshot', None, "Few-shot examples (unset: each task's own).")
  flags.DEFINE_integer('batch_size', 16, 'Rows per forward pass.')
  flags.DEFINE_string('tokenizer', '', "'byte' or a HF tokenizer dir ('' : the source's own).")
  flags.DEFINE_string('output', '', f'Results JSON (default <workdir>/{RESULTS_FILE}).')
  flags.DEFINE_integer('bootstrap_iters', 100000, "lm-eval's bootstrap iterations for stderrs.")
  flags.DEFINE_enum(
    'resident',
    'float',
    ['float', 'quantized'],
    'quantized: a quantized workdir keeps its kernels quantized in memory (dequantized per matmul)',
  )
  flags.DEFINE_bool('debug', False, 'Show Python tracebacks instead of one-line errors.')
  flags.mark_flags_as_required(['workdir', 'tasks'])


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
