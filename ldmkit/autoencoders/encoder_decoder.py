"""The LDM first-stage encoder E and decoder D (Rombach et al. 2022, sec. 3.1 and appendix G).

E: conv_in, then per level num_res_blocks ResnetBlocks and a Downsample (not after the last
level), then ResnetBlock - attention - ResnetBlock in the middle, then GroupNorm, SiLU, conv_out
to c channels (2c for the KL model: mean and log-variance). D mirrors it from the deepest level
up, with num_res_blocks + 1 ResnetBlocks per level and an Upsample after every level but the last.
Parameter names equal diffusers' Encoder / Decoder (inside AutoencoderKL), so its state dicts load
with strict=True.
Names: B batch, C channels, H W image size, f downsampling factor, c latent channels.
"""

import torch
from torch import nn

from ldmkit.autoencoders.blocks import Downsample, MidAttention, ResnetBlock
from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.nets.inplace import silu_of_temporary
from ldmkit.nets.upsample import Upsample  # nearest x2 then a 3x3 conv, the same in both stages


class DownBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, num_res_blocks: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(c_in if j == 0 else c_out, c_out, groups) for j in range(num_res_blocks)])
        self.downsamplers = nn.ModuleList([Downsample(c_out)] if downsample else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resnets:
            x = block(x)                                                       # (B, C_out, H, W)
        for down in self.downsamplers:
            x = down(x)                                                    # (B, C_out, H/2, W/2)
        return x


class UpBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, num_res_blocks: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(c_in if j == 0 else c_out, c_out, groups) for j in range(num_res_blocks)])
        self.upsamplers = nn.ModuleList([Upsample(c_out)] if upsample else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resnets:
            x = block(x)                                                       # (B, C_out, H, W)
        for up in self.upsamplers:
            x = up(x)                                                          # (B, C_out, 2H, 2W)
        return x


class MidBlock(nn.Module):
    """ResnetBlock, self-attention (optional), ResnetBlock at the deepest level."""

    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.attentions = nn.ModuleList([MidAttention(channels, groups)] if attention else [])
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class Encoder(nn.Module):
    """(B, C_in, H, W) -> (B, c or 2c, H/f, W/f)."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        cfg, groups = config, config.norm_groups
        levels = len(cfg.channel_mult)
        widths = [cfg.level_channels(i) for i in range(levels)]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.base_channels, 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownBlock(cfg.base_channels if i == 0 else widths[i - 1], widths[i],
                      cfg.num_res_blocks, groups, downsample=i < levels - 1)
            for i in range(levels))
        self.mid_block = MidBlock(widths[-1], groups, cfg.mid_attention)
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=1e-6)
        c_out = 2 * cfg.latent_channels if cfg.double_z else cfg.latent_channels
        self.conv_out = nn.Conv2d(widths[-1], c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)                                                    # (B, C_0, H, W)
        for block in self.down_blocks:
            h = block(h)                                                   # ... (B, C_L, H/f, W/f)
        h = self.mid_block(h)
        return self.conv_out(silu_of_temporary(self.conv_norm_out(h)))                 # (B, c or 2c, H/f, W/f)


class Decoder(nn.Module):
    """(B, c, H/f, W/f) -> (B, C_out, H, W)."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        cfg, groups = config, config.norm_groups
        levels = len(cfg.channel_mult)
        widths = [cfg.level_channels(i) for i in reversed(range(levels))]     # deepest first
        self.conv_in = nn.Conv2d(cfg.latent_channels, widths[0], 3, padding=1)
        self.mid_block = MidBlock(widths[0], groups, cfg.mid_attention)
        self.up_blocks = nn.ModuleList(
            UpBlock(widths[max(i - 1, 0)], widths[i], cfg.num_res_blocks + 1, groups,
                    upsample=i < levels - 1)
            for i in range(levels))
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(widths[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)                                                    # (B, C_L, H/f, W/f)
        h = self.mid_block(h)
        for block in self.up_blocks:
            h = block(h)                                                       # ... (B, C_0, H, W)
        return self.conv_out(silu_of_temporary(self.conv_norm_out(h)))                 # (B, C_out, H, W)
