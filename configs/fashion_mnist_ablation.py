"""The channel-attention ablation recipe: a short, narrow ResNet on Fashion-MNIST.

    python -m experiments.ablation --root ~/attn_jax_runs/ablation \
        --config configs/fashion_mnist_ablation.py --seeds 0,1,2

Same data, optimizer and augmentation as `configs/fashion_mnist_resnet.py:<attention>`, but
width 16, one residual block per stage and 2 epochs (940 steps), so that 4 attention
variants x 3 seeds fit in about 1.5 hours of a 2-core CPU. It ranks the attention modules;
it is not a recipe for the best accuracy.
"""
from configs import fashion_mnist_resnet


def get_config(arg: str | None = None):
  c = fashion_mnist_resnet.get_config(arg)
  c.model.width = 16
  c.model.depth = (1, 1, 1, 1)
  c.num_steps = 940          # 2 epochs of 60,000 images at batch 128
  c.optim.warmup_steps = 100
  c.eval_every = 470
  c.checkpoint_every = 470
  return c
