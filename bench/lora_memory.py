"""Memory per device of a train step, full fine-tuning against LoRA at a few ranks: the estimate
(train/memory.py) and XLA's compiled memory analysis of the real step (nothing is run).

  python -m bench.lora_memory                      # d_model 512, 8 layers, batch 8 x 512
  python -m bench.lora_memory --d_model=1024 --n_layers=4
"""

from absl import app, flags

from configs import base
from models.config import ModelConfig
from train import memory

flags.DEFINE_integer('d_model', 512, 'width')
flags.DEFINE_integer('n_layers', 8, 'depth')
flags.DEFINE_integer('batch', 8, 'sequences per step')
flags.DEFINE_integer('seq_len', 512, 'tokens per sequence')
flags.DEFINE_list('ranks', ['0', '1', '8', '64'], 'LoRA ranks (0: full fine-tuning)')
FLAGS = flags.FLAGS
GIB = 2**30


def main(_) -> None:
  d = FLAGS.d_model
  one = {'data': 1, 'fsdp': 1, 'tensor': 1}
  opt = base.get_config().optimizer
  print(f'd_model {d}, {FLAGS.n_layers} layers, batch {FLAGS.batch} x {FLAGS.seq_len}, one device')
  print('rank  params  optimizer  grads  total(est)  compiled  (GiB)')
  for r in map(int, FLAGS.ranks):
    m = ModelConfig(
      d_model=d, n_layers=FLAGS.n_layers, n_heads=d // 64, d_ff=4 * d, max_len=FLAGS.seq_len,
      vocab_size=32768, lora_rank=r,
    )  # fmt: skip
    est = memory.estimate(m, one, FLAGS.batch, FLAGS.seq_len)
    got = memory.compiled_bytes(m, opt, FLAGS.batch, FLAGS.seq_len)
    print(
      f'{r or "full":>4}  {est.params / GIB:6.3f}  {est.optimizer / GIB:9.3f}  '
      f'{est.grads / GIB:5.3f}  {est.total / GIB:10.3f}  {got / GIB:8.3f}'
    )


if __name__ == '__main__':
  app.run(main)
