"""ControlNet files in and out, in three layouts; which one is told by content, never by name.

    ldmkit folder       config.json ({"kind": "controlnet", "controlnet": ControlNetConfig})
                        and model.safetensors (keys under "controlnet.")
    diffusers folder    a ControlNetModel's config.json and diffusion_pytorch_model.safetensors
                        (or .bin); ldmkit's parameter names are diffusers' own, so no renaming
    original file       lllyasviel's ControlNet (.pth read with torch.load(weights_only=True), or
                        .safetensors): the LDM names, under "control_model." or without it

The original layout names the encoder copy as LDM names the UNet's encoder (time_embed,
input_blocks, middle_block: the SD single files' mapping, ldmkit.io.sd_keys) and the ControlNet's
own parts so:

    input_hint_block.0, .2, ..., .4n-2   the hint encoder's convs (SiLUs at the odd indices)
    zero_convs.i.0                       the zero 1x1 conv of skip i
    middle_block_out.0                   the middle block's zero 1x1 conv

An original file carries no config: it is read off the weights' shapes (the encoder's as for an
SD single file, the hint encoder's widths from its convs). The attention heads are not in the
weights: they are the base UNet's when one is given (as Pipeline.load_controlnet does), else
SD's convention (8 heads for a 768-wide context, 64-wide heads for a 1024-wide one). Every loader
checks the ControlNet against the base UNet when given one, naming both on a mismatch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..config import from_dict, to_dict
from ..model.folder import MODELS_DIR
from ..nets import UNet, UNetConfig
from ..nets.controlnet import ControlNet, ControlNetConfig, check_base
from ..storage import CheckpointError, atomic_write, load_checkpoint, read_weights, save_checkpoint
from . import sd_configs as cfgs
from .sd_keys import unet_diffusers_to_ldm
from .stable_diffusion import LDMKIT_METADATA, build, read_component, read_json, staged_folder, write_component

PREFIX = "control_model."     # the original files' prefix (some tools strip it)
KIND = "controlnet"           # config.json's "kind" in an ldmkit ControlNet folder
ENCODER = ("conv_in.", "time_embedding.", "class_embedding.", "down_blocks.", "mid_block.")


# ---- key maps: ldmkit / diffusers names <-> the original layout ------------------------------------
@lru_cache(maxsize=8)
def original_key_map(config: ControlNetConfig) -> dict[str, str]:
    """{ldmkit (= diffusers) name: original name} for every parameter of a ControlNet of `config`."""
    with torch.device("meta"):
        unet_names = list(UNet(config.unet).state_dict())
    # The SD single files' UNet renaming is by name only: passing names as the values reads the map.
    ldm_of = {diffusers: ldm for ldm, diffusers in unet_diffusers_to_ldm(
        {name: name for name in unet_names}, config.unet).items()}
    mapping = {name: ldm for name, ldm in ldm_of.items() if name.startswith(ENCODER)}
    blocks = 2 * (len(config.hint_widths) - 1)
    hint_convs = {"conv_in": 0, **{f"blocks.{j}": 2 * (j + 1) for j in range(blocks)}, "conv_out": 2 * (blocks + 1)}
    with torch.device("meta"):
        names = list(ControlNet(config).state_dict())
    for name in names:
        module, _, leaf = name.rpartition(".")
        if name.startswith("controlnet_cond_embedding."):
            conv = module[len("controlnet_cond_embedding."):]
            mapping[name] = f"input_hint_block.{hint_convs[conv]}.{leaf}"
        elif name.startswith("controlnet_down_blocks."):
            mapping[name] = f"zero_convs.{module.rpartition('.')[2]}.0.{leaf}"
        elif name.startswith("controlnet_mid_block."):
            mapping[name] = f"middle_block_out.0.{leaf}"
    assert set(mapping) == set(names) and len(set(mapping.values())) == len(mapping)
    return mapping


def _renamed(state: Mapping[str, torch.Tensor], mapping: Mapping[str, str], what: str) -> dict[str, torch.Tensor]:
    unknown, missing = sorted(set(state) - set(mapping)), sorted(set(mapping) - set(state))
    if unknown or missing:
        raise CheckpointError(f"{what}: {len(unknown)} unrecognised key(s) {unknown[:4]}, {len(missing)} missing "
                              f"key(s) {missing[:4]}: the ControlNetConfig does not match the weights")
    return {mapping[k]: v for k, v in state.items()}


def to_original(state: Mapping[str, torch.Tensor], config: ControlNetConfig, prefix: bool = True) -> dict:
    """ldmkit / diffusers ControlNet weights -> the original layout (with "control_model." or not)."""
    out = _renamed(state, original_key_map(config), "ControlNet state dict")
    return {PREFIX + k: v for k, v in out.items()} if prefix else out


def from_original(state: Mapping[str, torch.Tensor], config: ControlNetConfig) -> dict[str, torch.Tensor]:
    """Original-layout weights (prefixed or not) -> ldmkit / diffusers names."""
    inverse = {ldm: name for name, ldm in original_key_map(config).items()}
    return _renamed(strip_prefix(state), inverse, "original ControlNet state dict")


def strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The "control_model." entries without the prefix (a full cldm checkpoint also holds SD's
    weights: they are left out); a file without the prefix as it is."""
    if any(k.startswith(PREFIX) for k in state):
        return {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    return dict(state)


# ---- configs ---------------------------------------------------------------------------------------
def config_from_original(state: Mapping[str, torch.Tensor], base: UNetConfig | None = None) -> ControlNetConfig:
    """The ControlNetConfig of original-layout weights (prefix stripped), read off their shapes."""
    hint_convs = sorted(int(m.group(1)) for k in state if (m := re.fullmatch(r"input_hint_block\.(\d+)\.weight", k)))
    context = next((v.shape[1] for k, v in state.items() if k.endswith("attn2.to_k.weight")), None)
    v2 = base.head_dim is not None if base is not None else context == 1024
    # unet_config_from_ldm reads a whole UNet, output conv included: a stand-in gives its width.
    out_channels = base.out_channels if base is not None else 4
    unet = cfgs.unet_config_from_ldm({**state, "out.2.weight": torch.empty(out_channels, device="meta")}, v2)
    if base is not None:  # the heads are not in the weights: the base's, which the encoder copies
        unet = replace(unet, num_heads=base.num_heads, head_dim=base.head_dim)
    widths = [state[f"input_hint_block.{i}.weight"].shape[0] for i in hint_convs[:-1:2]]  # 0, 4, 8, ...: each width
    return ControlNetConfig(unet=unet, hint_channels=state["input_hint_block.0.weight"].shape[1],
                            hint_widths=tuple(widths))


_UNET_ONLY = ("sample_size", "out_channels", "up_block_types", "time_cond_proj_dim", "center_input_sample",
              "time_embedding_type", "conv_in_kernel", "conv_out_kernel", "dual_cross_attention")


def config_from_diffusers(cfg: Mapping[str, Any]) -> ControlNetConfig:
    """ControlNetConfig from a diffusers ControlNetModel config.json."""
    if cfg.get("_class_name", "ControlNetModel") != "ControlNetModel":
        raise CheckpointError(f"this diffusers folder holds a {cfg.get('_class_name')}, not a ControlNetModel")
    order = cfg.get("controlnet_conditioning_channel_order", "rgb")
    if order not in ("rgb", "bgr"):
        raise CheckpointError(f"unknown controlnet_conditioning_channel_order {order!r} (rgb or bgr)")
    try:
        unet = cfgs.unet_config_from_diffusers({**cfg, "_class_name": "UNet2DConditionModel"})
    except ValueError as error:
        raise CheckpointError(f"this ControlNetModel's encoder: {error}") from None
    return ControlNetConfig(unet=unet, hint_channels=cfg.get("conditioning_channels", 3),
                            hint_widths=tuple(cfg.get("conditioning_embedding_out_channels") or (16, 32, 96, 256)),
                            global_pool=cfg.get("global_pool_conditions", False), bgr=order == "bgr")


def config_to_diffusers(config: ControlNetConfig) -> dict[str, Any]:
    """A diffusers ControlNetModel config.json of `config`."""
    unet = cfgs.unet_config_to_diffusers(config.unet, sample_size=64)
    return {
        **{k: v for k, v in unet.items() if k not in _UNET_ONLY}, "_class_name": "ControlNetModel",
        "conditioning_channels": config.hint_channels,
        "conditioning_embedding_out_channels": list(config.hint_widths),
        "global_pool_conditions": config.global_pool,
        "controlnet_conditioning_channel_order": "bgr" if config.bgr else "rgb",
    }


# ---- loading ---------------------------------------------------------------------------------------
def load_controlnet(path: str | Path, base: UNetConfig | None = None) -> ControlNet:
    """The ControlNet in an ldmkit folder, a diffusers ControlNetModel folder or an original
    single file (.pth / .ckpt / .safetensors, "control_model." keys or stripped ones). base: the
    UNet it will steer; one it does not fit is refused, naming both. A shipped ControlNet's name
    (models/controlnets/NAME, e.g. "shapes-control") works too."""
    path = Path(path)
    shipped = MODELS_DIR / "controlnets" / str(path)
    if not path.exists() and len(path.parts) == 1 and shipped.is_dir():
        path = shipped
    if path.is_dir():
        config_file = read_json(path / "config.json")
        if config_file.get("kind") == KIND:
            states, meta, _ = load_checkpoint(path)
            config = from_dict(ControlNetConfig, meta[KIND])
            state, name = states.get(KIND, {}), path.name
        else:
            config = config_from_diffusers(config_file)
            state, name = read_component(path, "ControlNet"), path.name
    elif path.is_file():
        tensors, metadata = read_weights(path)
        state, name = strip_prefix(tensors), path.stem
        if "input_hint_block.0.weight" not in state:
            sample = ", ".join(list(tensors)[:4])
            diffusers = " (diffusers' names: load its folder, with config.json)" if any(
                k.startswith("controlnet_cond_embedding.") for k in tensors) else ""
            raise CheckpointError(f"{path} holds no ControlNet ('{PREFIX}input_hint_block.*' keys){diffusers}; "
                                  f"it has {len(tensors)} tensors such as {sample or 'none'}")
        ours = metadata.get(LDMKIT_METADATA)  # written by ldmkit: its config, heads included
        config = from_dict(ControlNetConfig, json.loads(ours)) if ours else config_from_original(state, base)
        state = from_original(state, config)
    else:
        raise CheckpointError(f"no ControlNet at {path}: give an ldmkit or diffusers ControlNet folder, or an "
                              "original .pth / .safetensors file")
    if base is not None:
        check_base(config, base, f"the ControlNet {name!r}")
    net = build(ControlNet, config, state)
    net.name = name
    return net


# ---- saving ----------------------------------------------------------------------------------------
def _tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_controlnet(net: ControlNet, folder: str | Path) -> Path:
    """An ldmkit ControlNet folder (written whole, then renamed into place)."""
    meta = {"kind": KIND, KIND: to_dict(net.config)}
    return save_checkpoint(folder, {KIND: net.state_dict()}, meta)


def save_controlnet_diffusers(net: ControlNet, folder: str | Path) -> Path:
    """A diffusers ControlNetModel folder, which ControlNetModel.from_pretrained reads."""
    folder = Path(folder)
    with staged_folder(folder) as staging:
        staging.rmdir()  # write_component makes the folder itself
        write_component(staging, config_to_diffusers(net.config), net.state_dict())
    return folder


def save_controlnet_original(net: ControlNet, path: str | Path, prefix: bool = True) -> Path:
    """The original layout as one .safetensors file, keys under "control_model." (prefix=False:
    without it, as some tools write them); ldmkit's config in the metadata, read back exactly."""
    tensors = _tensors(to_original(net.state_dict(), net.config, prefix))
    metadata = {"format": "pt", LDMKIT_METADATA: json.dumps(to_dict(net.config))}
    return atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))
