"""One prepared accelerator check: the throughput rows users compare, in one short run.

  python -m bench.device_check                   # one GPU/TPU, about 6-8 minutes
  python -m bench.device_check --dry_run         # each row's shapes and command, nothing run
  python -m bench.device_check --tiny            # the same rows at tiny shapes on CPU (tests)
  python -m bench.device_check --only=matmul_bf16,gpt2_124m_b32

Each row runs in a worker subprocess under a time limit (one process per row by default, so an
OOM or XLA abort ends only its row; --tiny shares one worker and restarts it after a crash or a
timeout). Writes device_check.json and device_check.md to --out. MFU is given in two named
conventions: PaLM's 6N + 12·L·H·Q·T (models/count.py) and MaxText's causal-halved 6N + 6·L·H·Q·T.
"""

import dataclasses
import datetime
import importlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from typing import Any

from absl import app, flags

MARK = 'DEVICE_CHECK '  # prefix of the worker's event lines on stdout.
INJECT_ENV = 'DEVICE_CHECK_INJECT'  # tests: 'fail=<row>,hang=<row>' (an impossible config, a hang).

_OUT = flags.DEFINE_string('out', 'bench/device_check', 'folder for device_check.{json,md}')
_ONLY = flags.DEFINE_list('only', [], 'run only these rows (default: all)')
_TINY = flags.DEFINE_bool('tiny', False, 'tiny shapes on CPU, one shared worker (the test mode)')
_DRY = flags.DEFINE_bool('dry_run', False, "print each row's shapes and command; run nothing")
_ISOLATE = flags.DEFINE_bool('isolate', None, 'one process per row (default: on unless --tiny)')
_BUDGET = flags.DEFINE_float('budget_s', None, 'whole-run budget in s (default 480; tiny 300)')
_LIMITS = flags.DEFINE_list(
  'limit_s', [], "per-row time limits overriding the table: 'row=seconds'"
)
_STEPS = flags.DEFINE_integer('train_steps', None, 'timed train steps (default 10; tiny 2)')
_CACHE = flags.DEFINE_string(
  'cache_dir', '/tmp/lmscale_device_check_cache', 'JAX compilation cache for workers (not tiny)'
)
_WORKER = flags.DEFINE_bool('worker', False, 'internal: run the --only rows here, print events')

Overrides = tuple[tuple[str, Any], ...]


@dataclasses.dataclass(frozen=True)
class Row:
  """One measurement: a train step (bench.throughput), KV-cached decode, or a bare matmul."""

  name: str
  kind: str  # 'train' | 'decode' | 'matmul' | 'members'
  what: str
  limit_s: float  # full-size time limit, process start-up and compilation included.
  config: str = ''  # 'configs/gpt2.py:124m' for train and decode rows.
  overrides: Overrides = ()
  tiny: Overrides = ()  # applied after `overrides` in --tiny.


GPT2 = (
  ('train.grad_accum_steps', 1),
  ('train.global_batch_size', 32),
  ('model.attention_impl', 'cudnn'),
  ('model.vocab_multiple', 128),
)
LLAMA = (
  ('train.grad_accum_steps', 1),
  ('train.global_batch_size', 8),
  ('model.attention_impl', 'cudnn'),
  ('model.loss_chunk', 512),
)
TINY = (
  ('model.n_layers', 1),
  ('model.d_model', 64),
  ('model.n_heads', 4),
  ('model.d_ff', 128),
  ('model.vocab_size', 1000),
  ('model.max_len', 32),
  ('model.attention_impl', 'auto'),
  ('data.seq_len', 32),
  ('optimizer.lr', 1e-3),  # the lr is a constant of the compiled step: one lr, one program.
)
TINY_LLAMA = TINY + (('model.n_kv_heads', 2), ('model.loss_chunk', 16))


def tiny(base: Overrides, batch: int) -> Overrides:
  """Tiny overrides with `batch` rows (the same per family, so identical programs compile once)."""
  return base + (('train.global_batch_size', batch),)


