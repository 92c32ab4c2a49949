"""Quantized kernels that stay quantized in memory: each compressible kernel of a packed quantized
workdir (models/quantize.py's `quantize_tree` output) is held as its values + float32 scales and
dequantized by qwix per matmul inside the jitted forward (models/transformer.py `_dense`).

int8 and fp8 values are held as int8 / float8_e4m3fn; int4, int3 and nf4 two per uint8 (the disk
bytes, pairs along the fan-out axis O), unpacked in the forward: JAX counts a jnp.int4 array at
one byte per value, so only the packed form halves the memory on every backend. Everything else
(embeddings, readout, norms, biases) stays float32. A params tree with `Held` leaves goes to
`Transformer.apply` through `variables`: the kernels in a 'quantized' collection. QLoRA
(model.lora_base_resident) trains adapters on such a base: its Held kernels are `split` off the
params into a frozen input of the train step and `join`ed back inside the loss.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from models import rtn
from models.config import PyTree

COLLECTION = 'quantized'
PACKED = rtn.NIBBLES  # int4, int3, nf4: held two per byte.


@flax.struct.dataclass
class Held:
  """One kernel held quantized: values [N, I, O] (int4/int3: uint8 [N, I, O/2]), scale [N, I/g,
  O], AWQ's per-fan-in scale [N, I] or None; the scheme is static."""

  q: jax.Array
  scale: jax.Array
  awq_scale: jax.Array | None
  scheme: str = flax.struct.field(pytree_node=False)


def _unpack(b: jax.Array, scheme: str) -> jax.Array:
  """uint8 [..., O/2] -> [..., O]: even index the low nibble (rtn._pack_int4); int4 / int3
  sign-extended, nf4's level indices unsigned (uint4)."""
  nib = jnp.stack([b & 0xF, b >> 4], -1).reshape(*b.shape[:-1], 2 * b.shape[-1])
  if scheme == 'nf4':
    return nib.astype(jnp.uint4)
  nib = nib.astype(jnp.int8)
  return jnp.where(nib > 7, nib - 16, nib).astype(jnp.int4)


def dequantize(held: Held, shape: tuple) -> jax.Array:
  """The float32 kernel of `shape` (qwix.dequantize of the held values and scales), as the
  dequantize-on-load path computes it (models/quantize.py `dequantize_tree`)."""
  import qwix  # lazy, as in models/rtn.py.

  v = _unpack(held.q, held.scheme) if held.scheme in PACKED else held.q
  w = qwix.dequantize(
    qwix.QArray(qvalue=v, scale=held.scale, zero_point=None, qtype=rtn.QTYPES[held.scheme])
  )
  if held.awq_scale is not None:  # AWQ: the kernel was quantized as w * s (per fan-in entry).
    w = w / held.awq_scale[..., :, None]
  return w.reshape(shape)


def hold(packed: dict, name: str, dims: tuple[int, int, int], scheme: str) -> Held:
  """Kernel `name` ([N, I, O] = `dims`, rtn.dims) of models/quantize.py `quantize_tree`'s output
  `packed` (numpy) as held in memory: int4 / int3 kept two per byte, AWQ's scale when present."""
  n, i, o = dims
  if scheme in PACKED:
    if o % 2:
      raise ValueError(f'{name}: fan-out {o} is odd; {scheme} is held two values per byte')
    q = np.asarray(packed[name + ':q']).reshape(n, i, o // 2)
  else:
    q = np.asarray(rtn.decode(packed[name + ':q'], scheme, dims))
  awq = packed.get(name + ':awq_scale')
  return Held(q, np.asarray(packed[name + ':scale']), awq, scheme)


def is_held(x) -> bool:
  return isinstance(x, Held)


def values(x: jax.Array | Held) -> int:
  """The values an array holds, or a Held kernel (two per byte when packed)."""
  if not is_held(x):
    return x.size
  return x.q.size * (2 if x.scheme in PACKED else 1)


def split(tree: dict) -> tuple[dict, dict]:
  """(the tree without its Held leaves, the Held leaves alone), both nested as `tree`."""
  rest, held = {}, {}
  for k, v in tree.items():
    if isinstance(v, dict):
      r, h = split(v)
      rest.update({k: r} if r else {})
      held.update({k: h} if h else {})
    elif is_held(v):
      held[k] = v
    else:
      rest[k] = v
  return rest, held


def join(rest: dict, held: dict) -> dict:
  """`split`'s inverse: one nested tree of both (e.g. QLoRA's params and its held base kernels)."""
  out = dict(rest)
  for k, v in held.items():
    out[k] = join(out.get(k, {}), v) if isinstance(v, dict) else v
  return out


def dequantized(params: PyTree, shapes: PyTree) -> PyTree:
  """`params` with each Held leaf dequantized to float32 in its kernel's shape in `shapes` (the
  float model's params or their ShapeDtypeStructs): e.g. QLoRA's base, to merge adapters into."""
  rest, held = split(dict(params))
  flat_shapes = traverse_util.flatten_dict(shapes)
  floats = {
    k: dequantize(h, tuple(flat_shapes[k].shape))
    for k, h in traverse_util.flatten_dict(held).items()
  }
  return join(rest, traverse_util.unflatten_dict(floats))


def holds(params: PyTree) -> bool:
  """Whether `params` hold any kernel quantized (a Held leaf)."""
  return any(map(is_held, jax.tree.leaves(params, is_leaf=is_held)))


def variables(params: PyTree) -> dict:
  """The `apply` variables of `params`: {'params': ...}, plus the 'quantized' collection of the
  Held kernels when it holds any (read in models/transformer.py `_dense`)."""
  if not holds(params):
    return {'params': params}
  rest, held = split(dict(params))
  return {'params': rest, COLLECTION: held}


def resident_bytes(params: PyTree) -> int:
  """The bytes of the arrays that hold `params` (sum of nbytes: int4 packed two per byte)."""
  return int(sum(x.nbytes for x in jax.tree.leaves(params)))
