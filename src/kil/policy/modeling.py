"""The keypoint diffusion policy (paper 001, section III-C): a transformer encoder over each
observation's keypoint and proprio tokens, and a 1-D conditional U-Net with FiLM that
predicts the noise of an action chunk, trained with diffusers' DDPM and sampled with DDIM.

All tensors here are normalised (batch.Codec does the conversions).
"""

from __future__ import annotations

import math

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

from kil.policy.batch import Encoded
from kil.policy.configuration import PolicyConfig
from kil.policy.selection import KeypointGate

ACTION_DIM = 10


def sinusoidal_embedding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(...,) positions -> (..., dim) sine/cosine features (transformer positional encoding)."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
    angle = positions.float()[..., None] * freq.to(positions.device)
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


class KeypointEncoder(nn.Module):
    """One observation -> one vector. Tokens: each keypoint (3-D position, optionally its
    similarity vector) and the proprio state, each projected to d_model, plus a sinusoidal
    embedding of the token's index (which keypoint it is). Invisible keypoints are masked."""

    def __init__(self, config: PolicyConfig, keypoint_dim: int, proprio_dim: int, keypoints: int) -> None:
        super().__init__()
        e = config.encoder
        self.pooling = e.pooling
        self.keypoint_proj = nn.Linear(keypoint_dim, e.d_model)
        self.proprio_proj = nn.Linear(proprio_dim, e.d_model)
        self.register_buffer("index_embedding", sinusoidal_embedding(torch.arange(keypoints + 1), e.d_model), persistent=False)
        layer = nn.TransformerEncoderLayer(e.d_model, e.heads, e.mlp, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, e.layers, norm=nn.LayerNorm(e.d_model), enable_nested_tensor=False)
        self.cls = nn.Parameter(torch.zeros(1, 1, e.d_model)) if e.pooling == "cls_max" else None
        self.out_dim = e.d_model * (2 if e.pooling == "cls_max" else 1)

    def forward(self, obs: Encoded, gate: torch.Tensor | None = None) -> torch.Tensor:
        """One step per row: keypoints (B, N, F), mask (B, N) visible, proprio (B, P) -> (B,
        out_dim). `gate` (B, N) in [0, 1] multiplies the keypoint inputs (ATK's m * K: a
        dropped keypoint reads as zeros)."""
        mask = obs.mask
        keypoints = obs.keypoints if gate is None else obs.keypoints * gate[..., None]
        tokens = torch.cat([self.keypoint_proj(keypoints), self.proprio_proj(obs.proprio)[:, None]], dim=1) + self.index_embedding
        valid = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if self.cls is not None:
            tokens = torch.cat([self.cls.expand(len(tokens), -1, -1), tokens], dim=1)
            valid = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)
        out = self.transformer(tokens, src_key_padding_mask=~valid)
        if self.cls is not None:
            rest = out[:, 1:].masked_fill(~valid[:, 1:, None], float("-inf"))
            return torch.cat([out[:, 0], rest.max(dim=1).values], dim=-1)
        w = valid[..., None].to(out.dtype)
        return (out * w).sum(1) / w.sum(1)


class FlatEncoder(nn.Module):
    """No encoder (the paper's ablation): keypoints (zeroed when invisible, with their
    visibility) concatenated to the proprio state."""

    def __init__(self, keypoint_dim: int, proprio_dim: int, keypoints: int) -> None:
        super().__init__()
        self.out_dim = keypoints * (keypoint_dim + 1) + proprio_dim

    def forward(self, obs: Encoded, gate: torch.Tensor | None = None) -> torch.Tensor:
        flat = torch.cat([obs.keypoints, obs.mask[..., None].to(obs.keypoints.dtype)], dim=-1)
        if gate is not None:
            flat = flat * gate[..., None]
        return torch.cat([flat.flatten(1), obs.proprio], dim=-1)