ROWS = (
  Row('matmul_bf16', 'matmul', 'bf16 matmul ceiling, 8192^3', 60),
  Row('gpt2_124m_b32', 'train', 'GPT-2 124M, bf16, cuDNN, vocab pad 128', 90,
      'configs/gpt2.py:124m', GPT2, tiny(TINY, 4)),
  Row('llama_1b_b8', 'train', 'LLaMA 1B, bf16, cuDNN, loss chunk 512', 120,
      'configs/llama.py:1b', LLAMA, tiny(TINY_LLAMA, 2)),
  Row('members_1m_k8', 'members', '8 members of ~1M params as one vmapped step vs one at a time', 90),
  Row('gpt2_124m_b64', 'train', 'GPT-2 124M, batch 64', 90,
      'configs/gpt2.py:124m', GPT2 + (('train.global_batch_size', 64),), tiny(TINY, 4)),
  Row('gpt2_350m_b32', 'train', 'GPT-2 350M, bf16, cuDNN, vocab pad 128', 100,
      'configs/gpt2.py:350m', GPT2, tiny(TINY, 4)),
  Row('llama_1b_b16', 'train', 'LLaMA 1B, batch 16 (OOM before the chunked loss)', 120,
      'configs/llama.py:1b', LLAMA + (('train.global_batch_size', 16),), tiny(TINY_LLAMA, 2)),
  Row('gpt2_124m_b32_fp8', 'train', 'GPT-2 124M b32, model.fp8 (simulated fp8 inputs)', 90,
      'configs/gpt2.py:124m', GPT2 + (('model.fp8', True),), tiny(TINY, 4)),
  Row('decode_gpt2_124m', 'decode', 'GPT-2 124M decode, KV cache, 32 x (128 + 256)', 90,
      'configs/gpt2.py:124m', (('model.dtype', 'bfloat16'),), TINY),
  Row('matmul_fp8', 'matmul', 'fp8 (e4m3) matmul ceiling, 8192^3, bf16 out', 60),
)  # fmt: skip
DECODE = {'full': (32, 128, 256), 'tiny': (2, 8, 4)}  # batch, prompt length, new tokens.
MEMBERS = {'full': ('1m', 8, 16, 128), 'tiny': ('100k', 2, 2, 16)}  # size, K, batch, seq_len.
MATMUL = {'full': 8192, 'tiny': 256}


def load_config(row: Row, tiny: bool, inject: dict[str, str] | None = None) -> Any:
  """The row's ConfigDict: its config file, then its overrides (and TINY in tiny mode)."""
  path, _, arg = row.config.partition(':')
  module = importlib.import_module(path.removesuffix('.py').replace('/', '.'))
  c = module.get_config(arg) if arg else module.get_config()
  for key, value in row.overrides + (row.tiny if tiny else ()) + broken(row, inject):
    *sections, name = key.split('.')
    node = c
    for s in sections:
      node = node[s]
    node[name] = value
  return c


def broken(row: Row, inject: dict[str, str] | None) -> Overrides:
  """Tests: an impossible config (heads not dividing d_model) for the row named by 'fail'."""
  return (('model.n_heads', 7),) if inject and inject.get('fail') == row.name else ()


def command(row: Row, tiny: bool, steps: int) -> str:
  """The command line that reproduces the row on its own."""
  if row.kind != 'train':
    return f'python -m bench.device_check --only={row.name}' + (' --tiny' if tiny else '')
  sets = row.overrides + (row.tiny if tiny else ())
  args = ' '.join(f'--config.{k}={v}' for k, v in dict(sets).items())
  return f'python -m bench.throughput --config={row.config} {args} --steps={steps}'


def shape(row: Row, tiny: bool) -> str:
  """Human-readable shapes: batch x length and model dims, or the matmul / decode sizes."""
  mode = 'tiny' if tiny else 'full'
  if row.kind == 'matmul':
    return f'{MATMUL[mode]}^3'
  if row.kind == 'members':
    size, k, batch, seq = MEMBERS[mode]
    return f'{k} members x {batch} x {seq}, bench.members size {size}'
  c = load_config(row, tiny).model
  dims = f'L{c.n_layers} d{c.d_model} h{c.n_heads} V{c.vocab_size}'
  if row.kind == 'decode':
    b, p, n = DECODE[mode]
    return f'{b} x ({p} + {n} new), {dims}'
  cfg = load_config(row, tiny)
  return f'{cfg.train.global_batch_size} x {cfg.data.seq_len}, {dims}'


# ---------------------------------------------------------------- worker (runs the measurements)


def mfu_fields(model: Any, seq_len: int, tokens_per_s: float) -> dict:
  """Model TFLOP/s and MFU under PaLM's and MaxText's (causal-halved attention) conventions."""
  import jax

  from models import count
  from train import flops

  palm = count.train_flops_per_token(model, seq_len)
  maxtext = count.train_flops_per_token(model, seq_len, causal=True)
  peak = flops.peak_flops() * jax.device_count()
  known = peak == peak
  return {
    'model_tflops_per_s': tokens_per_s * palm / 1e12,
    'mfu_palm': tokens_per_s * palm / peak if known else None,
    'mfu_maxtext': tokens_per_s * maxtext / peak if known else None,
    'matmul_params': count.matmul_params(model),
  }


