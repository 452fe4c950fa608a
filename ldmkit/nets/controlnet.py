"""ControlNet (Zhang, Rao and Agrawala 2023): a trainable copy of a UNet's encoder that steers the
frozen UNet with a spatial hint (edges, depth, pose, ...).

The copy (conv_in, the time embedding, the down path and the middle block, initialised from the
base) reads z_t plus the hint's features and returns one residual per skip of the base and one
for its middle block, each through a 1x1 convolution initialised to zero; the base adds them
where it reads those tensors (UNet.forward's `control`). The hint enters through a small conv
stack with stride-2 steps down to the latent size, whose last conv is zero too. So a fresh
ControlNet adds exactly 0: the controlled UNet starts as the base, bit for bit (the paper's
"zero convolution", sec. 3.1), and training moves away from it.

Module names are diffusers' ControlNetModel's, so its state dicts load with no key mapping.
Names: B batch, C channels, H W latent size, f the hint encoder's factor (8 for SD: the VAE's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from ldmkit.nets.config import UNetConfig
from ldmkit.nets.embeddings import TimestepEmbedding
from ldmkit.nets.unet import UNet, check_inputs, embed_time, encoder_blocks, run_encoder


@dataclass(frozen=True)
class ControlNetConfig:
    unet: UNetConfig                                   # the encoder's layout: the base UNet's
    hint_channels: int = 3                             # the hint image's channels (RGB)
    hint_widths: tuple[int, ...] = (16, 32, 96, 256)   # the hint encoder's widths; one stride-2 step between two
    global_pool: bool = False                          # average each residual over H, W (the "shuffle" model)
    bgr: bool = False                                  # the hint's channels in BGR order (a few old ControlNets)
    kind: str = "controlnet"

    def __post_init__(self):
        object.__setattr__(self, "hint_widths", tuple(self.hint_widths))
        if self.unet.guidance_embed_dim is not None:   # the copy's time embedding takes no guidance input
            object.__setattr__(self, "unet", replace(self.unet, guidance_embed_dim=None))
        if self.unet.pooled_tokens:  # the copy has no pooled inputs, so no context tokens made of them
            raise ValueError("a ControlNet copies its base's encoder without the pooled condition: a UNet with "
                             "pooled_tokens (an unCLIP decoder) has no ControlNet")
        if self.hint_channels < 1 or not self.hint_widths or min(self.hint_widths) < 1:
            raise ValueError(f"hint_channels and hint_widths must be positive, got {self.hint_channels}, "
                             f"{self.hint_widths}")

    @property
    def hint_factor(self) -> int:
        """The hint is this many times the latents' size: 2 ** (stride-2 steps)."""
        return 2 ** (len(self.hint_widths) - 1)

    def to_dict(self) -> dict:
        return asdict(self)


