"""A training run's context, built before the loop: `Run` (mesh, data, optimizer, shardings),
the trainer's `Task`, fresh state, sharded batches, the stream metadata, and the one jitted
sharded train and eval step that the loop, tools and benchmarks all use."""

import dataclasses
import json
from collections.abc import Callable

import jax
import numpy as np
import optax

import models
from configs import schema
from models import parametrization
from models.config import PyTree
from train import optimizer as optim
from train import sharding, validation
from train import state as state_lib
from train.data import pipeline
from train.step import TrainState, lm_loss, make_eval_step, make_train_step

PIPELINE = 'token-shards-v1'


@dataclasses.dataclass
class Task:
  """What a trainer plugs into the loop.

  loss_fn(params, batch, *frozen) -> (loss_sum, sums) is used for training and eval;
  `frozen` are extra jit inputs that get no gradient (e.g. teacher params) with their
  shardings; `extra_batch(step, host_rows)` adds host-local arrays to the train batch;
  `meta` is recorded in (and checked against) checkpoints. `eval_loss_fn` (same signature;
  default `loss_fn`) is what evaluation uses, e.g. plain CE when the training objective
  differs; its sums['loss'] becomes eval/loss and eval/bits_per_byte.
  """

  loss_fn: Callable
  frozen: tuple = ()
  frozen_shardings: tuple = ()
  extra_batch: Callable | None = None
  meta: dict = dataclasses.field(default_factory=dict)
  eval_loss_fn: Callable | None = None


@dataclasses.dataclass
class Run:
  """Everything built before the first step; also used by tools (e.g. offline distill)."""

  config: schema.Config  # parsed once by validation.derive: what every consumer reads.
  derived: validation.Derived
  mesh: jax.sharding.Mesh
  train_ds: object
  eval_ds: object
  tokenizer: object
  state_shardings: TrainState
  batch_sharding: jax.sharding.NamedSharding
  optimizer: optax.GradientTransformation
  lr_fn: Callable


def setup(derived: validation.Derived, with_data: bool = True) -> Run:
  """Build mesh, data, optimizer and state shardings of `derived` (validation.derive's result;
  nothing compiled yet). Without data (benchmarks on synthetic tokens) train_ds, eval_ds and
  tokenizer are None."""
  config = validation.expect(derived).config
  mesh = sharding.make_mesh(config.mesh)
  train_ds, eval_ds, tokenizer = None, None, None
  if with_data:
    train_ds, eval_ds, tokenizer = pipeline.make_datasets(
      config, jax.process_index(), jax.process_count()
    )
  optimizer = optim.make_optimizer(
    config.optimizer, derived.num_steps, derived.model, config.sparsity
  )
  lr_fn = optim.lr_schedule(config.optimizer, derived.num_steps)
  state_shardings = state_lib.state_shardings(derived.model, optimizer, mesh, derived.loss_scale)
  return Run(
    config,
    derived,
    mesh,
    train_ds,
    eval_ds,
    tokenizer,
    state_shardings,
    sharding.batch_sharding(mesh),
    optimizer,
    lr_fn,
  )


def lm_task(r: Run) -> Task:
  """The plain language-modelling task: next-token cross-entropy."""
  return Task(loss_fn=lm_loss(r.derived.model))


def init_state(r: Run, params: PyTree | None = None) -> TrainState:
  """Fresh state on the mesh: random params from config.seed, or the given (e.g. imported) ones."""
  return state_lib.init_state(
    r.derived.model,
    r.optimizer,
    r.state_shardings,
    r.config.seed,
    params,
    r.config.train.loss_scale_init,
  )


def abstract_state(r: Run) -> TrainState:
  """The state's shapes and dtypes with their shardings (a restore target); nothing allocated."""
  return jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
    jax.eval_shape(lambda: init_state(r)),
    r.state_shardings,
  )


def global_batch(r: Run, host_arrays: dict) -> dict:
  """Host-local rows (an equal share per host: a train or an eval batch) -> global arrays
  sharded over ('data', 'fsdp')."""

  def put(x: np.ndarray) -> jax.Array:
    shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
    return jax.make_array_from_process_local_data(r.batch_sharding, x, shape)

  return jax.tree.map(put, host_arrays)


def stream_meta(config: schema.Config) -> dict:
  """What the batch stream and the param shapes depend on; must not change across a resume."""
  # 'pipeline' names the batch order (grain index shuffle over token shards): a checkpoint from
  # another order is refused instead of silently resumed on different batches.
  return {
    'seed': config.seed,
    'dataset': config.data.dataset,
    'tokenizer': config.data.tokenizer,
    'pipeline': PIPELINE,
    'seq_len': config.data.seq_len,
    'global_batch_size': config.train.global_batch_size,
    'model': json.loads(json.dumps(dataclasses.asdict(config.model))),
    **(_example_rows(config.data) if 'jsonl:' in config.data.dataset else {}),
  }


def _example_rows(data: schema.DataConfig) -> dict:
  """How supervised examples become rows (train/data/examples.py): part of their stream."""
  return {k: data[k] for k in ('pack', 'truncation', 'eval_fraction')}


def jit_train_step(r: Run, task: Task) -> Callable:
  """(state, batch, *frozen) -> (state, metrics): the task's train step, sharded and jitted on
  the run's mesh, the state donated."""
  t = r.config.train
  step = make_train_step(
    task.loss_fn,
    r.optimizer,
    r.lr_fn,
    t.grad_accum_steps,
    t.loss_scale_period if r.derived.loss_scale else 0,
    models.trainable(r.derived.model) if parametrization.has_frozen(r.derived.model) else None,
    r.config.seed if r.derived.model.lora_dropout else None,
  )
  return jax.jit(
    step,
    in_shardings=(r.state_shardings, r.batch_sharding) + tuple(task.frozen_shardings),
    out_shardings=(r.state_shardings, sharding.replicated(r.mesh)),
    donate_argnums=(0,),
  )


def jit_eval_step(
  r: Run, loss_fn: Callable, frozen_shardings: tuple = (), params_shardings: PyTree | None = None
) -> Callable:
  """(params, batch, *frozen) -> replicated per-token sums of `loss_fn`, jitted on the mesh;
  params sharded as the run's state unless `params_shardings` is given (e.g. a teacher's)."""
  params_shardings = r.state_shardings.params if params_shardings is None else params_shardings
  return jax.jit(
    make_eval_step(loss_fn),
    in_shardings=(params_shardings, r.batch_sharding) + tuple(frozen_shardings),
    out_shardings=sharding.replicated(r.mesh),
  )