def peak_gib() -> float | None:
  """This process's peak device memory in GiB (None where the backend does not report it)."""
  import jax

  stats = jax.devices()[0].memory_stats()
  return stats['peak_bytes_in_use'] / 2**30 if stats and 'peak_bytes_in_use' in stats else None


def run_train(row: Row, tiny: bool, steps: int, inject: dict[str, str]) -> dict:
  """bench.throughput's compiled step on the row's config: warm-up, then `steps` timed steps."""
  from bench import throughput
  from models import attention

  config = load_config(row, tiny, inject)
  step = throughput.Step(config)
  step(1 if tiny else 2)
  step_s = step(steps)
  tokens_per_s = step.tokens_per_step / step_s
  return {
    'tokens_per_s': tokens_per_s,
    'step_s': step_s,
    'compile_s': step.compile_s,
    'attention_impl': attention.resolve(step.model, config.data.seq_len),
    'final_loss': float(step.metrics['train/loss']),
    **mfu_fields(step.model, config.data.seq_len, tokens_per_s),
  }


def run_decode(row: Row, tiny: bool, inject: dict[str, str]) -> dict:
  """models.generate (greedy, KV cache): new tokens/s over the second, compiled call."""
  import jax
  import numpy as np

  import models

  cfg = models.ModelConfig.make(load_config(row, tiny, inject).model)
  batch, prompt, new = DECODE['tiny' if tiny else 'full']
  params = models.init(cfg, jax.random.key(0))
  prompts = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, prompt), dtype=np.int32)
  start = time.perf_counter()
  jax.block_until_ready(models.generate(cfg, params, prompts, new))
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(models.generate(cfg, params, prompts, new))
  seconds = time.perf_counter() - start
  return {'tokens_per_s': batch * new / seconds, 'step_s': seconds / new, 'compile_s': compile_s}


def run_members(tiny: bool, steps: int) -> dict:
  """bench.members: one member's step and K members' vmapped step, alternately (best of 2): the
  group's tokens/s and its speed-up over the K members' steps one at a time."""
  from bench import members

  size, k, batch, seq = MEMBERS['tiny' if tiny else 'full']
  single = members.Single(size, batch, seq)
  grouped = members.Grouped(size, k, batch, seq)
  t1, tk = [], []
  for _ in range(2):
    t1.append(single(steps))
    tk.append(grouped(steps))
  t1, tk = min(t1), min(tk)
  return {
    'tokens_per_s': k * batch * seq / tk,
    'step_s': tk,
    'single_step_s': t1,
    'members_speedup': k * t1 / tk,
    'members_params': single.params,
    'final_loss': float(grouped.m['train/loss'][0]),
  }


def run_matmul(row: Row, tiny: bool) -> dict:
  """Best of 3 x 10 square matmuls (bf16 or fp8 e4m3 inputs, bf16 out): the device's ceiling."""
  import jax
  import jax.numpy as jnp

  from train import flops

  n = MATMUL['tiny' if tiny else 'full']
  dtype = jnp.float8_e4m3fn if row.name == 'matmul_fp8' else jnp.bfloat16
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16).astype(dtype)
  f = jax.jit(lambda x: jax.lax.dot(x, x, preferred_element_type=jnp.bfloat16))
  start = time.perf_counter()
  jax.block_until_ready(f(a))
  compile_s, best = time.perf_counter() - start, float('inf')
  for _ in range(3):
    start = time.perf_counter()
    for _ in range(10):
      out = f(a)
    jax.block_until_ready(out)
    best = min(best, (time.perf_counter() - start) / 10)
  tflops = 2 * n**3 / best / 1e12
  peak = flops.peak_flops()
  share = tflops * 1e12 / peak if peak == peak and dtype == jnp.bfloat16 else None
  out = {'step_s': best, 'compile_s': compile_s, 'matmul_tflops_per_s': tflops}
  return out | {'mfu_palm': share, 'mfu_maxtext': share}


