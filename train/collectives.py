"""Bytes each device sends per optimizer step, by collective, for the trainer's compiled train step
on a (data, fsdp, tensor) mesh; with FLOPs per device, when a step becomes communication-bound.

  python -m train.collectives --config=configs/gpt2.py:124m --devices=64,256 \
      --mesh=data=-1 --mesh=fsdp=-1

What XLA emits, read from the compiled step (tests/train/test_collectives.py; the same rules matched
GPT-2 124M and LLaMA 1B lowered for 8, 64 and 256 CPU devices). k = train.grad_accum_steps
microbatches in a lax.scan, B_m = global_batch / k rows, S = seq_len, D = d_model, V = vocab;
params are float32 and so is every buffer below, whatever model.dtype: the cast to the compute
dtype follows the gather.
* fsdp all-gathers of the params sharded on 'embed': per layer inside the layer scan, the
  layer's weights and biases in the forward and its weight matrices again in the backward (with
  remat also a bias, < 0.2 %), so k times per step each way; the head (tied embedding or
  unembed) and the position table once per step, hoisted out of the microbatch loop (the head
  twice, forward and backward, when model.dtype is not float32). With the layer scan fully
  unrolled (scan_unroll=0 on CPU) the layer gathers are hoisted too; without scan_layers the
  forward's gathers serve the backward.
* gradients, every microbatch (k times per step, not once after accumulating): weight matrices
  and the head are reduce-scattered over fsdp, then their shards all-reduced over data; the
  rest (norms, biases, position table) is all-reduced whole over data x fsdp. The lookup
  table's gradient is reduced apart from the head's even when tied (below).
* the embedding lookup (table sharded on 'embed', tokens on (data, fsdp)) when fsdp > 1: XLA
  gathers the table if that moves no less than gathering the tokens would ((B_m/data)*S tokens
  plus the [B_m, S, D/fsdp] activations it then gathers over data): one fsdp all-gather of the
  table per step, and its gradient all-reduced whole over data x fsdp per microbatch. Otherwise,
  per microbatch: int32 tokens all-gathered over fsdp, activations all-to-all'd over fsdp
  (forward, and backward when data = 1); with data > 1 also the [B_m, S, D/fsdp] activations
  all-gathered over data (XLA's 'Involuntary full rematerialization') and, for the backward,
  the cheaper of all-gathering the [B_m, S, D] activation grads over data x fsdp (when
  B_m*S < V) or all-reducing the whole table gradient over data x fsdp. With data = 1 the
  table gradient needs no collective; with fsdp = 1 it is all-reduced over data.
Not counted: scalar all-reduces of the loss and metrics (bytes), and tensor-parallel activation
collectives (tensor > 1 only shrinks the param and gradient buffers here).
XLA:CPU, where this is checked, has no reduce-scatter pass (it all-reduces the whole gradient
and slices it); GPU and TPU form the reduce-scatter counted here, and may also hoist the
data-parallel all-reduce of accumulated gradients out of the microbatch loop
(WhileLoopAllReduceCodeMotion), dividing those bytes by k: not verified here. `platform` only
resolves model.scan_unroll = 0 (fully unrolled on 'cpu').
"""

import dataclasses
import math

import jax
import ml_collections
from absl import flags
from ml_collections import config_flags

import models
from configs import schema
from models import count
from train import cli, sharding
from train import flops as flops_lib

KINDS = ('all-gather', 'reduce-scatter', 'all-reduce', 'all-to-all')
_DATA, _FSDP, _BOTH = ('data',), ('fsdp',), ('data', 'fsdp')


@dataclasses.dataclass(frozen=True)
class Collective:
  """One collective of the step: `count` executions of a `buffer_bytes` buffer over `group`
  devices along mesh `axes`. The buffer is the gathered result (all-gather), the full input
  (reduce-scatter), the reduced array (all-reduce) or one device's input (all-to-all)."""

  what: str
  kind: str
  axes: tuple[str, ...]
  group: int
  buffer_bytes: float
  count: int

  @property
  def bytes_per_device(self) -> float:
    """Bytes one device sends per step with ring algorithms: (n-1)/n of the buffer per execution
    (2(n-1)/n for all-reduce: a reduce-scatter then an all-gather)."""
    ring = (self.group - 1) / self.group
    return (2.0 if self.kind == 'all-reduce' else 1.0) * ring * self.buffer_bytes * self.count


