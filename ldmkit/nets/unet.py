"""The LDM denoiser eps_theta(z_t, t, tau(y)): a UNet of ResBlocks with SpatialTransformers.

Down the U each level runs num_res_blocks ResBlocks (each followed by a SpatialTransformer at
attention levels) and halves the size; the middle runs ResBlock, SpatialTransformer, ResBlock; up
the U each level runs num_res_blocks + 1 ResBlocks, each reading the concatenation with one saved
skip, and doubles the size. Parameter names equal diffusers' UNet2DConditionModel's, so its state
dicts load with strict=True and no key mapping (same network whenever channel_mult[0] == 1, as in
every SD model; otherwise conv_in and the sinusoids are base_channels wide as in the LDM code,
where diffusers uses block_out_channels[0]). The one hook: `control`, a ControlNet's residuals
(ldmkit.nets.controlnet), added to every skip and to the middle block's output. GLIDE's
conditioning (config.text_attention="added_kv", pooled_dim): the text's tokens join self-attention's
keys and values, and a pooled vector (its last token's state) joins the time embedding. DALL-E 2's
decoder (config.pooled_tokens): the pooled vector, a CLIP image embedding, also becomes a few context
tokens appended to the context (or the whole context, when none is given).
Names: B batch, C channels, H W size, L context length, D_ctx context width, E time-embedding width,
K pooled tokens.
"""

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from ldmkit.nets.attention import SpatialTransformer
from ldmkit.nets.config import UNetConfig
from ldmkit.nets.embeddings import TimestepEmbedding, guidance_embedding, timestep_embedding
from ldmkit.nets.inplace import silu_of_temporary
from ldmkit.nets.upsample import Upsample


