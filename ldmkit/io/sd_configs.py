"""ldmkit configs from what a Stable Diffusion checkpoint holds, and back.

A single file carries no config: the UNet, VAE and text-encoder configs are read off the
weights' keys and shapes (levels from the downsamplers, widths from the convolutions, context
width from cross-attention). What the weights cannot say follows SD's conventions: 8 heads for
a 768-wide context (v1), 64-wide heads for a 1024-wide one (v2), 32 norm groups. A diffusers
folder carries diffusers configs, translated here in both directions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from ..autoencoders import AutoencoderConfig
from ..diffusion.sampling import SamplingConfig
from ..diffusion.schedule import ScheduleConfig
from ..nets import UNetConfig

SD_VAE_SCALE = 0.18215
# The scheduler configs of the released SD v1.5 and v2.1 (768-v) diffusers folders. Neither names a
# timestep spacing, so each diffusers scheduler uses its own default (see SamplingConfig); a single
# file samples as these folders do.
SD_SCHEDULER_CONFIGS = {
    "v1": {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
           "clip_sample": False, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
           "steps_offset": 1, "trained_betas": None},
    "v2": {"_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
           "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "v_prediction",
           "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None},
}

PREDICTION_FROM_DIFFUSERS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
PREDICTION_TO_DIFFUSERS = {v: k for k, v in PREDICTION_FROM_DIFFUSERS.items()}
BETAS_FROM_DIFFUSERS = {"scaled_linear": "scaled_linear", "linear": "linear", "squaredcos_cap_v2": "cosine"}
BETAS_TO_DIFFUSERS = {v: k for k, v in BETAS_FROM_DIFFUSERS.items()}


def _count(keys, pattern: str) -> int:
    """How many distinct values the (\\d+) group of `pattern` takes among `keys`."""
    regex = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := regex.match(k))})


# ---- single files: configs from keys and shapes ------------------------------------------------
def unet_config_from_ldm(state: Mapping[str, torch.Tensor], v2: bool) -> UNetConfig:
    """The UNetConfig of an LDM-layout UNet (keys without "model.diffusion_model."). The head
    layout is not in the weights: v2 (OpenCLIP) has 64-wide heads, v1 8 heads."""
    keys = set(state)
    conv_in = state["input_blocks.0.0.weight"]
    base, in_channels = conv_in.shape[0], conv_in.shape[1]
    levels = _count(keys, r"input_blocks\.(\d+)\.0\.op\.weight") + 1
    blocks = _count(keys, r"input_blocks\.(\d+)\.")  # conv_in + levels x (res blocks + downsampler) - 1
    num_res_blocks = blocks // levels - 1
    first = [1 + level * (num_res_blocks + 1) for level in range(levels)]  # first ResBlock of each level
    channel_mult = tuple(state[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0] // base for i in first)
    attn_levels = tuple(lv for lv, i in enumerate(first) if f"input_blocks.{i}.1.proj_in.weight" in keys)
    context_dim = next((v.shape[1] for k, v in state.items() if k.endswith("attn2.to_k.weight")), None)
    proj_in = next((v for k, v in state.items() if k.endswith("proj_in.weight")), None)
    depth = (
        _count(keys, rf"input_blocks\.{first[attn_levels[0]]}\.1\.transformer_blocks\.(\d+)\.") if attn_levels else 1
    )
    label = state.get("label_emb.weight", state.get("label_emb.0.weight"))
    if "label_emb.0.0.weight" in keys:
        raise ValueError("this UNet embeds a vector class input (SD upscaler / SDXL style), which ldmkit does not load")
    heads = dict(num_heads=None, head_dim=64) if v2 else dict(num_heads=8, head_dim=None)
    return UNetConfig(
        in_channels=in_channels, out_channels=state["out.2.weight"].shape[0], base_channels=base,
        channel_mult=channel_mult, num_res_blocks=num_res_blocks, attn_levels=attn_levels,
        mid_attention="middle_block.1.proj_in.weight" in keys, transformer_depth=max(depth, 1),
        context_dim=context_dim, use_linear_projection=proj_in is not None and proj_in.ndim == 2,
        num_classes=None if label is None else label.shape[0], **heads,
    )


def vae_config_from_ldm(state: Mapping[str, torch.Tensor], scaling_factor: float = SD_VAE_SCALE) -> AutoencoderConfig:
    """The AutoencoderConfig of an LDM-layout KL autoencoder (keys without "first_stage_model.")."""
    keys = set(state)
    conv_in = state["encoder.conv_in.weight"]
    base = conv_in.shape[0]
    levels = _count(keys, r"encoder\.down\.(\d+)\.")
    if "quant_conv.weight" not in keys or "encoder.conv_out.weight" not in keys:
        raise ValueError("the first stage is not a KL autoencoder (no quant_conv / encoder.conv_out)")
    return AutoencoderConfig(
        kind="kl", in_channels=conv_in.shape[1], out_channels=state["decoder.conv_out.weight"].shape[0],
        base_channels=base,
        channel_mult=tuple(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // base for i in range(levels)),
        num_res_blocks=_count(keys, r"encoder\.down\.0\.block\.(\d+)\."),
        latent_channels=state["quant_conv.weight"].shape[0] // 2,
        mid_attention="encoder.mid.attn_1.q.weight" in keys, scaling_factor=scaling_factor,
    )


def clip_config_from_state(state: Mapping[str, torch.Tensor], hidden_act: str) -> dict[str, Any]:
    """CLIPTextConfig arguments of a transformers-layout CLIP text model's state dict."""
    tokens = state["text_model.embeddings.token_embedding.weight"]
    width = tokens.shape[1]
    return dict(
        vocab_size=tokens.shape[0], hidden_size=width,
        intermediate_size=state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=_count(state, r"text_model\.encoder\.layers\.(\d+)\."),
        num_attention_heads=width // 64,
        max_position_embeddings=state["text_model.embeddings.position_embedding.weight"].shape[0],
        hidden_act=hidden_act, projection_dim=width, bos_token_id=tokens.shape[0] - 2, eos_token_id=tokens.shape[0] - 1,
    )