def fp8_unsupported() -> str | None:
  """Why this device cannot run fp8 matmuls (GPUs before compute capability 8.9), else None."""
  import jax

  device = jax.devices()[0]
  capability = getattr(device, 'compute_capability', None)
  if device.platform == 'gpu' and capability and float(capability) < 8.9:
    return f'fp8 needs compute capability >= 8.9, this GPU has {capability}'
  return None


def measure(row: Row, tiny: bool, steps: int, inject: dict[str, str]) -> dict:
  """One row's figures (raises on failure; 'skipped' where the device lacks fp8)."""
  import jax

  if inject.get('hang') == row.name:
    time.sleep(10**6)
  if 'fp8' in row.name and (reason := fp8_unsupported()):
    return {'status': 'skipped', 'error': reason}
  if row.kind == 'train':
    out = run_train(row, tiny, steps, inject)
  elif row.kind == 'decode':
    out = run_decode(row, tiny, inject)
  elif row.kind == 'members':
    out = run_members(tiny, steps)
  else:
    out = run_matmul(row, tiny)
  device = jax.devices()[0]
  extra = {'device': device.device_kind, 'platform': device.platform, 'peak_gib': peak_gib()}
  return {'status': 'ok', **out, **extra}


def worker(names: list[str], tiny: bool, steps: int) -> None:
  """Run rows in this process, printing a start and a result event line for each."""
  from models import backend

  os.environ.update(backend.xla_env())  # the trainer's per-backend flags, before JAX starts.
  spec = os.environ.get(INJECT_ENV, '')
  inject = dict(kv.split('=', 1) for kv in spec.split(',') if '=' in kv)
  for name in names:
    row = next(r for r in ROWS if r.name == name)
    emit({'event': 'start', 'row': name})
    try:
      result = measure(row, tiny, steps, inject)
    except Exception as e:  # a failing row is reported, the next one still runs.
      result = {'status': 'error', 'error': one_line(f'{type(e).__name__}: {e}')}
    emit({'event': 'result', 'row': name, **result})


def emit(event: dict) -> None:
  """One event line for the supervisor (stdout, marked, flushed)."""
  print(MARK + json.dumps(event), flush=True)


def one_line(text: str, width: int = 300) -> str:
  """The first non-empty line of `text`, cut to `width` characters."""
  lines = [s.strip() for s in text.splitlines() if s.strip()]
  line = lines[0] if lines else '(no message)'
  return line if len(line) <= width else line[: width - 3] + '...'


# ---------------------------------------------------------------- supervisor (runs the workers)

TIMEOUT = {'event': 'timeout'}


class Worker:
  """A worker subprocess for some rows; its event lines are read on a thread into a queue."""

  def __init__(self, names: list[str], tiny: bool, steps: int, log_path: str) -> None:
    cmd = [sys.executable, '-m', 'bench.device_check', '--worker', f'--train_steps={steps}']
    cmd += ['--only=' + ','.join(names)] + (['--tiny'] if tiny else [])
    self.log_path = log_path
    self.log = open(log_path, 'w')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    self.proc = subprocess.Popen(
      cmd,
      cwd=root,
      env=worker_env(tiny, os.path.dirname(log_path)),
      stdout=subprocess.PIPE,
      stderr=self.log,
      text=True,
    )
    self.events: queue.Queue = queue.Queue()
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self) -> None:
    """Queue the worker's event lines; None at its end."""
    for line in self.proc.stdout:
      if line.startswith(MARK):
        self.events.put(json.loads(line[len(MARK) :]))
    self.events.put(None)

  def next(self, timeout_s: float) -> dict | None:
    """The next event; None when the worker has exited, TIMEOUT after `timeout_s`."""
    try:
      return self.events.get(timeout=max(timeout_s, 0.0))
    except queue.Empty:
      return TIMEOUT

  def stop(self) -> str:
    """Kill the worker if still running; the last line of its stderr."""
    if self.proc.poll() is None:
      self.proc.kill()
    self.proc.wait()
    self.log.close()
    with open(self.log_path) as f:
      lines = [s.strip() for s in f if s.strip()]
    return one_line(lines[-1] if lines else f'exit code {self.proc.returncode}, no output')


# Tiny: a quicker, less optimising CPU compile (tiny timings mean nothing; compile time does).
TINY_XLA_FLAGS = ['--xla_backend_optimization_level=0', '--xla_llvm_disable_expensive_passes=true']


