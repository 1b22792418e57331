"""DIFT: diffusion features from the Stable Diffusion 2.1 UNet through `diffusers`.

The image is encoded by the VAE, noised to timestep t (about 261), and passed once through
the UNet conditioned on the (empty) prompt's text embedding, computed once at load; the
output of up-block `up_ft_index` (1) is the feature map, averaged over an ensemble of n noise
draws run as one batch. The UNet stops right after that block. Noise is seeded per call, so
features are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from kil.config import require
from kil.errors import ConfigError
from kil.perception.features.base import BackendConfig, FeatureExtractor


@dataclass(frozen=True)
class DiftConfig(BackendConfig):
    """weights: a Stable Diffusion 2.1 checkpoint directory (diffusers layout)."""

    prompt: str = ""
    timestep: int = 261
    up_ft_index: int = 1
    ensemble_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.ensemble_size >= 1, "ensemble_size", f"must be >= 1, got {self.ensemble_size}")
        require(0 <= self.timestep < 1000, "timestep", f"must be in [0, 1000), got {self.timestep}")
        require(self.up_ft_index >= 0, "up_ft_index", f"must be >= 0, got {self.up_ft_index}")


class _Stop(Exception):
    """Raised by the hook once the wanted up-block has run (skips the rest of the UNet)."""


class DiftExtractor(FeatureExtractor):
    Config = DiftConfig
    title = "DIFT (Stable Diffusion)"
    patch_size = 64  # input multiple: VAE stride 8 x the UNet's down-sampling (set from the checkpoint)
    default_input_size = (576, 768)
    gpu_dtype = torch.float16
    weights_expect = "model_index.json"

    def _load(self) -> None:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        path = self.weights_path()
        source = str(path)
        local = isinstance(path, Path)
        try:
            kwargs = dict(local_files_only=local)
            self.vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=self.dtype, **kwargs)
            self.unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=self.dtype, **kwargs)
            self.scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kwargs)
            tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kwargs)
            text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=self.dtype, **kwargs)
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"{self.where}weights: cannot load {self.title} from {path} ({first})") from None
        if self.config.up_ft_index >= len(self.unet.up_blocks):
            raise ConfigError(f"{self.where}up_ft_index: {self.config.up_ft_index} but the UNet has {len(self.unet.up_blocks)} up-blocks")
        self.vae.to(self.device).eval()
        self.unet.to(self.device).eval()
        with torch.inference_mode():  # the prompt embedding is fixed: compute it once, drop the encoder
            length = min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings)
            tokens = tokenizer([self.config.prompt], padding="max_length", max_length=length, truncation=True, return_tensors="pt")
            self.prompt_embedding = text_encoder.to(self.device)(tokens.input_ids.to(self.device))[0]
        vae_stride = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.patch_size = vae_stride * 2 ** (len(self.unet.down_blocks) - 1)  # input sizes must divide evenly
        self._captured: torch.Tensor | None = None
        self.unet.up_blocks[self.config.up_ft_index].register_forward_hook(self._capture)

    def _capture(self, module, inputs, output) -> None:
        self._captured = output[0] if isinstance(output, tuple) else output
        raise _Stop

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        n = self.config.ensemble_size
        latents = self.vae.encode(pixels * 2 - 1).latent_dist.mode() * self.vae.config.scaling_factor
        latents = latents.repeat_interleave(n, dim=0)
        generator = torch.Generator(device=self.device).manual_seed(self.config.seed)
        noise = torch.randn(latents.shape, generator=generator, device=self.device, dtype=latents.dtype)
        t = torch.tensor([self.config.timestep], device=self.device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        context = self.prompt_embedding.expand(len(noisy), -1, -1)
        self._captured = None
        try:
            self.unet(noisy, t, encoder_hidden_states=context)
        except _Stop:
            pass
        features = self._captured
        return features.reshape(len(pixels), n, *features.shape[1:]).mean(dim=1)


BACKEND = DiftExtractor
