"""Vision models built from `attn_jax.functional` and `attn_jax.layers`.

Images are NHWC float32 `[batch, height, width, channels]`; classifiers return
logits `[batch, num_classes]` from `model.apply(variables, images, train=False)`.
"""
from attn_jax.vision.channel import (ATTENTION_KINDS, CBAM, ECA, SqueezeExcitation,
                                     channel_attention, eca_kernel_size)
from attn_jax.vision.resnet import BasicBlock, ResNet
from attn_jax.vision.stn import STN, SpatialTransformer
from attn_jax.vision.swin import (SWIN_SIZES, PatchMerging, SwinBlock, SwinTransformer,
                                  WindowAttention, effective_window, swin_variant)
from attn_jax.vision.variants import RESNET_SIZES, vision_model
from attn_jax.vision.vit import VIT_SIZES, EncoderBlock, ViT, vit_variant

__all__ = [
    "ATTENTION_KINDS", "BasicBlock", "CBAM", "ECA", "EncoderBlock",
    "PatchMerging", "RESNET_SIZES", "ResNet", "STN", "SWIN_SIZES", "SpatialTransformer",
    "SqueezeExcitation", "SwinBlock", "SwinTransformer", "VIT_SIZES", "ViT", "WindowAttention",
    "channel_attention", "eca_kernel_size", "effective_window", "swin_variant",
    "vision_model", "vit_variant",
]