def worker_env(tiny: bool, out: str) -> dict[str, str]:
  """Workers share a persistent compilation cache: --cache_dir, or in tiny mode a fresh one under
  `out` caching every program (identical tiny rows compile once); tiny: one CPU device."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get('TF_CPP_MIN_LOG_LEVEL', '3'))
  if tiny:
    env['JAX_PLATFORMS'] = 'cpu'
    xla = env.get('XLA_FLAGS', '').split()
    xla = [f for f in xla if 'force_host_platform_device_count' not in f] + TINY_XLA_FLAGS
    env['XLA_FLAGS'] = ' '.join(xla)
    env['JAX_COMPILATION_CACHE_DIR'] = os.path.abspath(os.path.join(out, 'jax_cache'))
    env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
    env['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  elif _CACHE.value:
    env.setdefault('JAX_COMPILATION_CACHE_DIR', _CACHE.value)
  return env


def run_worker(
  w: Worker, names: list[str], limits: dict[str, float], end: float, results: dict
) -> None:
  """Collect a worker's results; a row past its limit (or the run's budget) kills the worker.
  The first row's limit counts from the process start (imports and device start-up included)."""
  current, started = names[0], time.monotonic()
  deadline = started + limits[current]
  while True:
    event = w.next(min(deadline, end) - time.monotonic())
    if event is TIMEOUT:
      w.stop()
      why = 'the run budget ran out' if end < deadline else f'its limit of {limits[current]:g} s'
      results[current] = {'status': 'timeout', 'error': f'timed out: {why}'}
      results[current]['wall_s'] = time.monotonic() - started
      return
    if event is None:
      error = w.stop()
      if current not in results:
        code = w.proc.returncode
        results[current] = {'status': 'error', 'error': f'worker died (exit {code}): {error}'}
      return
    now = time.monotonic()
    if event['event'] == 'start':
      if event['row'] != names[0]:
        current, started, deadline = event['row'], now, now + limits[event['row']]
    else:
      fields = {k: v for k, v in event.items() if k not in ('event', 'row')}
      results[event['row']] = fields | {'wall_s': now - started}


def supervise(
  rows: list[Row], tiny: bool, isolate: bool, steps: int, budget_s: float, out: str
) -> dict[str, dict]:
  """Run every row in workers (one per row when isolating); restart after a crash or timeout."""
  limits = row_limits(rows, tiny)
  results: dict[str, dict] = {}
  pending = [r.name for r in rows]
  end = time.monotonic() + budget_s
  for n in range(len(rows)):
    if not pending:
      break
    if end - time.monotonic() < 1:
      for name in pending:
        results[name] = {'status': 'skipped', 'error': 'the run budget ran out first'}
      break
    names = pending[:1] if isolate else list(pending)
    print(f'[device_check] {", ".join(names)}', flush=True)
    w = Worker(names, tiny, steps, os.path.join(out, f'worker{n}.log'))
    run_worker(w, names, limits, end, results)
    for name in names:
      if name in results and name in pending:
        pending.remove(name)
        print(f'[device_check] {name}: {summary(results[name])}', flush=True)
  return results


def row_limits(rows: list[Row], tiny: bool) -> dict[str, float]:
  """Per-row limits: the table's (90 s in tiny mode), then --limit_s=row=seconds."""
  limits = {r.name: 90.0 if tiny else r.limit_s for r in rows}
  for item in _LIMITS.value:
    name, _, seconds = item.partition('=')
    if name not in limits:
      raise app.UsageError(f'--limit_s: unknown row {name!r}; rows: {", ".join(limits)}')
    limits[name] = float(seconds)
  return limits


def summary(result: dict) -> str:
  """A row's progress line: its figure, or its status and error."""
  if result['status'] != 'ok':
    return f'{result["status"]}: {result.get("error", "")}'
  tok = result.get('tokens_per_s')
  return f'ok, {tok:,.0f} tokens/s' if tok else f'ok, {result["matmul_tflops_per_s"]:.3g} TFLOP/s'


# ---------------------------------------------------------------- report


def report(rows: list[Row], results: dict[str, dict], tiny: bool, steps: int) -> dict:
  """The JSON document: run facts, then one entry per row (spec, command, figures or error)."""
  ok = [results[r.name] for r in rows if results[r.name].get('device')]
  ceiling = results.get('matmul_bf16', {}).get('matmul_tflops_per_s')
  entries = []
  for r in rows:
    res = dict(results[r.name])
    if ceiling and res.get('model_tflops_per_s'):
      res['of_bf16_matmul'] = res['model_tflops_per_s'] / ceiling
    spec = {'row': r.name, 'kind': r.kind, 'what': r.what, 'shape': shape(r, tiny)}
    entries.append(spec | {'command': command(r, tiny, steps)} | res)
  return {
    'date': datetime.date.today().isoformat(),
    'device': ok[0]['device'] if ok else None,
    'platform': ok[0]['platform'] if ok else None,
    'tiny': tiny,
    'timed_steps': steps,
    'conventions': {
      'mfu_palm': 'PaLM App. B: 6N + 12·L·H·Q·T per token (full attention matrix)',
      'mfu_maxtext': 'MaxText: 6N + 6·L·H·Q·T per token (causal half of the attention matrix)',
    },
    'rows': entries,
  }


