"""Weight names of Stable Diffusion single files (the CompVis / Stability LDM layout) <-> ldmkit's.

ldmkit's UNet and autoencoder use diffusers' parameter names, so this file is pure renaming
(plus a reshape of the VAE's attention and a split of OpenCLIP's fused q/k/v). Every function
takes and returns plain {name: tensor} dicts without the single file's prefixes:

    UNet          "model.diffusion_model."          unet_ldm_to_diffusers / unet_diffusers_to_ldm
    VAE           "first_stage_model."              vae_ldm_to_diffusers / vae_diffusers_to_ldm
    SD v1 text    "cond_stage_model.transformer."   clip_ldm_to_transformers / ..._to_ldm
    SD v2 text    "cond_stage_model.model."         open_clip_to_transformers / ..._to_open_clip

The UNet and VAE maps are derived from the config: ldmkit's model, built on the meta device,
lists the names to expect, and a table of module prefixes (which LDM block each diffusers block
is) renames them. So a config that does not match the checkpoint is caught here, by name.
Every function refuses unrecognised or missing names with a ValueError instead of dropping
weights quietly; the only drops are the documented constants and unused heads of the text
encoders. Tensors are passed through, not copied, except where a reshape or split needs it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

import torch
from torch import Tensor

from ldmkit.autoencoders.autoencoder import Autoencoder
from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.nets.config import UNetConfig
from ldmkit.nets.unet import UNet

# A module table maps a diffusers module prefix to (its LDM prefix, renames of the parameter
# paths inside that module, e.g. {"norm1": "in_layers.0"}).
ModuleTable = dict[str, tuple[str, dict[str, str]]]


# --------------------------------------------------------------------------- shared helpers

def _few(keys, n: int = 5) -> str:
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def _check_keys(given, expected, what: str, hint: str = "") -> None:
    """Raise a ValueError naming the first few unrecognised and missing names."""
    given, expected = set(given), set(expected)
    unknown, missing = given - expected, expected - given
    if not unknown and not missing:
        return
    parts = []
    if unknown:
        parts.append(f"{len(unknown)} unrecognised key(s): {_few(unknown)}")
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_few(missing)}")
    raise ValueError(f"{what}: " + "; ".join(parts) + (f". {hint}" if hint else ""))


def _rename_inside(rest: str, renames: dict[str, str]) -> str:
    """Apply the first rename whose old path is a whole-component prefix of `rest`."""
    for old, new in renames.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def _translate(key: str, table: ModuleTable) -> str:
    """diffusers key -> LDM key through the longest module prefix of `key` in the table."""
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):         # longest prefix first; the leaf stays
        prefix = ".".join(parts[:n])
        if prefix in table:
            ldm_prefix, renames = table[prefix]
            return ldm_prefix + "." + _rename_inside(".".join(parts[n:]), renames)
    # Every module of ldmkit's model must be in the table; reaching here is a bug in this file.
    raise AssertionError(f"no LDM name for {key!r}")


def _key_map(model_keys, table: ModuleTable) -> dict[str, str]:
    """{diffusers key: LDM key} for every parameter of the model; one to one."""
    mapping = {k: _translate(k, table) for k in model_keys}
    assert len(set(mapping.values())) == len(mapping), "two parameters got the same LDM name"
    return mapping


def _meta_keys(build) -> list[str]:
    # The meta device gives the parameter names without allocating memory (SD's UNet: ~0.1 s).
    with torch.device("meta"):
        return list(build().state_dict())


def _rename(state: Mapping[str, Tensor], mapping: Mapping[str, str], what: str,
            hint: str) -> dict[str, Tensor]:
    if state and set(state) <= set(mapping.values()) and not set(state) <= set(mapping):
        hint = "These are the other layout's names: call the converter for the other direction."
    _check_keys(state.keys(), mapping.keys(), what, hint)
    return {mapping[k]: v for k, v in state.items()}


def _inverse(mapping: Mapping[str, str]) -> dict[str, str]:
    return {v: k for k, v in mapping.items()}


# --------------------------------------------------------------------------- UNet

# LDM's ResBlock keeps its layers in Sequentials: in_layers = (GroupNorm, SiLU, conv),
# emb_layers = (SiLU, Linear), out_layers = (GroupNorm, SiLU, Dropout, conv); hence the indices.
_UNET_RESBLOCK = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                  "norm2": "out_layers.0", "conv2": "out_layers.3",
                  "conv_shortcut": "skip_connection"}
_SAME: dict[str, str] = {}   # SpatialTransformers: LDM's inner names are diffusers' own


def _unet_table(c: UNetConfig) -> ModuleTable:
    """Which LDM block holds each diffusers module.

    LDM numbers the down path as one flat list, input_blocks: block 0 is conv_in, then per level
    num_res_blocks blocks of [ResBlock, SpatialTransformer?], then one [Downsample] block (not
    after the deepest level). The up path, output_blocks, is flat too: per level, deepest first,
    num_res_blocks + 1 blocks of [ResBlock, SpatialTransformer?, Upsample?], the Upsample in the
    level's last block (not at level 0), at index 2 after a SpatialTransformer, else at 1.
    """
    levels = len(c.channel_mult)
    table: ModuleTable = {
        "time_embedding.linear_1": ("time_embed.0", _SAME),    # time_embed = (Linear, SiLU, Linear)
        "time_embedding.linear_2": ("time_embed.2", _SAME),
        "class_embedding": ("label_emb", _SAME),               # an nn.Embedding in both
        "conv_in": ("input_blocks.0.0", _SAME),
        "conv_norm_out": ("out.0", _SAME),                     # out = (GroupNorm, SiLU, conv)
        "conv_out": ("out.2", _SAME),
    }
    k = 1
    for level in range(levels):
        for j in range(c.num_res_blocks):
            table[f"down_blocks.{level}.resnets.{j}"] = (f"input_blocks.{k}.0", _UNET_RESBLOCK)
            if level in c.attn_levels:
                table[f"down_blocks.{level}.attentions.{j}"] = (f"input_blocks.{k}.1", _SAME)
            k += 1
        if level < levels - 1:
            table[f"down_blocks.{level}.downsamplers.0.conv"] = (f"input_blocks.{k}.0.op", _SAME)
            k += 1

    # middle_block is [ResBlock, SpatialTransformer, ResBlock], or [ResBlock, ResBlock].
    table["mid_block.resnets.0"] = ("middle_block.0", _UNET_RESBLOCK)
    if c.mid_attention:
        table["mid_block.attentions.0"] = ("middle_block.1", _SAME)
    table["mid_block.resnets.1"] = (f"middle_block.{2 if c.mid_attention else 1}", _UNET_RESBLOCK)

    k = 0
    for i, level in enumerate(reversed(range(levels))):       # diffusers' up_blocks.0 is deepest
        attn = level in c.attn_levels
        for j in range(c.num_res_blocks + 1):
            table[f"up_blocks.{i}.resnets.{j}"] = (f"output_blocks.{k}.0", _UNET_RESBLOCK)
            if attn:
                table[f"up_blocks.{i}.attentions.{j}"] = (f"output_blocks.{k}.1", _SAME)
            k += 1
        if level > 0:
            table[f"up_blocks.{i}.upsamplers.0.conv"] = (
                f"output_blocks.{k - 1}.{2 if attn else 1}.conv", _SAME)
    return table


@lru_cache(maxsize=8)
def _unet_map(c: UNetConfig) -> dict[str, str]:
    return _key_map(_meta_keys(lambda: UNet(c)), _unet_table(c))


_UNET_HINT = ("Does the UNetConfig (channel_mult, num_res_blocks, attn_levels, mid_attention, "
              "transformer_depth, num_classes, context_dim) match the checkpoint?")


def unet_ldm_to_diffusers(state: Mapping[str, Tensor], config: UNetConfig) -> dict[str, Tensor]:
    """An SD single file's UNet (keys without "model.diffusion_model.") -> ldmkit/diffusers names.
    Raises ValueError on any unrecognised or missing key."""
    return _rename(state, _inverse(_unet_map(config)), "LDM UNet state dict", _UNET_HINT)


def unet_diffusers_to_ldm(state: Mapping[str, Tensor], config: UNetConfig) -> dict[str, Tensor]:
    """ldmkit/diffusers UNet names -> an SD single file's (without "model.diffusion_model.")."""
    return _rename(state, _unet_map(config), "diffusers UNet state dict", _UNET_HINT)


