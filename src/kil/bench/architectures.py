"""Randomly initialised checkpoints with the published architectures of the foundation-model
backends (ViT-B sizes; Stable Diffusion 2.1's UNet and VAE), for timing a backend's feature
extraction where its real weights are not on the machine. Same layers, same compute, so the
latency is the real one; the features themselves are meaningless.
"""

from __future__ import annotations

from pathlib import Path

import torch

VIT_B = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12)


def _save(model, directory: Path) -> Path:
    model.save_pretrained(directory)
    return directory


def dinov2(directory: Path) -> Path:
    import transformers as T

    return _save(T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(patch_size=14, image_size=518, num_register_tokens=4, **VIT_B)), directory)


def dinov3(directory: Path) -> Path:
    import transformers as T

    return _save(T.DINOv3ViTModel(T.DINOv3ViTConfig(patch_size=16, num_register_tokens=4, intermediate_size=3072, **VIT_B)), directory)


def radio(directory: Path) -> Path:
    import transformers as T

    return _save(T.RadioModel(T.RadioConfig(patch_size=16, **VIT_B)), directory)


def sam(directory: Path) -> Path:
    import transformers as T

    return _save(T.SamVisionModel(T.SamVisionConfig()), directory)  # the defaults are SAM ViT-B


def dift(directory: Path) -> Path:
    """SD 2.1's UNet and VAE at full size; the text encoder is cut to one layer (it runs once,
    at load, so it does not enter the per-frame latency)."""
    import json

    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel(sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=768,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=1, num_attention_heads=16))
    vocab = directory / "vocab"
    vocab.mkdir(parents=True, exist_ok=True)
    (vocab / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1}))
    (vocab / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt"), model_max_length=77)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1)
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler, safety_checker=None,
                            feature_extractor=None, requires_safety_checker=False).save_pretrained(directory / "sd")
    return directory / "sd"


BUILDERS = {"dinov2": dinov2, "dinov3": dinov3, "radio": radio, "sam": sam, "dift": dift}


def random_checkpoint(backend: str, directory: Path) -> Path | None:
    """A random checkpoint of `backend`'s architecture under `directory`, or None when the
    backend has no published architecture to mimic."""
    builder = BUILDERS.get(backend)
    if builder is None:
        return None
    torch.manual_seed(0)
    return builder(directory / backend)