class HintEncoder(nn.Module):
    """The hint image (B, C_hint, f H, f W) in [0, 1] -> features (B, C_base, H, W) added to conv_in's
    output. Per width a 3x3 conv, then a stride-2 3x3 conv to the next width; SiLU after each; the
    last conv zero-initialised (diffusers' ControlNetConditioningEmbedding)."""

    def __init__(self, hint_channels: int, widths: Sequence[int], out_channels: int):
        super().__init__()
        self.conv_in = nn.Conv2d(hint_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            self.blocks.append(nn.Conv2d(w_in, w_in, 3, padding=1))
            self.blocks.append(nn.Conv2d(w_in, w_out, 3, padding=1, stride=2))   # halves H and W
        self.conv_out = zero_conv(widths[-1], out_channels, kernel_size=3)

    def forward(self, hint: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv_in(hint))                                 # (B, w_0, f H, f W)
        for block in self.blocks:
            h = F.silu(block(h))                                       # ... (B, w_last, H, W)
        return self.conv_out(h)                                        # (B, C_base, H, W)


def zero_conv(c_in: int, c_out: int, kernel_size: int = 1) -> nn.Conv2d:
    """A convolution whose weight and bias start at 0: it adds nothing until trained."""
    conv = nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ControlNet(nn.Module):
    """(z_t, t, hint, context) -> residuals for the base UNet: one per skip, then the middle's."""

    def __init__(self, config: ControlNetConfig, gradient_checkpointing: bool = False):
        super().__init__()
        self.config = config
        c = config.unet
        self.gradient_checkpointing = gradient_checkpointing
        self.name = "controlnet"  # what the PNG text calls it; loaders set the file's or folder's name
        self.time_embedding = TimestepEmbedding(c.base_channels, c.time_dim)
        self.class_embedding = nn.Embedding(c.num_classes, c.time_dim) if c.num_classes is not None else None
        self.conv_in = nn.Conv2d(c.in_channels, c.base_channels, 3, padding=1)
        self.controlnet_cond_embedding = HintEncoder(config.hint_channels, config.hint_widths, c.base_channels)
        self.down_blocks, self.mid_block, skip_widths = encoder_blocks(c)
        self.controlnet_down_blocks = nn.ModuleList(zero_conv(w, w) for w in skip_widths)
        self.controlnet_mid_block = zero_conv(skip_widths[-1], skip_widths[-1])

    @classmethod
    def from_unet(cls, unet: UNet, hint_channels: int = 3,
                  hint_widths: tuple[int, ...] = (16, 32, 96, 256)) -> ControlNet:
        """A fresh ControlNet for `unet`: its encoder a copy of the base's (conv_in, the time and
        class embeddings, the down path, the middle block), the hint encoder random, the zero
        convolutions zero. hint_widths: one stride-2 step per width after the first, so that
        2 ** (len - 1) is the autoencoder's factor (8 for SD's VAE)."""
        net = cls(ControlNetConfig(unet.config, hint_channels, hint_widths))
        copied = ("conv_in.", "time_embedding.linear_", "class_embedding.", "down_blocks.", "mid_block.")
        state = {k: v for k, v in unet.state_dict().items() if k.startswith(copied)}
        missing, unexpected = net.load_state_dict(state, strict=False)
        assert not unexpected and all(k.startswith("controlnet_") for k in missing), (missing, unexpected)
        like = next(unet.parameters())
        return net.to(device=like.device, dtype=like.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, hint: torch.Tensor,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                class_labels: torch.Tensor | None = None, scale: float | Sequence[float] = 1.0,
                guess_mode: bool = False) -> list[torch.Tensor]:
        """x (B, C, H, W) noisy latents, t, context, context_mask, class_labels as the base UNet
        takes them; hint (B or 1, hint_channels, f H, f W) in [0, 1]. scale: one number for every
        residual, or one per residual (per-block scales, len = skips + 1). guess_mode: scales
        10^(-1) ... 10^0 from the first skip to the middle block (times `scale`), as diffusers'
        ControlNetModel sets them, for sampling without a prompt. Returns the residuals, the
        skips' in push order then the middle block's, each shaped as the tensor it is added to."""
        c = self.config.unet
        t = check_inputs(c, x, t, context, context_mask, class_labels)            # (B,)
        check_hint(self.config, hint, x)
        if self.config.bgr:
            hint = hint.flip(1)                                        # RGB -> BGR
        emb = embed_time(self, t, x.dtype, class_labels)               # (B, E)
        h = self.conv_in(x) + self.controlnet_cond_embedding(hint.to(x.dtype))  # (B, C_base, H, W)
        h, skips = run_encoder(self, h, emb, context, context_mask)
        residuals = [zero(s) for zero, s in zip(self.controlnet_down_blocks, skips)]
        residuals.append(self.controlnet_mid_block(h))                 # (B, C_mid, H/f_unet, W/f_unet)
        scales = block_scales(len(residuals), scale, guess_mode and not self.config.global_pool)
        residuals = [r * s for r, s in zip(residuals, scales)]
        if self.config.global_pool:
            residuals = [r.mean(dim=(2, 3), keepdim=True) for r in residuals]  # (B, C, 1, 1)
        return residuals


def block_scales(n: int, scale: float | Sequence[float], guess_mode: bool) -> list[float]:
    """The factor of each of the n residuals: `scale` (one, or one per residual); in guess mode
    times 10^(-1 + k / (n - 1)), k = 0 .. n - 1: 0.1 on conv_in's skip up to 1 on the middle
    block's (diffusers: torch.logspace(-1, 0, n))."""
    scales = [float(scale)] * n if isinstance(scale, int | float) else [float(s) for s in scale]
    if len(scales) != n:
        raise ValueError(f"per-block control scales: give one number or {n} (one per skip of the base, "
                         f"then the middle block), got {len(scales)}")
    if guess_mode:
        ramp = torch.logspace(-1, 0, n, dtype=torch.float32).tolist()
        scales = [s * r for s, r in zip(scales, ramp)]
    return scales


def check_hint(config: ControlNetConfig, hint: torch.Tensor, x: torch.Tensor) -> None:
    """A hint of the wrong rank, channels or size is an error naming both sides."""
    B, _, H, W = x.shape
    f = config.hint_factor
    if hint.ndim != 4 or hint.shape[0] not in (1, B):
        raise ValueError(f"the hint must be (B, C, H, W) with B = 1 or {B}, got shape {tuple(hint.shape)}")
    if hint.shape[1] != config.hint_channels:
        raise ValueError(f"the hint has {hint.shape[1]} channels but this ControlNet takes {config.hint_channels}")
    if tuple(hint.shape[2:]) != (f * H, f * W):
        raise ValueError(f"the hint is {hint.shape[3]}x{hint.shape[2]} pixels but this ControlNet needs "
                         f"{f * W}x{f * H}: {f} times the {W}x{H} latents (its hint encoder's factor)")


SD_VERSIONS = {768: "SD v1", 1024: "SD v2"}  # by context width, only to name a mismatch


def check_base(config: ControlNetConfig, base: UNetConfig, name: str = "this ControlNet") -> None:
    """Refuse a ControlNet made for another base UNet, naming both: its residuals must match the
    base's skips (widths, resnets per level) and its cross-attention must read the same context."""
    mine, theirs = config.unet, base

    def describe(c: UNetConfig) -> str:
        widths = tuple(c.level_channels(i) for i in range(len(c.channel_mult)))
        version = SD_VERSIONS.get(c.context_dim)
        return (f"widths {widths} with {c.num_res_blocks} resnet(s) per level, context width {c.context_dim}"
                + (f" ({version})" if version else ""))

    same = (mine.base_channels == theirs.base_channels and mine.channel_mult == theirs.channel_mult
            and mine.num_res_blocks == theirs.num_res_blocks and mine.context_dim == theirs.context_dim
            and mine.num_classes == theirs.num_classes)
    if not same:
        raise ValueError(f"{name} was made for another base: it has {describe(mine)}; the model's UNet has "
                         f"{describe(theirs)}")
    if mine.in_channels not in (theirs.in_channels, theirs.out_channels):  # what the UNet reads, or z_t alone
        raise ValueError(f"{name} reads {mine.in_channels} input channels; the model's UNet reads "
                         f"{theirs.in_channels} (its latents {theirs.out_channels})")
