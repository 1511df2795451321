"""Pretrained checkpoints in and out of the project's ViT and Swin.

Reads timm / Microsoft state dicts (`.safetensors`, `.pth`) and google-research
vision_transformer / big_vision `.npz` files into the params of `attn_jax.vision.ViT` /
`SwinTransformer` (either `scan_layers`), resampling position tables to a new patch grid and
Swin bias tables to a new window, with a fresh head for a new number of classes; writes
the models back as timm-compatible `.safetensors`.

    model = pretrained.model_for("vit_tiny_patch16_224.safetensors", num_classes=10)
    params, report = pretrained.load(model, "vit_tiny_patch16_224.safetensors")
    logits = model.apply({"params": params}, images)            # images [b, 224, 224, 3]
"""
from attn_jax.pretrained.api import (FORMATS, detect, export_run, export_timm, init_run_state,
                                     load, model_for, to_timm_state_dict)
from attn_jax.pretrained.io import read_checkpoint, read_safetensors, write_safetensors
from attn_jax.pretrained.report import CheckpointFormatError, LoadReport
from attn_jax.pretrained.resample import resample_bias_table, resample_posemb

__all__ = ["CheckpointFormatError", "FORMATS", "LoadReport", "detect", "export_run",
           "export_timm", "init_run_state", "load", "model_for", "read_checkpoint",
           "read_safetensors", "resample_bias_table", "resample_posemb", "to_timm_state_dict",
           "write_safetensors"]
