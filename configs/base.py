"""Base config: every key the trainer understands, with its default.

The model section's schema is models/config.py (ModelConfig). Not run directly; the runnable
configs (default.py, gpt2.py, llama.py, ...) start from `base.get_config()` and change what
they need. Any key not listed here is rejected by validation, so this file doubles as the
reference of the config schema.
"""

import ml_collections

from models import config as model_config


def get_model_config() -> ml_collections.ConfigDict:
  """Model section: its fields, defaults and allowed values are models/config.py's ModelConfig."""
  return model_config.config_dict()


def get_distill_config(**overrides) -> ml_collections.ConfigDict:
  """The `distill` section (train/distill.py): teacher, temperature, mix, divergence, top-k,
  sequence-KD generation."""
  d = ml_collections.ConfigDict()
  d.teacher = ''  # one of our workdirs, or 'hf:/path/to/dir'.
  d.mode = 'online'  # 'online' | 'offline' | 'sequence' (Kim & Rush 2016 sequence KD)
  d.temperature = 1.0  # T > 0; both distributions are softened by T.
  d.alpha = 0.5  # weight of the T^2-scaled divergence; 1 - alpha on hard-label CE.
  d.divergence = 'forward'  # 'forward' | 'reverse' | 'mix'
  d.mix_weight = 0.5  # 'mix': weight of forward KL (1 - mix_weight on reverse KL).
  d.top_k = 32  # offline: stored teacher logits per token (1 <= k <= vocab).
  d.logits_dir = ''  # offline: where stored logits live; '' = <workdir>/teacher_logits.
  d.logits_dtype = 'float16'  # offline: stored values 'float16' | 'bfloat16' | 'float32'.
  d.prompt_len = 32  # sequence: real tokens per row the teacher continues to seq_len + 1.
  d.gen_temperature = 0.0  # sequence: 0 = greedy; > 0 samples (key from (seed, step)).
  d.gen_top_k = 0  # sequence: sample from the k most likely tokens (0 = off).
  d.gen_top_p = 1.0  # sequence: nucleus sampling mass (1 = off).
  d.mask_prompt = True  # sequence: no loss on prompt tokens (Kim & Rush: output given source).
  d.sequences_dir = ''  # sequence: the store; '' = <workdir>/teacher_sequences.
  d.update(overrides)
  return d