class ResBlock(nn.Module):
    """DDPM/ADM residual block; the time embedding enters as a per-channel bias after conv1."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=1e-5)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time_emb_proj = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)   # the block starts as its shortcut (ADM/LDM zero_module)
        nn.init.zeros_(self.conv2.bias)
        self.conv_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(silu_of_temporary(self.norm1(x)))                               # (B, C_out, H, W)
        h += self.time_emb_proj(F.silu(emb))[:, :, None, None]  # in place: no layer keeps a conv's output
        h = self.conv2(self.dropout(silu_of_temporary(self.norm2(h))))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)      # (B, C_out, H, W)
        return h.add_(skip)  # in place: h is conv2's output, which backward does not need


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)                                                    # (B, C, H/2, W/2)


class Level(nn.Module):
    """One resolution of the U: resnets, optional attentions (one per resnet), optional resampler.

    A container; UNet.forward runs it, so the whole U reads as one loop. The attribute names
    (resnets, attentions, downsamplers / upsamplers) are diffusers' block names.
    """

    def __init__(self, resnets: list[ResBlock], attentions: list[SpatialTransformer] | None,
                 downsample: Downsample | None = None, upsample: Upsample | None = None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions) if attentions else None
        self.downsamplers = nn.ModuleList([downsample]) if downsample is not None else None
        self.upsamplers = nn.ModuleList([upsample]) if upsample is not None else None


class UNet(nn.Module):
    """eps_theta(x_t, t, context, class): (B, in_channels, H, W) -> (B, out_channels, H, W)."""

    # What tools working on a backbone from outside ask of it, so that none hard-codes a UNet:
    # FSDP shards one unit per block of these types; LoRA's target groups are these regexes on
    # module paths (diffusers' names).
    shard_units = (ResBlock, SpatialTransformer)
    layer_groups = {
        "attention": r"(^|\.)(to_q|to_k|to_v|add_k_proj|add_v_proj|to_out\.0)$",
        "feed_forward": r"(^|\.)(ff\.net\.0\.proj|ff\.net\.2|proj_in|proj_out)$",
        "conv": r"(^|\.)(resnets\.\d+\.(conv1|conv2|conv_shortcut)|(down|up)samplers\.\d+\.conv)$",
    }

    def __init__(self, config: UNetConfig, gradient_checkpointing: bool = False):
        super().__init__()
        self.config = c = config
        # Recompute each ResBlock / SpatialTransformer in backward instead of storing activations.
        self.gradient_checkpointing = gradient_checkpointing
        n_levels = len(c.channel_mult)

        self.time_embedding = TimestepEmbedding(c.base_channels, c.time_dim, c.guidance_embed_dim)
        self.class_embedding = (nn.Embedding(c.num_classes, c.time_dim)
                                if c.num_classes is not None else None)
        # GLIDE: the text's last token state, projected, joins the time embedding
        self.pooled_proj = nn.Linear(c.pooled_dim, c.time_dim) if c.pooled_dim is not None else None
        # DALL-E 2's decoder: ... and pooled_tokens context tokens (diffusers' clip_extra_context_tokens_proj)
        self.pooled_tokens_proj = (nn.Linear(c.pooled_dim, c.pooled_tokens * c.context_dim)
                                   if c.pooled_tokens else None)
        self.conv_in = nn.Conv2d(c.in_channels, c.base_channels, 3, padding=1)
        self.down_blocks, self.mid_block, skip_widths = encoder_blocks(c)

        # Up: deepest level first; each resnet eats one skip, the last one the level's input.
        ch = skip_widths[-1]
        self.up_blocks = nn.ModuleList()
        for level in reversed(range(n_levels)):
            out = c.level_channels(level)
            resnets, attns = [], []
            for _ in range(c.num_res_blocks + 1):
                resnets.append(make_resnet(c, ch + skip_widths.pop(), out))
                ch = out
                if level in c.attn_levels:
                    attns.append(make_attention(c, ch))
            self.up_blocks.append(Level(resnets, attns, upsample=Upsample(ch) if level else None))

        self.conv_norm_out = nn.GroupNorm(c.norm_groups, ch, eps=1e-5)
        self.conv_out = nn.Conv2d(ch, c.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)   # predict eps = 0 at first (ADM/LDM zero_module)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None,
                class_labels: torch.Tensor | None = None, guidance: torch.Tensor | None = None,
                control: Sequence[torch.Tensor] | None = None, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, in_channels, H, W) noisy latents; t a number, 0-d, (1,) or (B,) timesteps (float
        allowed); context (B, L, context_dim) tokens tau(y); context_mask (B, L) bool, True = keep;
        class_labels (B,) ints; pooled (B, pooled_dim), a pooled condition added to the time
        embedding (GLIDE's last text token) and, with config.pooled_tokens, made into that many
        context tokens appended to the context (the context itself when None; DALL-E 2's decoder:
        its CLIP image embedding); guidance (B,) classifier-free guidance scales, for a network that
        takes them as an input (an LCM: guidance_embed_dim); control: residuals added to every skip
        and to the middle block's output (a ControlNet's, ldmkit.nets.controlnet), one per skip in
        push order then the middle's, as diffusers' down_block_additional_residuals and
        mid_block_additional_residual. Returns (B, out_channels, H, W)."""
        emb, context, context_mask = prepare_inputs(self, x, t, context, context_mask, class_labels, guidance, pooled)
        h = self.conv_in(x)                                            # (B, C_base, H, W)
        h, skips = run_encoder(self, h, emb, context, context_mask)
        if control is not None:  # the one hook: a ControlNet's residuals, added, nothing else
            check_control(control, skips, h)
            skips = [skip + r for skip, r in zip(skips, control)]
            h = h + control[-1]                                        # (B, C_mid, H/f, W/f)

        for level in self.up_blocks:
            for j, resnet in enumerate(level.resnets):
                h = torch.cat([h, skips.pop()], dim=1)                 # (B, C + C_skip, H', W')
                h = run_block(self, resnet, h, emb)                    # (B, C_level, H', W')
                if level.attentions is not None:
                    h = run_block(self, level.attentions[j], h, context, context_mask)
            if level.upsamplers is not None:
                h = level.upsamplers[0](h)                             # (B, C_level, 2H', 2W')

        h = silu_of_temporary(self.conv_norm_out(h))
        return self.conv_out(h)                                        # (B, out_channels, H, W)


def prepare_inputs(net: UNet, x: torch.Tensor, t, context, context_mask, class_labels, guidance, pooled):
    """UNet.forward's arguments checked, and what its blocks read: (the time embedding (B, E), the
    context (with pooled tokens, if the net makes them), its mask). Shared with ldmkit.nets.deepcache."""
    t = check_inputs(net.config, x, t, context, context_mask, class_labels)  # (B,)
    check_pooled(net.config, pooled, x.shape[0])
    if net.pooled_tokens_proj is not None:
        context, context_mask = with_pooled_tokens(net, pooled, context, context_mask)  # (B, L + K, D_ctx)

    condition = None
    if guidance is not None:
        if net.config.guidance_embed_dim is None:
            raise ValueError("this network takes no guidance input (guidance_embed_dim is None): "
                             "guide it with classifier-free guidance instead")
        condition = guidance_embedding(guidance.reshape(-1), net.config.guidance_embed_dim).to(x.dtype)
    return embed_time(net, t, x.dtype, class_labels, condition, pooled), context, context_mask  # emb (B, E)


# ---- the encoder half (down path and middle), shared with the ControlNet, which copies it ----
def make_resnet(c: UNetConfig, c_in: int, c_out: int) -> ResBlock:
    return ResBlock(c_in, c_out, c.time_dim, c.norm_groups, c.dropout)


