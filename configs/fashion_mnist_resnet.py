"""ResNet-18-style CNN on Fashion-MNIST with a channel/spatial attention ablation.

    python -m experiments.train --config configs/fashion_mnist_resnet.py:cbam --workdir runs/fmnist_resnet_cbam

The config argument picks the attention in every residual block: `none`, `se`, `eca` or
`cbam` (default). Reads the IDX files in `../shared/data/fashion_mnist` (Debian's
`dataset-fashion-mnist` works too: `--config.data.path=/usr/share/datasets/fashion-mnist`);
`--config.data.source=tfds --config.data.name=fashion_mnist` reads the tfds catalog.
"""
from attn_jax.train.config import base_config
from configs.common import fashion_mnist_data


def get_config(arg: str | None = None):
  c = base_config()
  c.model.name = "resnet"
  c.model.depth = (2, 2, 2, 2)
  c.model.width = 32
  c.model.attention = arg or "cbam"
  fashion_mnist_data(c)
  c.optim.name = "sgd"
  c.optim.momentum = 0.9
  c.optim.learning_rate = 0.1
  c.optim.weight_decay = 5e-4
  c.optim.warmup_steps = 200
  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_steps = 4700   # 10 epochs of 60,000 images
  c.eval_every = 1000
  c.checkpoint_every = 500
  c.best_metric = "eval_accuracy"
  c.anchor.metric = "accuracy"
  c.anchor.value = 94.9
  c.anchor.source = "ResNet18, Zalando Fashion-MNIST benchmark table"
  return c
