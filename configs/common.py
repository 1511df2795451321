"""Config pieces shared by several experiment files."""


def direction(c, arg: str | None) -> None:
  """Sets src/tgt languages from 'de_en' (default) / 'en_de' (the Multi30k configs)."""
  arg = arg or "de_en"
  if arg not in ("de_en", "en_de"):
    raise ValueError(f"config argument must be 'de_en' or 'en_de', got '{arg}'.")
  c.data.src_lang, c.data.tgt_lang = arg.split("_")


def fashion_mnist_data(c) -> None:
  """The local IDX files, normalization and crop + flip (the ViT, Swin and ResNet configs)."""
  c.data.source = "local"
  c.data.name = "fashion_mnist"
  c.data.path = "../shared/data/fashion_mnist"
  c.data.mean, c.data.std = (0.2860,), (0.3530,)
  c.data.crop_padding = 2
  c.data.flip = True


def fashion_mnist_classifier(c) -> None:
  """Data, optimiser and anchor shared by the Fashion-MNIST ViT and Swin configs."""
  fashion_mnist_data(c)
  c.optim.name = "adamw"
  c.optim.learning_rate = 2e-3
  c.optim.weight_decay = 0.05
  c.optim.warmup_steps = 300
  c.optim.grad_clip_norm = 1.0
  c.label_smoothing = 0.1
  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_steps = 4700   # 10 epochs
  c.eval_every = 1000
  c.checkpoint_every = 500
  c.best_metric = "eval_accuracy"
  c.anchor.metric = "accuracy"
  c.anchor.value = 92.3
  c.anchor.source = "small ViT from scratch, patch 4, ~0.2M params, 200 epochs"