def make_attention(c: UNetConfig, channels: int) -> SpatialTransformer:
    return SpatialTransformer(channels, c.heads(channels), c.transformer_depth, c.context_dim,
                              c.norm_groups, c.use_linear_projection, c.dropout, c.text_attention)


def encoder_blocks(c: UNetConfig) -> tuple[nn.ModuleList, Level, list[int]]:
    """The down path and the middle of the U, and the width of every tensor the down path pushes
    on the skip stack (conv_in's output first), which sizes the up path (or a ControlNet's zero
    convolutions)."""
    n_levels = len(c.channel_mult)
    skip_widths = [c.base_channels]
    ch = c.base_channels
    down_blocks = nn.ModuleList()
    for level in range(n_levels):
        out = c.level_channels(level)
        resnets, attns = [], []
        for _ in range(c.num_res_blocks):
            resnets.append(make_resnet(c, ch, out))
            ch = out
            if level in c.attn_levels:
                attns.append(make_attention(c, ch))
            skip_widths.append(ch)
        last = level == n_levels - 1
        down = None if last else Downsample(ch)
        down_blocks.append(Level(resnets, attns, downsample=down))
        if not last:
            skip_widths.append(ch)
    mid_block = Level([make_resnet(c, ch, ch), make_resnet(c, ch, ch)],
                      [make_attention(c, ch)] if c.mid_attention else None)
    return down_blocks, mid_block, skip_widths


def run_block(net: nn.Module, module: nn.Module, *args) -> torch.Tensor:
    """module(*args); recomputed in backward instead of stored when net.gradient_checkpointing."""
    if net.gradient_checkpointing and net.training and torch.is_grad_enabled():
        return checkpoint(module, *args, use_reentrant=False)
    return module(*args)


def embed_time(net: nn.Module, t: torch.Tensor, dtype: torch.dtype, class_labels: torch.Tensor | None = None,
               condition: torch.Tensor | None = None, pooled: torch.Tensor | None = None) -> torch.Tensor:
    """The embedding every ResBlock reads, (B,) -> (B, E): the MLP of t's sinusoids (+ LCM's guidance
    condition) + the class embedding (+ the projected pooled condition, GLIDE's, for a net with a
    pooled_proj). net: a UNet or a ControlNet (time_embedding, class_embedding)."""
    emb = timestep_embedding(t, net.time_embedding.linear_1.in_features).to(dtype)  # (B, C_base)
    emb = net.time_embedding(emb, condition)                          # (B, E)
    if net.class_embedding is not None:
        emb = emb + net.class_embedding(class_labels).to(emb.dtype)    # (B, E)
    if pooled is not None:
        emb = emb + net.pooled_proj(pooled.to(emb.dtype))              # (B, E)
    return emb