@dataclasses.dataclass(frozen=True)
class StepCollectives:
  mesh: dict
  grad_accum_steps: int
  collectives: tuple[Collective, ...]
  flops_per_device: float  # train/flops.py's MFU convention x tokens per step / devices.
  note: str = ''

  @property
  def bytes_per_device(self) -> float:
    return sum(c.bytes_per_device for c in self.collectives)

  def by_kind(self) -> dict:
    """kind -> bytes one device sends per step."""
    out = dict.fromkeys(KINDS, 0.0)
    for c in self.collectives:
      out[c.kind] += c.bytes_per_device
    return out

  @property
  def flops_per_byte(self) -> float:
    """Arithmetic intensity of the step against the network: compute-bound while this exceeds
    peak FLOP/s / link bytes/s (with communication fully overlapped with compute)."""
    b = self.bytes_per_device
    return self.flops_per_device / b if b else math.inf


def comm_time(step: StepCollectives, bandwidth_bytes_per_s: float) -> float:
  """Seconds per step spent sending, at `bandwidth_bytes_per_s` per device and direction."""
  return step.bytes_per_device / bandwidth_bytes_per_s


def _layers_rolled(model: models.ModelConfig, platform: str) -> bool:
  """Whether the layer scan stays a loop (models/backend.py: scan_unroll=0 unrolls fully on CPU)."""
  if not model.scan_layers:
    return False
  unroll = getattr(model, 'scan_unroll', 1) or (model.n_layers if platform == 'cpu' else 1)
  return unroll < model.n_layers


def _param_bytes(model: models.ModelConfig, mesh_shape: dict) -> dict:
  """Bytes of the params by role, each divided by its non-fsdp (tensor) sharding, from the
  logical axes of the initialised pytree and the trainer's own rules (sharding.logical_to_mesh)."""
  mesh = jax.sharding.AbstractMesh(
    tuple(mesh_shape[a] for a in sharding.MESH_AXES), sharding.MESH_AXES
  )
  out = dict.fromkeys(
    ('layer_matrix', 'layer_vector', 'head', 'table', 'pos', 'replicated', 'other'), 0.0
  )
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
  specs = jax.tree_util.tree_leaves_with_path(models.logical_axes(model), is_leaf=is_spec)
  for (path, spec), shape in zip(specs, jax.tree.leaves(models.param_shapes(model))):
    placed = sharding.logical_to_mesh(spec, shape.shape, mesh).spec
    mesh_axes = [a for e in placed if e for a in ((e,) if isinstance(e, str) else e)]
    other = math.prod(mesh_shape[a] for a in mesh_axes if a != 'fsdp')
    nbytes = math.prod(shape.shape) * shape.dtype.itemsize / other
    top = str(path[0].key)
    on_fsdp = 'fsdp' in mesh_axes
    if top == 'layers' or top.startswith('layer_'):
      matrix = sum(1 for name in spec if name != 'layers') >= 2
      role = 'replicated' if not on_fsdp else 'layer_matrix' if matrix else 'layer_vector'
    elif top == 'embed':
      out['table'] += nbytes
      role = 'head' if model.tie_embeddings else None
    elif top == 'unembed':
      role = 'head'
    elif top == 'pos_embed':
      role = 'pos'
    else:
      role = 'other'
    if role in ('head', 'pos') and not on_fsdp:
      role = 'other'  # not divisible by fsdp: replicated, so never gathered.
    if role:
      out[role] += nbytes
  return out