# --------------------------------------------------------------------------- VAE

_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}          # norm1/conv1/norm2/conv2 keep names
# LDM's single-head mid attention uses 1x1 convs; diffusers' uses Linears (same numbers).
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                  "to_out.0": "proj_out"}
_VAE_LINEARS = ("to_q", "to_k", "to_v", "to_out.0")      # (C, C) here, (C, C, 1, 1) in LDM


def _vae_table(c: AutoencoderConfig) -> ModuleTable:
    """Which LDM module holds each diffusers one. LDM indexes the decoder's levels by resolution
    (decoder.up.0 is the full-size level, run last), diffusers in running order (up_blocks.0 is
    the deepest), so decoder.up_blocks.i is decoder.up.{levels - 1 - i}."""
    levels = len(c.channel_mult)
    table: ModuleTable = {name: (name, _SAME) for name in ("quant_conv", "post_quant_conv")}
    for side in ("encoder", "decoder"):
        table[f"{side}.conv_in"] = (f"{side}.conv_in", _SAME)
        table[f"{side}.conv_out"] = (f"{side}.conv_out", _SAME)
        table[f"{side}.conv_norm_out"] = (f"{side}.norm_out", _SAME)
        table[f"{side}.mid_block.resnets.0"] = (f"{side}.mid.block_1", _VAE_RESNET)
        table[f"{side}.mid_block.resnets.1"] = (f"{side}.mid.block_2", _VAE_RESNET)
        table[f"{side}.mid_block.attentions.0"] = (f"{side}.mid.attn_1", _VAE_ATTENTION)
    for i in range(levels):
        up = levels - 1 - i                                     # LDM's index of up_blocks.i
        for j in range(c.num_res_blocks):
            table[f"encoder.down_blocks.{i}.resnets.{j}"] = (f"encoder.down.{i}.block.{j}",
                                                             _VAE_RESNET)
        table[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = (
            f"encoder.down.{i}.downsample.conv", _SAME)
        for j in range(c.num_res_blocks + 1):
            table[f"decoder.up_blocks.{i}.resnets.{j}"] = (f"decoder.up.{up}.block.{j}",
                                                           _VAE_RESNET)
        table[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = (f"decoder.up.{up}.upsample.conv",
                                                             _SAME)
    return table


@lru_cache(maxsize=8)
def _vae_map(c: AutoencoderConfig) -> dict[str, str]:
    if c.kind == "vq":
        # ldmkit's quantiser keeps usage buffers that LDM's VQ files lack; not SD's format anyway.
        raise ValueError("SD single files hold a KL autoencoder; kind 'vq' is not supported here")
    return _key_map(_meta_keys(lambda: Autoencoder(c)), _vae_table(c))


def _vae_linear_keys(mapping: Mapping[str, str]) -> set[str]:
    """The diffusers names of the mid attention's Linear weights (1x1 convs in LDM)."""
    return {k for k in mapping
            if ".mid_block.attentions." in k and k.endswith(tuple(f".{n}.weight"
                                                                    for n in _VAE_LINEARS))}


_VAE_HINT = ("Does the AutoencoderConfig (channel_mult, num_res_blocks, mid_attention) match "
             "the checkpoint?")


def vae_ldm_to_diffusers(state: Mapping[str, Tensor],
                         config: AutoencoderConfig) -> dict[str, Tensor]:
    """An SD single file's VAE (keys without "first_stage_model.") -> ldmkit/diffusers names;
    the mid attention's (C, C, 1, 1) conv weights become (C, C) Linear weights."""
    mapping = _vae_map(config)
    out = _rename(state, _inverse(mapping), "LDM VAE state dict", _VAE_HINT)
    for k in _vae_linear_keys(mapping):
        w = out[k]
        if w.ndim == 4 and w.shape[2:] == (1, 1):
            out[k] = w[:, :, 0, 0]                                             # (C, C)
        elif w.ndim != 2:
            raise ValueError(f"LDM VAE state dict: {mapping[k]!r} should be a 1x1 conv weight "
                             f"(C, C, 1, 1), got shape {tuple(w.shape)}")
    return out


def vae_diffusers_to_ldm(state: Mapping[str, Tensor],
                         config: AutoencoderConfig) -> dict[str, Tensor]:
    """ldmkit/diffusers VAE names -> an SD single file's (without "first_stage_model."); the mid
    attention's (C, C) Linear weights become (C, C, 1, 1) conv weights."""
    mapping = _vae_map(config)
    out = _rename(state, mapping, "diffusers VAE state dict", _VAE_HINT)
    for k in _vae_linear_keys(mapping):
        if out[mapping[k]].ndim == 2:
            out[mapping[k]] = out[mapping[k]][:, :, None, None]                 # (C, C, 1, 1)
    return out


# --------------------------------------------------------------------------- CLIP text (SD v1)

# One CLIPTextModel encoder layer, as transformers names it (each has .weight and .bias).
_CLIP_LAYER = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
               "layer_norm1", "mlp.fc1", "mlp.fc2", "layer_norm2")
_CLIP_TOP = ("text_model.embeddings.token_embedding.weight",
             "text_model.embeddings.position_embedding.weight",
             "text_model.final_layer_norm.weight", "text_model.final_layer_norm.bias")
_POSITION_IDS = "text_model.embeddings.position_ids"
_CLIP_LAYER_RE = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.")


def _clip_keys(num_layers: int) -> set[str]:
    return set(_CLIP_TOP) | {f"text_model.encoder.layers.{i}.{m}.{p}" for i in range(num_layers)
                             for m in _CLIP_LAYER for p in ("weight", "bias")}


def _count_layers(keys, pattern: re.Pattern) -> int:
    """1 + the highest layer index named (0 if none); gaps show up as missing keys later."""
    return 1 + max((int(m.group(1)) for k in keys if (m := pattern.match(k))), default=-1)


def _normalise_clip(state: Mapping[str, Tensor], what: str) -> dict[str, Tensor]:
    """Keys under "text_model.", without the position_ids buffer, checked complete.

    Some SD v1 files, written with old transformers releases, name the keys without
    "text_model.", as transformers itself does again from 5.6 on (CLIPTextModel flattened);
    SD v1.4/1.5 and the hub's CLIP files use it. position_ids is a constant arange buffer that
    transformers rebuilds; some merged checkpoints hold it as corrupted floats, so it is
    dropped, never trusted.
    """
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        name = k if k.startswith("text_model.") else "text_model." + k
        if name in out:
            raise ValueError(f"{what}: {k!r} appears both with and without 'text_model.'")
        out[name] = v
    out.pop(_POSITION_IDS, None)
    _check_keys(out.keys(), _clip_keys(_count_layers(out, _CLIP_LAYER_RE)), what)
    return out


def clip_ldm_to_transformers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """SD v1's text encoder (keys without "cond_stage_model.transformer.") -> CLIPTextModel keys
    under "text_model." (transformers >= 5.6 names CLIPTextModel's own keys without that level:
    strip it to load there). position_ids is dropped."""
    return _normalise_clip(state, "SD v1 text encoder state dict")


def clip_transformers_to_ldm(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """CLIPTextModel keys (with or without "text_model.") -> SD v1's layout, unprefixed.

    Writes text_model.embeddings.position_ids = arange(L)[None] (int64) as SD v1.x files do:
    loaders built on older transformers, where the buffer was persistent, expect it."""
    out = _normalise_clip(state, "CLIPTextModel state dict")
    positions = out["text_model.embeddings.position_embedding.weight"]        # (L, D)
    out[_POSITION_IDS] = torch.arange(positions.shape[0], device=positions.device)[None]  # (1, L)
    return out


# --------------------------------------------------------------------------- OpenCLIP (SD v2)

# OpenCLIP resblock path -> CLIPTextModel layer path (each has .weight and .bias). The fused
# attn.in_proj_{weight,bias} (q, k, v stacked on dim 0) is split apart separately.
_OPEN_CLIP_LAYER = {"ln_1": "layer_norm1", "ln_2": "layer_norm2",
                    "attn.out_proj": "self_attn.out_proj", "mlp.c_fc": "mlp.fc1",
                    "mlp.c_proj": "mlp.fc2"}
_OPEN_CLIP_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_OPEN_CLIP_TOP = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
                  "positional_embedding": "text_model.embeddings.position_embedding.weight",
                  "ln_final.weight": "text_model.final_layer_norm.weight",
                  "ln_final.bias": "text_model.final_layer_norm.bias"}
# Not part of CLIPTextModel: the projection into the joint image-text space and the
# contrastive temperature (SD v2 uses token states before them), and a constant causal mask.
_OPEN_CLIP_DROPPED = ("text_projection", "logit_scale", "attn_mask")
_OPEN_CLIP_LAYER_RE = re.compile(r"^transformer\.resblocks\.(\d+)\.")


def _open_clip_keys(num_layers: int) -> set[str]:
    per_layer = [f"{m}.{p}" for m in _OPEN_CLIP_LAYER for p in ("weight", "bias")]
    per_layer += ["attn.in_proj_weight", "attn.in_proj_bias"]
    return set(_OPEN_CLIP_TOP) | {f"transformer.resblocks.{i}.{name}"
                                  for i in range(num_layers) for name in per_layer}


def open_clip_to_transformers(state: Mapping[str, Tensor],
                              num_layers: int | None = None) -> dict[str, Tensor]:
    """SD v2's OpenCLIP text tower (keys without "cond_stage_model.model.") -> CLIPTextModel keys
    under "text_model.".

    SD v2 conditions on the penultimate layer's states (then ln_final), so by default the last
    resblock is dropped, as diffusers' SD v2 text encoder has num_hidden_layers=23 of OpenCLIP's
    24; num_layers says how many resblocks to keep. text_projection, logit_scale and attn_mask
    are dropped too (see _OPEN_CLIP_DROPPED)."""
    what = "SD v2 (OpenCLIP) text encoder state dict"
    kept_keys = {k: v for k, v in state.items() if k not in _OPEN_CLIP_DROPPED}
    total = _count_layers(kept_keys, _OPEN_CLIP_LAYER_RE)
    _check_keys(kept_keys.keys(), _open_clip_keys(total), what)
    keep = total - 1 if num_layers is None else num_layers
    if not 1 <= keep <= total:
        raise ValueError(f"{what}: num_layers must lie in 1..{total} (the resblocks it has), "
                         f"got {keep}" + (" (the default drops the last one)"
                                          if num_layers is None else ""))

    out = {hf: state[oc] for oc, hf in _OPEN_CLIP_TOP.items()}
    for i in range(keep):
        src, dst = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for oc, hf in _OPEN_CLIP_LAYER.items():
            for p in ("weight", "bias"):
                out[f"{dst}{hf}.{p}"] = state[f"{src}{oc}.{p}"]
        for p in ("weight", "bias"):
            fused = state[f"{src}attn.in_proj_{p}"]                            # (3D, D) or (3D,)
            # clone: three views of one storage would make safetensors refuse to save the dict.
            for hf, part in zip(_OPEN_CLIP_QKV, fused.chunk(3, dim=0)):
                out[f"{dst}{hf}.{p}"] = part.clone()                           # (D, D) or (D,)
    return out


def transformers_to_open_clip(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """CLIPTextModel keys (with or without "text_model.") -> OpenCLIP's, unprefixed.

    The inverse of open_clip_to_transformers for the layers kept: a resblock dropped there (SD
    v2's last), text_projection and logit_scale cannot be restored, so the result has none. The
    LDM code loads single files with strict=False and stops before the last resblock, so such a
    file still works there; a strict OpenCLIP load would report them missing."""
    s = _normalise_clip(state, "CLIPTextModel state dict")
    out = {oc: s[hf] for oc, hf in _OPEN_CLIP_TOP.items()}
    for i in range(_count_layers(s, _CLIP_LAYER_RE)):
        src, dst = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for oc, hf in _OPEN_CLIP_LAYER.items():
            for p in ("weight", "bias"):
                out[f"{dst}{oc}.{p}"] = s[f"{src}{hf}.{p}"]
        for p in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{p}"] = torch.cat(                       # (3D, D) or (3D,)
                [s[f"{src}{hf}.{p}"] for hf in _OPEN_CLIP_QKV], dim=0)
    return out