def run_encoder(net: nn.Module, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None,
                context_mask: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """net's down path and middle from conv_in's output h (B, C_base, H, W): (the middle's output
    (B, C_mid, H/f, W/f), the skips in push order, h first). net: a UNet or a ControlNet."""
    skips = [h]
    for level in net.down_blocks:
        for j, resnet in enumerate(level.resnets):
            h = run_block(net, resnet, h, emb)                         # (B, C_level, H', W')
            if level.attentions is not None:
                h = run_block(net, level.attentions[j], h, context, context_mask)
            skips.append(h)
        if level.downsamplers is not None:
            h = level.downsamplers[0](h)                               # (B, C_level, H'/2, W'/2)
            skips.append(h)

    h = run_block(net, net.mid_block.resnets[0], h, emb)
    if net.mid_block.attentions is not None:
        h = run_block(net, net.mid_block.attentions[0], h, context, context_mask)
    return run_block(net, net.mid_block.resnets[1], h, emb), skips


def with_pooled_tokens(net: UNet, pooled: torch.Tensor, context: torch.Tensor | None,
                       context_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """DALL-E 2's decoder (Ramesh et al. 2022, sec. 2.1): the pooled condition (B, pooled_dim) projected
    into K = pooled_tokens tokens appended to the context (B, L, D_ctx) -> (B, L + K, D_ctx), their mask
    entries True; no context: the K tokens are the context."""
    c = net.config
    dtype = context.dtype if context is not None else net.pooled_tokens_proj.weight.dtype
    tokens = net.pooled_tokens_proj(pooled.to(dtype))                                 # (B, K * D_ctx)
    tokens = tokens.reshape(len(pooled), c.pooled_tokens, c.context_dim)               # (B, K, D_ctx)
    if context is None:
        return tokens, None
    if context_mask is not None:
        context_mask = torch.cat([context_mask, context_mask.new_ones(tokens.shape[:2])], dim=1)    # (B, L + K)
    return torch.cat([context, tokens], dim=1), context_mask


def check_control(control: Sequence[torch.Tensor], skips: list[torch.Tensor], mid: torch.Tensor) -> None:
    """Control residuals must match the skips and the middle one for one, shape for shape."""
    expected = [tuple(s.shape) for s in [*skips, mid]]
    got = [tuple(r.shape) for r in control]
    if got != expected:
        raise ValueError(f"control must hold {len(expected)} residuals (one per skip, then the middle "
                         f"block's) of shapes {expected}; got {len(got)} of shapes {got}: was the "
                         "ControlNet made for this UNet?")


def check_pooled(c: UNetConfig, pooled: torch.Tensor | None, batch: int) -> None:
    """A pooled condition exactly when the net has pooled_dim, of shape (B, pooled_dim)."""
    if pooled is None:
        if c.pooled_dim is not None:
            raise ValueError(f"this UNet adds a pooled condition to its time embedding (pooled_dim {c.pooled_dim}) "
                             f"and needs pooled= of shape ({batch}, {c.pooled_dim})")
        return
    if c.pooled_dim is None:
        raise ValueError("pooled was given but this UNet takes no pooled condition (pooled_dim None)")
    if tuple(pooled.shape) != (batch, c.pooled_dim):
        raise ValueError(f"pooled must have shape (B, pooled_dim) = ({batch}, {c.pooled_dim}), "
                         f"got {tuple(pooled.shape)}")


def check_inputs(c: UNetConfig, x, t, context, context_mask, class_labels) -> torch.Tensor:
    """Raise a ValueError naming the bad value and what is allowed; return t broadcast to (B,)."""
    if x.ndim != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    B, C, H, W = x.shape
    if C != c.in_channels:
        raise ValueError(f"x has {C} channels but the UNet's in_channels is {c.in_channels}")
    f = c.downsampling_factor
    if H % f or W % f:
        raise ValueError(f"x size {H}x{W} does not work: H and W must be multiples of {f} "
                         f"(2**{len(c.channel_mult) - 1} for {len(c.channel_mult)} levels), "
                         f"e.g. {max(f, H // f * f)}x{max(f, W // f * f)}")
    concrete = x.device.type != "meta"      # on the meta device only shapes can be checked

    t = torch.as_tensor(t, device=x.device)
    if t.ndim > 1 or t.numel() not in (1, B):
        raise ValueError(f"t has shape {tuple(t.shape)}; allowed: a number, 0-d, (1,) or "
                         f"(B,) = ({B},)")
    t = t.reshape(-1).expand(B)                                                # (B,)

    if context is None:
        if c.context_dim is not None and not c.pooled_tokens:  # pooled tokens alone may be the context
            raise ValueError(f"this UNet has cross-attention (context_dim {c.context_dim}) and "
                             f"needs a context of shape (B, L, {c.context_dim})")
        if context_mask is not None:
            raise ValueError("context_mask was given without a context")
    else:
        if c.context_dim is None:
            raise ValueError("context was given but this UNet has no cross-attention "
                             "(context_dim None)")
        if context.ndim != 3 or context.shape[0] != B:
            raise ValueError(f"context must be (B, L, D) with B = {B}, got shape "
                             f"{tuple(context.shape)}")
        if context.shape[-1] != c.context_dim:
            raise ValueError(f"context width {context.shape[-1]} does not match the UNet's "
                             f"context_dim {c.context_dim}")
        if context_mask is not None:
            if context_mask.dtype != torch.bool or context_mask.shape != context.shape[:2]:
                raise ValueError(f"context_mask must be a bool (B, L) = {tuple(context.shape[:2])} "
                                 f"tensor, got {context_mask.dtype} {tuple(context_mask.shape)}")
            # A row with every token masked has no softmax to take (SDPA gives 0 or NaN).
            if concrete and not context_mask.any(dim=1).all():
                raise ValueError("context_mask masks out every token of some sample; "
                                 "keep at least one")

    if class_labels is None:
        if c.num_classes is not None:
            raise ValueError(f"this UNet is class-conditional (num_classes {c.num_classes}) and "
                             f"needs class_labels of shape ({B},)")
    else:
        if c.num_classes is None:
            raise ValueError("class_labels were given but this UNet has no class embedding "
                             "(num_classes None)")
        if class_labels.shape != (B,) or class_labels.is_floating_point():
            raise ValueError(f"class_labels must be integer labels of shape ({B},), got "
                             f"{class_labels.dtype} {tuple(class_labels.shape)}")
        if concrete and ((class_labels < 0) | (class_labels >= c.num_classes)).any():
            raise ValueError(f"class_labels must lie in [0, {c.num_classes}), got values from "
                             f"{int(class_labels.min())} to {int(class_labels.max())}")
    return t