def fmt(value: Any, spec: str) -> str:
  """`value` formatted by `spec`, '-' when missing."""
  return '-' if value is None else format(value, spec)


def markdown(doc: dict) -> str:
  """The markdown table of `report`'s document, with a line naming the device and conventions."""
  head = (
    f'Measured {doc["date"]} on {doc["device"] or "?"} ({doc["platform"] or "?"}), '
    f'`python -m bench.device_check{" --tiny" if doc["tiny"] else ""}`, {doc["timed_steps"]} '
    'timed steps. MFU PaLM: 6N + 12·L·H·Q·T; MFU MaxText: 6N + 6·L·H·Q·T (causal half).\n\n'
    '| row | shape | tokens/s | step ms | TFLOP/s | MFU PaLM | MFU MaxText | of bf16 matmul '
    '| peak GiB | status | command |\n|' + '---|' * 11
  )
  lines = [head]
  for e in doc['rows']:
    tflops = e.get('model_tflops_per_s') or e.get('matmul_tflops_per_s')
    status = e['status'] if e['status'] == 'ok' else f'{e["status"]}: {e.get("error", "")}'
    cells = [
      f'{e["row"]} ({e["what"]})',
      e['shape'],
      fmt(e.get('tokens_per_s'), ',.0f'),
      fmt(e['step_s'] * 1e3 if e.get('step_s') else None, '.1f'),
      fmt(tflops, '.3g'),
      fmt(e.get('mfu_palm'), '.1%'),
      fmt(e.get('mfu_maxtext'), '.1%'),
      fmt(e.get('of_bf16_matmul'), '.1%'),
      fmt(e.get('peak_gib'), '.1f'),
      status.replace('|', '/'),
      f'`{e["command"]}`',
    ]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def dry_run(rows: list[Row], tiny: bool, steps: int, budget_s: float) -> None:
  """Print each row's shapes, time limit and command; nothing is run."""
  limits = row_limits(rows, tiny)
  for r in rows:
    print(f'{r.name}: {r.what}\n  shape: {shape(r, tiny)}  limit: {limits[r.name]:g} s')
    print(f'  command: {command(r, tiny, steps)}')
  total = sum(limits.values())
  print(f'{len(rows)} rows; limits sum to {total:g} s, the run stops at {budget_s:g} s')


def main(argv: list[str]) -> None:
  """Worker, dry run, or the whole check: run the rows, write the JSON and the table."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  names = [r.name for r in ROWS]
  unknown = sorted(set(_ONLY.value) - set(names))
  if unknown:
    raise app.UsageError(f'--only: unknown rows {unknown}; rows: {", ".join(names)}')
  rows = [r for r in ROWS if not _ONLY.value or r.name in _ONLY.value]
  tiny = _TINY.value
  steps = _STEPS.value or (2 if tiny else 10)
  budget = _BUDGET.value or (300.0 if tiny else 480.0)
  if _WORKER.value:
    return worker([r.name for r in rows], tiny, steps)
  if _DRY.value:
    return dry_run(rows, tiny, steps, budget)
  os.makedirs(_OUT.value, exist_ok=True)
  isolate = not tiny if _ISOLATE.value is None else _ISOLATE.value
  start = time.monotonic()
  results = supervise(rows, tiny, isolate, steps, budget, _OUT.value)
  doc = report(rows, results, tiny, steps) | {'wall_s': time.monotonic() - start}
  with open(os.path.join(_OUT.value, 'device_check.json'), 'w') as f:
    json.dump(doc, f, indent=1, allow_nan=False)
  table = markdown(doc)
  with open(os.path.join(_OUT.value, 'device_check.md'), 'w') as f:
    f.write(table)
  print(table + f'\nwall {doc["wall_s"]:.0f} s; wrote {_OUT.value}/device_check.{{json,md}}')


if __name__ == '__main__':
  app.run(main)