class Conv1dBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, groups: int = 8) -> None:
        super().__init__(nn.Conv1d(cin, cout, kernel, padding=kernel // 2), nn.GroupNorm(min(groups, cout), cout), nn.Mish())


class FiLMResidualBlock(nn.Module):
    """Two conv blocks; the condition scales and shifts the first one's output per channel."""

    def __init__(self, cin: int, cout: int, cond_dim: int, kernel: int) -> None:
        super().__init__()
        self.first = Conv1dBlock(cin, cout, kernel)
        self.second = Conv1dBlock(cout, cout, kernel)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * cout))
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def observation_term(self, cond: torch.Tensor, step_dim: int) -> torch.Tensor:
        """The FiLM projection's share from the observation part of the condition (the
        columns after the `step_dim` step-embedding ones): constant across denoising steps.
        Mish acts elementwise, so the projection of [step, obs] is the sum of the two shares."""
        linear = self.film[1]
        return nn.functional.mish(cond[..., step_dim:]) @ linear.weight[:, step_dim:].T + linear.bias

    def forward(self, x: torch.Tensor, cond: torch.Tensor, observation_term: torch.Tensor | None = None) -> torch.Tensor:
        if observation_term is None:
            film = self.film(cond)
        else:  # cond holds only the step embedding
            film = nn.functional.mish(cond) @ self.film[1].weight[:, : cond.shape[-1]].T + observation_term
        scale, shift = film[..., None].chunk(2, dim=1)
        h = self.first(x) * scale + shift
        return self.second(h) + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """The noise predictor of diffusion policy: a 1-D U-Net over the action sequence,
    conditioned (FiLM) on the diffusion step and the observation vector."""

    def __init__(self, action_dim: int, cond_dim: int, channels: tuple[int, ...], kernel: int, step_embed: int) -> None:
        super().__init__()
        self.step_embed = step_embed
        self.step_mlp = nn.Sequential(nn.Linear(step_embed, 4 * step_embed), nn.Mish(), nn.Linear(4 * step_embed, step_embed))
        cdim = step_embed + cond_dim
        widths = [action_dim, *channels]
        self.down = nn.ModuleList()
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            last = i == len(channels) - 1
            self.down.append(nn.ModuleList([
                FiLMResidualBlock(cin, cout, cdim, kernel), FiLMResidualBlock(cout, cout, cdim, kernel),
                nn.Identity() if last else nn.Conv1d(cout, cout, 3, stride=2, padding=1),
            ]))
        mid = channels[-1]
        self.mid = nn.ModuleList([FiLMResidualBlock(mid, mid, cdim, kernel), FiLMResidualBlock(mid, mid, cdim, kernel)])
        self.up = nn.ModuleList()
        # Each up level undoes one downsampling; the finest level's skip is not used.
        for cout, cin in zip(reversed(channels[:-1]), reversed(channels[1:])):
            self.up.append(nn.ModuleList([
                FiLMResidualBlock(2 * cin, cout, cdim, kernel), FiLMResidualBlock(cout, cout, cdim, kernel),
                nn.ConvTranspose1d(cout, cout, 4, stride=2, padding=1),
            ]))
        self.head = nn.Sequential(Conv1dBlock(channels[0], channels[0], kernel), nn.Conv1d(channels[0], action_dim, 1))

    def blocks(self) -> list[FiLMResidualBlock]:
        """Every FiLM block, in the order forward runs them."""
        out = []
        for block1, block2, _ in self.down:
            out += [block1, block2]
        out += list(self.mid)
        for block1, block2, _ in self.up:
            out += [block1, block2]
        return out

    def observation_terms(self, cond: torch.Tensor) -> list[torch.Tensor]:
        """Each block's FiLM share from the observation condition (B, C): computed once per
        prediction instead of once per denoising step."""
        padded = torch.cat([cond.new_zeros(len(cond), self.step_embed), cond], dim=-1)
        return [block.observation_term(padded, self.step_embed) for block in self.blocks()]

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor,
                observation_terms: list[torch.Tensor] | None = None) -> torch.Tensor:
        """sample (B, H, A), timestep (B,) or scalar, cond (B, C) -> predicted noise (B, H, A).
        With `observation_terms` (from observation_terms(cond)), cond is not read again."""
        t = timestep.to(sample.device)  # scheduler timesteps live on the CPU
        t = t.expand(len(sample)) if t.dim() == 0 else t
        step = self.step_mlp(sinusoidal_embedding(t, self.step_embed))
        if observation_terms is None:
            c, terms = torch.cat([step, cond], dim=-1), iter(lambda: None, 0)
        else:
            c, terms = step, iter(observation_terms)
        x = sample.transpose(1, 2)
        skips = []
        for block1, block2, downsample in self.down:
            x = block1(x, c, next(terms))
            x = block2(x, c, next(terms))
            skips.append(x)
            x = downsample(x)
        for block in self.mid:
            x = block(x, c, next(terms))
        for block1, block2, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = block1(x, c, next(terms))
            x = upsample(block2(x, c, next(terms)))
        return self.head(x).transpose(1, 2)


