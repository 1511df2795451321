"""Vision models built from `attn_jax.functional` and `attn_jax.layers`.

Images are NHWC float32 `[batch, height, width, channels]`; classifiers return
logits `[batch, num_classes]` (float32) from `model.apply(variables, images, train=False)`.
Every model takes the same attribute names: `width`, `depth`, `num_heads`, `mlp_dim`,
`dropout_rate`, `attention_dropout_rate`, `drop_path_rate`, `dtype`, `param_dtype`.
Named sizes: `vit_variant('ViT-S/16', ...)`, `swin_variant('Swin-T', ...)`,
`resnet_variant('ResNet-18', ...)`.
"""
from attn_jax.vision.channel import (ATTENTION_KINDS, CBAM, ECA, SqueezeExcitation,
                                     channel_attention, eca_kernel_size)
from attn_jax.vision.cnn import ConvNet
from attn_jax.vision.resnet import RESNET_SIZES, BasicBlock, ResNet, resnet_variant
from attn_jax.vision.stn import STN, SpatialTransformer, stn_cnn
from attn_jax.vision.swin import (SWIN_SIZES, PatchMerging, SwinBlock, SwinBlockPair,
                                  SwinTransformer, WindowAttention, effective_window,
                                  swin_variant)
from attn_jax.vision.vit import VIT_SIZES, EncoderBlock, ViT, vit_variant

__all__ = [
    "ATTENTION_KINDS", "BasicBlock", "CBAM", "ConvNet", "ECA", "EncoderBlock", "PatchMerging",
    "RESNET_SIZES", "ResNet", "STN", "SWIN_SIZES", "SpatialTransformer", "SqueezeExcitation",
    "SwinBlock", "SwinBlockPair", "SwinTransformer", "VIT_SIZES", "ViT", "WindowAttention",
    "channel_attention", "eca_kernel_size", "effective_window", "resnet_variant", "stn_cnn",
    "swin_variant", "vit_variant",
]
