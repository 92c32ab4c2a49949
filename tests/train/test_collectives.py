"""train/collectives.py against the collectives of the compiled train step (bench/throughput.py's
Step, i.e. context.setup's shardings and make_train_step) on 8 simulated CPU devices, read from the
optimized HLO with each op counted as often as its enclosing while loops run."""

import collections
import math
import re

import jax
import pytest
from helpers import LLAMA_BLOCK

from bench.throughput import Step
from configs import base
from train import collectives

DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'bf16': 2, 'f16': 2, 's32': 4, 'u32': 4, 'f32': 4}
SHAPE = re.compile(r'\b(' + '|'.join(DTYPE_BYTES) + r')\[([\d,]*)\]')
COMPUTATION = re.compile(r'^(?:ENTRY )?%([\w.\-]+) \(.*\{\s*$')
INSTRUCTION = re.compile(r'^\s+(?:ROOT )?%[\w.\-]+ = (.+?) ([a-z\-]+)\((.*)$')
COLLECTIVES = ('all-gather', 'reduce-scatter', 'all-reduce', 'all-to-all', 'collective-permute')
# Measured bytes per step that the prediction may miss per (kind, group): scalar all-reduces of
# the loss, token count and metrics, alone or riding in the gradients' combined all-reduces.
SCALAR_SLACK = 1024


def _bytes(type_text: str) -> int:
  return sum(
    DTYPE_BYTES[t] * math.prod(int(n) for n in dims.split(',') if n)
    for t, dims in SHAPE.findall(type_text)
  )


def _group(attrs: str, num_devices: int) -> int:
  """Devices per replica group in any of XLA's spellings."""
  if m := re.search(r'replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}', attrs):
    sizes = {a: int(n) for a, n in re.findall(r"'(\w+)'=(\d+)", m.group(1))}
    return math.prod(sizes[a] for a in re.findall(r"'(\w+)'", m.group(2)))
  if m := re.search(r'replica_groups=\[\d+,(\d+)\]<=', attrs):
    return int(m.group(1))
  if m := re.search(r'replica_groups=\{\{([\d,]*)\}', attrs):
    return len(m.group(1).split(','))
  return num_devices


def hlo_collectives(hlo: str, num_devices: int) -> collections.Counter:
  """(kind, group size) -> buffer bytes per step (the prediction's convention: all-gather result,
  reduce-scatter input, all-reduce array, all-to-all input), with ops inside while loops counted
  trip-count times."""
  bodies, current, entry = {}, None, None
  for line in hlo.splitlines():
    if m := COMPUTATION.match(line):
      current = m.group(1)
      bodies[current] = []
      entry = current if line.startswith('ENTRY') else entry
    elif line.startswith('}'):
      current = None
    elif current:
      bodies[current].append(line)
  callees = collections.defaultdict(list)
  for name, lines in bodies.items():
    for line in lines:
      if not (m := INSTRUCTION.match(line)):
        continue
      attrs = m.group(3)
      if m.group(2) == 'while':
        trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', attrs)
        assert trips, f'while loop without a known trip count: {line[:200]}'
        body = re.search(r'body=%([\w.\-]+)', attrs).group(1)
        callees[name].append((body, int(trips.group(1))))
        continue
      for group in re.findall(r'(?:calls|to_apply|branch_computations)=\{?([%\w.\-, ]+)', attrs):
        callees[name] += [(c.strip(' %'), 1) for c in group.split(',') if c.strip(' %') in bodies]
  runs = collections.Counter()

  def visit(name, times):
    runs[name] += times
    for callee, trips in callees[name]:
      visit(callee, times * trips)

  visit(entry, 1)
  out = collections.Counter()
  for name, lines in bodies.items():
    for line in lines:
      m = INSTRUCTION.match(line)
      if not m or m.group(2).removesuffix('-start') not in COLLECTIVES:
        continue
      kind, n = m.group(2).removesuffix('-start'), _group(m.group(3), num_devices)
      size = _bytes(m.group(1)) * (n if kind == 'reduce-scatter' else 1)
      # XLA:CPU reduces gradients with all-reduce where GPU/TPU reduce-scatter: compare as one.
      out['reduce' if kind in ('all-reduce', 'reduce-scatter') else kind, n] += size * runs[name]
  return out


def predicted(step: collectives.StepCollectives) -> collections.Counter:
  out = collections.Counter()
  for c in step.collectives:
    kind = 'reduce' if c.kind in ('all-reduce', 'reduce-scatter') else c.kind
    out[kind, c.group] += c.buffer_bytes * c.count
  return out


def tiny_config(family, data, fsdp, grad_accum, dtype):
  c = base.get_config()
  c.model.update(
    d_model=64, n_layers=2, n_heads=4, d_ff=256, max_len=32, vocab_size=257, dtype=dtype
  )
  if family == 'llama':
    c.model.update(LLAMA_BLOCK, n_kv_heads=2, tie_embeddings=False)
  if 'scan_unroll' in c.model:
    c.model.scan_unroll = 1  # a rolled layer loop, as on GPU and TPU (CPU unrolls by default).
  c.data.seq_len = 32
  c.train.update(global_batch_size=16, grad_accum_steps=grad_accum, num_steps=10)
  c.optimizer.warmup_steps = 1
  c.mesh.update(data=data, fsdp=fsdp, tensor=1)
  return c


@pytest.mark.parametrize(
  'family,data,fsdp,grad_accum,dtype',
  [
    ('gpt2', 1, 8, 2, 'float32'),  # pure FSDP, 2 microbatches: gathers per microbatch and layer.
    ('llama', 8, 1, 2, 'float32'),  # pure data parallel: gradients all-reduced per microbatch.
    # data x fsdp: the head gathered twice in bf16.
    pytest.param('gpt2', 2, 4, 1, 'bfloat16', marks=pytest.mark.slow),
    # data x fsdp, B_m*S < V: activation grads gathered rather than the table grad reduced.
    pytest.param('llama', 2, 4, 2, 'bfloat16', marks=pytest.mark.slow),
  ],
)
def test_predicted_bytes_match_compiled_step(family, data, fsdp, grad_accum, dtype):
  assert jax.device_count() == 8
  config = tiny_config(family, data, fsdp, grad_accum, dtype)
  step = collectives.step_collectives(config, 8, platform='cpu')
  want = predicted(step)
  got = hlo_collectives(Step(config).compiled.as_text(), 8)
  print({key: (got[key], want[key]) for key in sorted(set(got) | set(want))})
  assert not any(kind == 'collective-permute' for kind, _ in got)
  for key in set(got) | set(want):
    assert abs(got[key] - want[key]) <= 0.03 * want[key] + SCALAR_SLACK, (key, got[key], want[key])
  assert sum(got.values()) == pytest.approx(sum(want.values()), rel=0.01)


def test_ring_traffic_per_device():
  gather = collectives.Collective('w', 'all-gather', ('fsdp',), 4, 100.0, 2)
  reduce = collectives.Collective('g', 'all-reduce', ('data',), 4, 100.0, 2)
  assert gather.bytes_per_device == 150.0  # (n-1)/n of the buffer, twice.
  assert reduce.bytes_per_device == 300.0  # 2(n-1)/n: reduce-scatter then all-gather.
  step = collectives.StepCollectives({}, 2, (gather, reduce), flops_per_device=9e3)
  assert step.by_kind()['all-reduce'] == 300.0
  assert step.flops_per_byte == 20.0
  assert collectives.comm_time(step, 450.0) == 1.0