def get_sweep_config(**overrides) -> ml_collections.ConfigDict:
  """The `sweep` section (scaling/sweep.py): a grid of members around a base training config."""
  s = ml_collections.ConfigDict()
  s.kind = 'isoflop'  # 'isoflop' (budgets x sizes, D = C / 6N) | 'grid' (sizes x tokens)
  # | 'width' (widths x tokens at config.model.n_layers: lr transfer)
  s.budgets = ()  # isoflop: compute budgets C in FLOPs.
  s.sizes = ()  # target parameter counts (grid; isoflop when sizes_per_budget empty).
  s.sizes_per_budget = ()  # isoflop: one tuple of target sizes per budget.
  s.tokens = ()  # grid, width: token budgets D.
  s.widths = ()  # width: d_model values (the family's shape rule at each).
  s.lrs = ()  # peak learning rates, one member each (empty: optimizer.lr).
  s.seeds = ()  # seeds, one member each (empty: config.seed).
  s.count = 'params'  # N in D = C / 6N: 'params' (total) | 'non_embedding_params'.
  s.warmup_fraction = 0.05
  s.min_warmup_steps = 5
  s.min_steps = 10
  s.checkpoints_per_member = 2
  s.logs_per_member = 5
  s.evals_per_member = 1  # evaluations along training, written to curves.csv (approach 1).
  s.member = -1  # -1: every member in turn; i: only member i (one job per member).
  s.lr_width_exponent = 0.0  # lr *= (lr_ref_d_model / d_model) ** exponent (0: same lr for all).
  s.lr_ref_d_model = 0
  s.family = ml_collections.ConfigDict(
    {'family': 'gpt2', 'aspect': 32.0, 'head_dim': 16, 'tolerance': 0.1}
  )  # scaling/family.py
  s.update(overrides)
  return s


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.init_from = ''  # '' | 'hf:/path/to/dir' | '/path/to/our/workdir'
  c.model = get_model_config()

  c.data = ml_collections.ConfigDict()
  # A TFDS text dataset (default: the embedded corpus), or a mixture 'name=weight,name=weight'.
  c.data.dataset = 'stdlib_corpus'
  c.data.data_dir = ml_collections.FieldReference(
    None, field_type=str
  )  # TFDS data_dir (e.g. gs://bucket/tfds).
  c.data.train_split = 'train'
  c.data.eval_split = 'validation'
  c.data.text_key = 'text'
  c.data.tokenizer = 'byte'  # 'byte' | path to a local HuggingFace tokenizer directory.
  c.data.seq_len = 256
  c.data.max_documents = 0  # 0: whole split; else read at most this many documents per split.
  # Tokenized shards (`python -m train.data.prepare`; local or gs://): '' = <data_dir>/tokenized.
  c.data.prepared_dir = ''
  c.data.read_threads = 4  # grain threads reading upcoming batches (0: read when asked).

  c.train = ml_collections.ConfigDict()
  c.train.global_batch_size = 32  # sequences per optimizer step (all hosts, all microbatches).
  c.train.grad_accum_steps = 1
  c.train.num_steps = 1000  # ignored when total_tokens > 0.
  c.train.total_tokens = 0  # >0: num_steps = total_tokens // (global_batch_size * seq_len).
  c.train.log_every = 50
  c.train.eval_every = 250
  c.train.eval_batches = 8
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 2  # keep the last N ...
  c.train.keep_every = 0  # ... plus every K-th step (0: none).
  c.train.async_checkpoint = True
  # Divergence guard (train/divergence.py): stop before checkpointing when a checked loss exceeds
  # spike_factor x the median of the last spike_window checked losses (0: only non-finite stops).
  c.train.spike_factor = 10.0
  c.train.spike_window = 20
  # Dynamic loss scaling (jmp): 'auto' = on for model.dtype float16, off otherwise | 'dynamic' | 'none'.
  c.train.loss_scale = 'auto'
  c.train.loss_scale_init = 2.0**15  # on the token-mean loss (the summed loss gets it / tokens).
  c.train.loss_scale_period = 2000  # finite steps before the scale doubles (halves on overflow).

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 3e-4
  c.optimizer.schedule = 'cosine'  # 'cosine' | 'linear' | 'constant' | 'wsd'
  c.optimizer.warmup_steps = 100
  c.optimizer.min_lr_ratio = 0.1  # final lr = lr * min_lr_ratio (cosine, linear, wsd).
  c.optimizer.decay_fraction = 0.2  # wsd: fraction of steps spent in the final decay.
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.1
  c.optimizer.grad_clip = 1.0  # global-norm clipping; 0 disables.
  c.optimizer.wd_exclude = (
    'norm',
    'bias',
    'embed',
  )  # params whose path contains any of these get no decay.

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1: all devices not used by the other axes.
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  c.distributed = ml_collections.ConfigDict()
  c.distributed.initialize = 'auto'  # 'auto' (TPU pods / env detected) | 'yes' | 'no'
  c.distributed.coordinator_address = ''
  c.distributed.num_processes = 0
  c.distributed.process_id = -1

  # Downstream tasks at every eval step through lm-evaluation-harness (train/harness.py),
  # logged as lm_eval/<task>/<metric>; no tasks: off.
  c.lm_eval = ml_collections.ConfigDict()
  c.lm_eval.tasks = ()  # lm-eval task / group names, e.g. ('hellaswag', 'arc_easy').
  c.lm_eval.include_path = ''  # a directory of extra task YAMLs (lm-eval's --include_path).
  c.lm_eval.limit = 0  # documents per task (0: all).
  c.lm_eval.num_fewshot = ml_collections.FieldReference(
    None, field_type=int
  )  # None: the task's own.
  c.lm_eval.batch_size = 16  # rows per forward (rounded up to a multiple of data x fsdp).
  return c