def noise_schedulers(config: PolicyConfig) -> tuple[DDPMScheduler, DDIMScheduler]:
    """DDPM for training and DDIM (same betas) for inference, as diffusion policy sets them."""
    common = dict(num_train_timesteps=config.train_steps, beta_schedule="squaredcos_cap_v2", clip_sample=True, prediction_type="epsilon")
    ddim = DDIMScheduler(**common, set_alpha_to_one=True, steps_offset=0)
    ddim.set_timesteps(config.inference_steps)
    return DDPMScheduler(**common), ddim


class DiffusionPolicy(nn.Module):
    """Observation encoder (applied to each of the To observations independently) + U-Net."""

    def __init__(self, config: PolicyConfig, encoder: nn.Module, keypoints: int) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        s = config.selection
        self.gate = KeypointGate(keypoints, s.tau, s.init_keep) if s.enabled else None
        cond_dim = encoder.out_dim * config.n_obs_steps
        self.unet = ConditionalUnet1D(ACTION_DIM, cond_dim, config.unet_channels, config.kernel_size, config.diffusion_step_embed)
        self.train_scheduler, self.sample_scheduler = noise_schedulers(config)

    def condition(self, obs: Encoded, gate: torch.Tensor | None = None) -> torch.Tensor:
        """Observations with leading (B, To) -> (B, To * D): each step encoded on its own.
        With a learned keypoint selection only the selected keypoints are seen (`gate` (B, N):
        a sampled mask while training)."""
        B, To, N = obs.mask.shape
        if gate is None and self.gate is not None:
            gate = self.gate.selected().to(obs.proprio.dtype).expand(B, N)
        if gate is not None:
            gate = gate[:, None].expand(B, To, N).flatten(0, 1)
        flat = self.encoder(obs.flat_steps(), gate)
        return flat.reshape(B, To * flat.shape[-1])

    def forward(self, obs: Encoded, generator: torch.Generator | None = None) -> torch.Tensor:
        """The training loss of a batch (forward is the loss, for DistributedDataParallel);
        with keypoint selection, a mask is drawn per sample and its L1 penalty added."""
        if self.gate is None:
            return self.loss(self.condition(obs), obs.action, generator)
        gate = self.gate.sample(len(obs.action), generator)
        loss = self.loss(self.condition(obs, gate), obs.action, generator)
        return loss + self.config.selection.sparsity * self.gate.sparsity()

    def loss(self, cond: torch.Tensor, action: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        # Drawn on the CPU from the (CPU) generator, so runs are reproducible on any device.
        noise = torch.randn(action.shape, generator=generator, dtype=action.dtype).to(action.device)
        t = torch.randint(0, self.config.train_steps, (len(action),), generator=generator).to(action.device)
        noisy = self.train_scheduler.add_noise(action, noise, t)
        return nn.functional.mse_loss(self.unet(noisy, t, cond), noise)

    def sample(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """DDIM from Gaussian noise to a normalised (B, H, 10) chunk. The observation condition
        is computed once by the caller, and its FiLM projections once here, for all steps."""
        x = torch.randn((len(cond), self.config.horizon, ACTION_DIM), generator=generator, dtype=cond.dtype).to(cond.device)
        scheduler = self.sample_scheduler
        terms = self.unet.observation_terms(cond)
        for t in scheduler.timesteps:
            eps = self.unet(x, t, cond, terms)
            x = scheduler.step(eps, t, x).prev_sample
        return x


def build_policy(config: PolicyConfig, keypoints: int, proprio_dim: int) -> DiffusionPolicy:
    keypoint_dim = 3 + (keypoints if config.similarity else 0)
    if config.kind == "rgb":
        from kil.policy.rgb_baseline import ResNet18Encoder

        return DiffusionPolicy(config, ResNet18Encoder(proprio_dim, config.rgb_width), keypoints)
    encoder = KeypointEncoder(config, keypoint_dim, proprio_dim, keypoints) if config.encoder.use else FlatEncoder(keypoint_dim, proprio_dim, keypoints)
    return DiffusionPolicy(config, encoder, keypoints)