def step_collectives(
  config: schema.Config | ml_collections.ConfigDict, num_devices: int, platform: str = 'tpu'
) -> StepCollectives:
  """The collectives of one optimizer step of `config`'s train step on `num_devices` (the rules
  in the module docstring); `platform` only resolves model.scan_unroll = 0."""
  config = schema.Config.make(config)  # typed once; a parsed Config passes as it is.
  model = config.model
  shape = sharding.mesh_shape(config.mesh, num_devices)
  n_d, n_f = shape['data'], shape['fsdp']
  k = int(config.train.grad_accum_steps)
  batch, seq = int(config.train.global_batch_size), int(config.data.seq_len)
  if batch % (n_d * n_f * k):
    raise ValueError(
      f'global_batch_size {batch} is not a multiple of data*fsdp*grad_accum_steps = {n_d}*{n_f}*{k}'
    )
  rows = _param_rows(model, _param_bytes(model, shape), n_f, k, platform)
  rows += _lookup_rows(model, _param_bytes(model, shape)['table'], shape, batch // k, seq, k)
  groups = {_DATA: n_d, _FSDP: n_f, _BOTH: n_d * n_f}
  collectives = tuple(
    Collective(what, kind, axes, groups[axes], float(buf), int(count))
    for what, kind, axes, buf, count in rows
    if groups[axes] > 1 and buf > 0 and count > 0
  )
  flops = count.train_flops_per_token(model, seq) * batch * seq / num_devices
  note = 'tensor-parallel activation collectives not counted' if shape['tensor'] > 1 else ''
  return StepCollectives(shape, k, collectives, flops, note)


def _param_rows(model: models.ModelConfig, p: dict, n_f: int, k: int, platform: str) -> list:
  """(what, kind, axes, buffer bytes, count) of the param gathers and gradient reductions."""
  rolled = _layers_rolled(model, platform)
  gathers = k if rolled else 1
  scanned = int(model.scan_layers)  # unscanned: the forward's gathered weights serve the backward.
  head_gathers = 1 if model.dtype == 'float32' else 2
  other = p['layer_vector'] + p['replicated'] + p['pos'] + p['other']
  return [
    ('layer params, forward', 'all-gather', _FSDP, p['layer_matrix'] + p['layer_vector'], gathers),
    ('layer weights, backward', 'all-gather', _FSDP, p['layer_matrix'], gathers * scanned),
    ('head', 'all-gather', _FSDP, p['head'], head_gathers),
    ('position table', 'all-gather', _FSDP, p['pos'], 1),
    ('weight + head grads', 'reduce-scatter', _FSDP, p['layer_matrix'] + p['head'], k),
    ('weight + head grad shards', 'all-reduce', _DATA, (p['layer_matrix'] + p['head']) / n_f, k),
    ('other grads', 'all-reduce', _BOTH, other, k),
  ]


def _lookup_rows(
  model: models.ModelConfig, table: float, shape: dict, b_m: int, seq: int, k: int
) -> list:
  """The embedding lookup's collectives: XLA's gather partitioner picks the cheaper of gathering
  the tokens and moving the activations, or (at least as much to move) gathering the table."""
  n_d, n_f, d, v = shape['data'], shape['fsdp'], model.d_model, model.vocab_size
  act = 4  # the lookup runs on the float32 table.
  table_gathered = n_f > 1 and b_m // n_d * seq + b_m * seq * d // n_f >= v * d
  # ... and on data x fsdp meshes the smaller of the activation grads and the table grad.
  grads_gathered = n_d > 1 and n_f > 1 and not table_gathered and b_m * seq < v
  rows = []
  if n_f == 1:
    rows.append(('lookup table grad', 'all-reduce', _DATA, table, k))
  elif (n_d > 1 or table_gathered) and not grads_gathered:
    rows.append(('lookup table grad', 'all-reduce', _BOTH, table, k))
  elif n_d > 1:
    rows.append(('lookup table grad shards', 'all-reduce', _DATA, table / n_f, k))
  if table_gathered:  # a gather of its own even when tied (not merged with the head's).
    return rows + [('lookup table', 'all-gather', _FSDP, table, 1)]
  if n_f == 1:
    return rows
  local = b_m // (n_d * n_f) * seq * d * act
  rows += [
    ('tokens for the lookup', 'all-gather', _FSDP, b_m // n_d * seq * 4, k),
    ('looked-up activations', 'all-to-all', _FSDP, local, k),
  ]
  if n_d == 1:
    return rows + [('activation grads', 'all-to-all', _FSDP, local, k)]
  rows.append(('looked-up activations', 'all-gather', _DATA, b_m * seq * d // n_f * act, k))
  if grads_gathered:
    rows.append(('activation grads', 'all-gather', _BOTH, b_m * seq * d * act, k))
  return rows


def _fit_accum(config: ml_collections.ConfigDict, num_devices: int) -> int:
  """The largest grad_accum_steps <= the config's that divides the rows per data x fsdp shard."""
  shape = sharding.mesh_shape(config.mesh, num_devices)
  rows = config.train.global_batch_size // (shape['data'] * shape['fsdp'])
  return max(k for k in range(1, config.train.grad_accum_steps + 1) if rows % k == 0)


def _mesh_arg(text: str) -> dict:
  """'data=2,fsdp=-1' -> {'data': 2, 'fsdp': -1, 'tensor': 1} (axes not named are 1)."""
  out = dict.fromkeys(sharding.MESH_AXES, 1)
  for item in filter(None, text.split(',')):
    name, value = item.split('=')
    if name not in out:
      raise ValueError(f'--mesh: unknown axis {name!r}; axes are {sharding.MESH_AXES}')
    out[name] = int(value)
  return out


def main(argv: list[str]) -> None:
  del argv
  jax.config.update('jax_platforms', 'cpu')  # shapes only: no accelerator needed or taken.
  config = _CONFIG.value
  meshes = [_mesh_arg(m) for m in _MESH.value] or [dict(config.mesh)]
  params = sum(math.prod(x.shape) for x in jax.tree.leaves(models.param_shapes(config.model)))
  print(
    '| params | devices | mesh (data x fsdp x tensor) | k | all-gather | reduce-scatter '
    '| all-reduce | all-to-all | total MB | GFLOP | FLOP/byte |'
  )
  print('|---|---|---|---|---|---|---|---|---|---|---|')
  for devices in _DEVICES.value:
    for mesh in meshes:
      c = config.copy_and_resolve_references()
      c.mesh.update(mesh)
      c.train.grad_accum_steps = _fit_accum(c, int(devices))
      step = step_collectives(c, int(devices), _PLATFORM.value)
      kinds = step.by_kind()
      m = step.mesh
      cells = [f'{kinds[kind] / 1e6:,.0f}' for kind in KINDS]
      print(
        f'| {params / 1e6:,.0f}M | {devices} | {m["data"]} x {m["fsdp"]} x {m["tensor"]} '
        f'| {step.grad_accum_steps} | '
        + ' | '.join(cells)
        + f' | {step.bytes_per_device / 1e6:,.0f} | {step.flops_per_device / 1e9:,.0f} '
        f'| {step.flops_per_byte:,.0f} |'
      )
      if _DETAIL.value:
        for x in step.collectives:
          print(
            f'|   |   | {x.what}: {x.kind} over {" x ".join(x.axes)} ({x.group}) | x{x.count} '
            f'| buffer {x.buffer_bytes / 1e6:,.2f} MB | {x.bytes_per_device / 1e6:,.1f} MB |'
          )
      if step.note:
        print(f'|   |   | {step.note} |')
  print('\nCompute-bound while FLOP/byte > peak FLOP/s / (bidirectional link bandwidth / 2):')
  for name, chip in flops_lib.CHIPS.items():
    if chip.link_bytes_per_s:
      print(f'  {name}: {chip.peak_flops / (chip.link_bytes_per_s / 2):,.0f} (published figures)')


if __name__ == '__main__':
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path[:arg]).')
  _DEVICES = flags.DEFINE_list('devices', ['256'], 'Device counts, e.g. 64,256.')
  _MESH = flags.DEFINE_multi_string(
    'mesh', [], "Mesh, e.g. 'fsdp=-1' or 'data=4,fsdp=-1' (unnamed axes 1); default config.mesh."
  )
  _PLATFORM = flags.DEFINE_enum(
    'platform', 'tpu', ['tpu', 'gpu', 'cpu'], 'Resolves model.scan_unroll=0.'
  )
  _DETAIL = flags.DEFINE_bool('detail', False, 'One row per collective.')
  flags.mark_flags_as_required(['config'])
  cli.run(main)