# ---- diffusers configs ---------------------------------------------------------------------------
_UNET_DEFAULTS = dict(  # diffusers options whose other values ldmkit's UNet does not build
    act_fn="silu", center_input_sample=False, flip_sin_to_cos=True, freq_shift=0, class_embed_type=None,
    addition_embed_type=None, time_embedding_type="positional", resnet_time_scale_shift="default",
    conv_in_kernel=3, conv_out_kernel=3, only_cross_attention=False, dual_cross_attention=False,
    encoder_hid_dim=None, projection_class_embeddings_input_dim=None, norm_eps=1e-5, downsample_padding=1,
)


def unet_config_from_diffusers(cfg: Mapping[str, Any]) -> UNetConfig:
    """UNetConfig from a diffusers UNet2DConditionModel config.json."""
    unsupported = {k: cfg[k] for k, v in _UNET_DEFAULTS.items() if k in cfg and cfg[k] != v}
    if cfg.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel" or unsupported:
        raise ValueError(f"this diffusers UNet ({cfg.get('_class_name')}) uses options ldmkit does not build: "
                         f"{unsupported}")
    widths = list(cfg["block_out_channels"])
    base = widths[0]
    heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim") or 8  # diffusers' historic misnomer
    heads = [heads] * len(widths) if isinstance(heads, int) else list(heads)
    head_widths = {w // h for w, h in zip(widths, heads)}
    if len(set(heads)) == 1:
        head_kwargs = dict(num_heads=heads[0], head_dim=None)
    elif len(head_widths) == 1:
        head_kwargs = dict(num_heads=None, head_dim=head_widths.pop())
    else:
        raise ValueError(f"attention heads {heads} over widths {widths}: neither a fixed count nor a fixed width")
    depth = cfg.get("transformer_layers_per_block", 1)
    if not isinstance(depth, int):
        if len(set(depth)) != 1:
            raise ValueError(f"transformer_layers_per_block {depth} varies by level, which ldmkit does not build")
        depth = depth[0]
    layers = cfg.get("layers_per_block", 2)
    if not isinstance(layers, int):
        raise ValueError(f"layers_per_block {layers} varies by level, which ldmkit does not build")
    return UNetConfig(
        in_channels=cfg.get("in_channels", 4), out_channels=cfg.get("out_channels", 4), base_channels=base,
        channel_mult=tuple(w // base for w in widths), num_res_blocks=layers,
        attn_levels=tuple(i for i, t in enumerate(cfg["down_block_types"]) if t.startswith("CrossAttn")),
        mid_attention=cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn") == "UNetMidBlock2DCrossAttn",
        transformer_depth=depth, context_dim=cfg.get("cross_attention_dim", 1280),
        use_linear_projection=cfg.get("use_linear_projection", False), num_classes=cfg.get("num_class_embeds"),
        norm_groups=cfg.get("norm_num_groups", 32), guidance_embed_dim=cfg.get("time_cond_proj_dim"),
        **head_kwargs,
    )


def unet_config_to_diffusers(c: UNetConfig, sample_size: int) -> dict[str, Any]:
    if c.context_dim is None and (c.attn_levels or c.mid_attention):
        raise ValueError("diffusers' UNet2DConditionModel has no self-attention-only blocks: this model (attention "
                         "without cross-attention) can be saved as an ldmkit folder or an SD single file only")
    levels = range(len(c.channel_mult))
    widths = [c.level_channels(i) for i in levels]
    return {
        "_class_name": "UNet2DConditionModel", "sample_size": sample_size,
        "in_channels": c.in_channels, "out_channels": c.out_channels, "block_out_channels": widths,
        "down_block_types": ["CrossAttnDownBlock2D" if i in c.attn_levels else "DownBlock2D" for i in levels],
        "up_block_types": ["CrossAttnUpBlock2D" if i in c.attn_levels else "UpBlock2D" for i in reversed(levels)],
        "mid_block_type": "UNetMidBlock2DCrossAttn" if c.mid_attention else "UNetMidBlock2D",
        "layers_per_block": c.num_res_blocks, "attention_head_dim": [c.heads(w) for w in widths],
        "transformer_layers_per_block": c.transformer_depth, "cross_attention_dim": c.context_dim,
        "use_linear_projection": c.use_linear_projection, "norm_num_groups": c.norm_groups,
        "num_class_embeds": c.num_classes, "time_cond_proj_dim": c.guidance_embed_dim, **_UNET_DEFAULTS,
    }


def vae_config_from_diffusers(cfg: Mapping[str, Any]) -> AutoencoderConfig:
    if (cfg.get("_class_name", "AutoencoderKL") != "AutoencoderKL" or cfg.get("shift_factor")
            or cfg.get("use_quant_conv") is False):
        raise ValueError(f"ldmkit reads the AutoencoderKL of SD v1/v2; this VAE is {cfg.get('_class_name')} with "
                         f"shift_factor={cfg.get('shift_factor')}, use_quant_conv={cfg.get('use_quant_conv')}")
    widths = list(cfg["block_out_channels"])
    return AutoencoderConfig(
        kind="kl", in_channels=cfg.get("in_channels", 3), out_channels=cfg.get("out_channels", 3),
        base_channels=widths[0], channel_mult=tuple(w // widths[0] for w in widths),
        num_res_blocks=cfg.get("layers_per_block", 1), latent_channels=cfg.get("latent_channels", 4),
        mid_attention=cfg.get("mid_block_add_attention", True), norm_groups=cfg.get("norm_num_groups", 32),
        scaling_factor=cfg.get("scaling_factor", SD_VAE_SCALE),
    )


def vae_config_to_diffusers(c: AutoencoderConfig, sample_size: int) -> dict[str, Any]:
    if c.kind != "kl":
        raise ValueError(f"diffusers' AutoencoderKL holds KL autoencoders; this first stage is {c.kind!r}")
    levels = len(c.channel_mult)
    return {
        "_class_name": "AutoencoderKL", "sample_size": sample_size, "in_channels": c.in_channels,
        "out_channels": c.out_channels, "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [c.level_channels(i) for i in range(levels)], "layers_per_block": c.num_res_blocks,
        "latent_channels": c.latent_channels, "norm_num_groups": c.norm_groups, "act_fn": "silu",
        "scaling_factor": c.scaling_factor, "mid_block_add_attention": c.mid_attention,
    }


def schedule_from_diffusers(cfg: Mapping[str, Any]) -> tuple[ScheduleConfig, SamplingConfig, str]:
    """(schedule, sampling, prediction) from a diffusers scheduler_config.json."""
    if cfg.get("trained_betas") is not None or cfg.get("beta_schedule", "linear") not in BETAS_FROM_DIFFUSERS:
        raise ValueError(f"unsupported noise schedule {cfg.get('beta_schedule')!r} "
                         f"(trained_betas={cfg.get('trained_betas') is not None})")
    prediction = cfg.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_FROM_DIFFUSERS:
        raise ValueError(f"unknown prediction_type {prediction!r}; ldmkit knows {sorted(PREDICTION_FROM_DIFFUSERS)}")
    schedule = ScheduleConfig(
        kind=BETAS_FROM_DIFFUSERS[cfg.get("beta_schedule", "linear")],
        num_timesteps=cfg.get("num_train_timesteps", 1000),
        beta_start=cfg.get("beta_start", 0.0001), beta_end=cfg.get("beta_end", 0.02),
        zero_terminal_snr=cfg.get("rescale_betas_zero_snr", False),
    )
    defaulted = set(cfg.get("_use_default_values", []))
    named = lambda key, default: cfg[key] if key in cfg and key not in defaulted else default  # noqa: E731
    sampling = SamplingConfig(spacing=named("timestep_spacing", None), offset=named("steps_offset", 0),
                              ddim_final_alpha_one=named("set_alpha_to_one", True), sigma_max_start=True,
                              original_inference_steps=named("original_inference_steps", 50))
    return schedule, sampling, PREDICTION_FROM_DIFFUSERS[prediction]


# SD x4 upscaler's released scheduler config (its low-resolution input has its own schedule,
# LowResConfig's default) and its VAE's latent scale.
SD_X4_SCHEDULER_CONFIG = {"_class_name": "DDIMScheduler", "beta_end": 0.02, "beta_schedule": "scaled_linear",
                          "beta_start": 0.0001, "clip_sample": False, "num_train_timesteps": 1000,
                          "prediction_type": "v_prediction", "set_alpha_to_one": False, "steps_offset": 1}
SD_X4_VAE_SCALE = 0.08333


CONSISTENCY_SCHEDULERS = {"LCMScheduler": "lcm", "TCDScheduler": "tcd"}  # a folder's scheduler -> its sampler


def sd_schedule() -> tuple[ScheduleConfig, SamplingConfig]:
    """The schedule and timestep placement of SD v1/v2 (both share them; only prediction differs)."""
    schedule, sampling, _ = schedule_from_diffusers(SD_SCHEDULER_CONFIGS["v1"])
    return schedule, sampling


def schedule_to_diffusers(schedule: ScheduleConfig, sampling: SamplingConfig, prediction: str) -> dict[str, Any]:
    """A DDIMScheduler config with the model's schedule; diffusers' other schedulers read it too."""
    return {
        "_class_name": "DDIMScheduler", "num_train_timesteps": schedule.num_timesteps,
        "beta_start": schedule.beta_start, "beta_end": schedule.beta_end,
        "beta_schedule": BETAS_TO_DIFFUSERS[schedule.kind], "rescale_betas_zero_snr": schedule.zero_terminal_snr,
        "prediction_type": PREDICTION_TO_DIFFUSERS[prediction], "steps_offset": sampling.offset,
        "set_alpha_to_one": sampling.ddim_final_alpha_one, "clip_sample": False,
    } | ({"timestep_spacing": sampling.spacing} if sampling.spacing else {})
