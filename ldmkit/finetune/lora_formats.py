"""LoRA files in the two layouts other Stable Diffusion tools read, as safetensors.

kohya (sd-scripts' networks.lora; read by the A1111 / Forge web UIs, ComfyUI, diffusers):
    lora_unet_<module path, "." -> "_">.lora_down.weight   A: (r, in) or (r, in, k, k)
    lora_unet_<...>.lora_up.weight                          B: (out, r) or (out, r, 1, 1)
    lora_unet_<...>.alpha                                   alpha, 0-d
    lora_te_<CLIPTextModel module path>...                  the text encoder, the same three
    metadata  ss_network_module "networks.lora", ss_network_dim, ss_network_alpha ("Dynamic"
              when they differ between layers), ss_network_args {"conv_dim", "conv_alpha"}
  For SD 1.x / 2.x sd-scripts trains diffusers' UNet, so the path is diffusers' (= ldmkit's) module
  name: lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q,
  lora_te_text_model_encoder_layers_0_self_attn_q_proj. "_" is ambiguous, so names are looked up
  among the model's own layers, never split.
diffusers / PEFT (StableDiffusionPipeline.save_lora_weights):
    unet.<module path>.lora_A.weight = A, unet.<...>.lora_B.weight = B, text_encoder.<...> likewise
    metadata  "lora_adapter_metadata": JSON of PEFT LoraConfig fields under the component's
              prefix: {"unet.r": 4, "unet.lora_alpha": 4.0, "unet.rank_pattern": {path: r},
              "unet.alpha_pattern": {path: alpha}, "unet.target_modules": [...], ...}
  Without that metadata alpha = rank, as diffusers assumes (or "<prefix>.<path>.alpha" tensors).
  Also read: the older diffusers layouts, <path>.processor.to_q_lora.down.weight (attention
  processors; "unet." optional), <path>.lora.down.weight, CLIP's to_q_lora / lora_linear_layer.
The layout is told by the keys. Only plain LoRA is read: LoHa, LoKr, DoRA and SDXL files are
refused.
"""

from __future__ import annotations

import collections
import json
import math
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..storage.folder import atomic_write
from ..storage.weights_file import read_weights
from .lora import LoRAAdapter, LoRANetwork, adapter_shapes, find_layer, lora_components, named_layers

LAYOUTS = ("kohya", "diffusers")
KOHYA_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
KOHYA_PARTS = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}
DIFFUSERS_PARTS = {  # key suffix -> role, newest layout first
    ".lora_A.weight": "down", ".lora_B.weight": "up",
    ".lora.down.weight": "down", ".lora.up.weight": "up",
    ".lora_linear_layer.down.weight": "down", ".lora_linear_layer.up.weight": "up",
    ".alpha": "alpha",
}
# Old diffusers attention processors: <attention>.processor.to_q_lora.down.weight.
OLD_PROCESSOR = re.compile(r"(\.processor)?\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
OLD_PROCESSOR_LAYERS = {
    "unet": {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"},
    "text_encoder": {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"},
}
METADATA_KEY = "lora_adapter_metadata"


# --------------------------------------------------------------------------- saving

def save_lora(network: LoRANetwork, path: str | Path, layout: str = "kohya",
              dtype: torch.dtype | None = None, metadata: dict[str, str] | None = None) -> Path:
    """Write `network` as safetensors in `layout` ("kohya" or "diffusers"), its tensors in `dtype`
    (default: as trained); `metadata` joins the file's header. Written atomically."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not len(network):
        raise ValueError("this LoRA network has no adapters: nothing to save")

    def tensor(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", dtype or t.dtype).contiguous()

    tensors = {}
    for (component, layer), adapter in network.items():
        down, up = tensor(adapter.down.weight), tensor(adapter.up.weight)
        if layout == "kohya":
            name = KOHYA_PREFIXES[component] + layer.replace(".", "_")
            tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                        f"{name}.alpha": torch.tensor(adapter.alpha)}  # float32: alpha read exactly
        else:
            name = f"{component}.{layer}"
            tensors |= {f"{name}.lora_A.weight": down, f"{name}.lora_B.weight": up}
    header = _kohya_metadata(network) if layout == "kohya" else _diffusers_metadata(network)
    header |= {str(k): str(v) for k, v in (metadata or {}).items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def _most_common(values):
    return collections.Counter(values).most_common(1)[0][0]


def _kohya_metadata(network: LoRANetwork) -> dict[str, str]:
    """What sd-scripts writes about the network (its values are strings: str(dim), str(alpha))."""
    def uniform(values) -> str:
        # "Dynamic" when layers differ, as sd-scripts' resize_lora writes
        return str(values[0]) if len(set(values)) == 1 else "Dynamic"

    linear, conv = [], []
    for _, adapter in network.items():
        kernel = adapter.down.weight.shape[2:]
        (conv if kernel and kernel != (1, 1) else linear).append(adapter)
    header = {"ss_network_module": "networks.lora"}
    if linear:
        header |= {"ss_network_dim": uniform([a.rank for a in linear]),
                   "ss_network_alpha": uniform([a.alpha for a in linear])}
    if conv:  # k x k convs are LoCon's: their rank and alpha go in the network args
        header["ss_network_args"] = json.dumps({"conv_dim": uniform([a.rank for a in conv]),
                                                "conv_alpha": uniform([a.alpha for a in conv])})
    return header


def _diffusers_metadata(network: LoRANetwork) -> dict[str, str]:
    """PEFT LoraConfig fields per component, as diffusers' save_lora_weights writes them."""
    config = {}
    for component in sorted(network.components):
        # PEFT matches these names as suffixes of module paths; without "text_model." they match
        # CLIPTextModel under transformers 4 and 5 alike.
        adapters = {path.removeprefix("text_model."): adapter
                    for (c, path), adapter in network.items() if c == component}
        r = _most_common([a.rank for a in adapters.values()])
        alpha = _most_common([a.alpha for a in adapters.values()])
        config |= {
            f"{component}.r": r,
            f"{component}.lora_alpha": alpha,
            f"{component}.rank_pattern": {p: a.rank for p, a in adapters.items() if a.rank != r},
            f"{component}.alpha_pattern": {p: a.alpha for p, a in adapters.items()
                                           if a.alpha != alpha},
            f"{component}.target_modules": sorted(adapters),
            f"{component}.lora_dropout": 0.0,
            f"{component}.bias": "none",
            f"{component}.use_dora": False,
            f"{component}.use_rslora": False,
        }
    return {"format": "pt", METADATA_KEY: json.dumps(config, indent=2, sort_keys=True)}


# --------------------------------------------------------------------------- loading

def load_lora(path: str | Path, model) -> LoRANetwork:
    """The LoRA in `path` (either layout, told by its keys) as a network for `model` (a pipeline
    or {"unet": ..., "text_encoder": ...}), not yet attached. A file for another model is refused:
    a ValueError names the first key whose layer is missing or whose shape does not fit."""
    path = Path(path)
    if not path.is_file():
        what = " (it is a directory)" if path.is_dir() else ""
        raise FileNotFoundError(f"no LoRA file {path}{what}")
    tensors, metadata = read_weights(path)
    layout = detect_layout(tensors, path)
    read_entries = _kohya_entries if layout == "kohya" else _diffusers_entries
    entries = read_entries(tensors, path)
    parts = lora_components(model, text_encoder=any(c == "text_encoder" for c, _ in entries))
    missing = sorted({c for c, _ in entries} - set(parts))
    if missing:
        raise ValueError(f"{path} adapts the {' and '.join(missing)}, which the model given lacks")
    if layout == "kohya":
        entries = _resolve_kohya_names(entries, parts, path)
    alphas = _metadata_alphas(metadata, path) if layout == "diffusers" else {}

    network = LoRANetwork()
    for (component, layer), entry in sorted(entries.items(), key=lambda item: item[1]["key"]):
        key = entry["key"]
        base = _layer(parts, component, layer, key, path)
        for role in ("down", "up"):
            if role not in entry:
                raise ValueError(f"{path}: {key!r} has no {role} weight to go with it: "
                                 "the file is incomplete")
        rank = entry["down"][1].shape[0]
        expected = dict(zip(("down", "up"), adapter_shapes(base, rank)))
        weights = {role: _fit(entry[role], expected[role], path) for role in ("down", "up")}
        alpha = entry.get("alpha")
        if alpha is None and component in alphas:
            alpha = alphas[component](layer, rank)
        adapter = LoRAAdapter(base, rank, alpha or rank)  # none or 0: alpha = rank, as in kohya
        with torch.no_grad():
            adapter.down.weight.copy_(weights["down"])
            adapter.up.weight.copy_(weights["up"])
        network.add(component, layer, adapter)
    return network


def apply_lora(model, path: str | Path, scale: float = 1.0, merge: bool = False) -> LoRANetwork:
    """Load the LoRA in `path` and attach it with hooks at `scale` (or merge it into the weights).
    Each call's network has its own hooks and scale; detach() / unmerge() it to take it off."""
    network = load_lora(path, model)
    return network.merge(model, scale) if merge else network.attach(model, scale)


def detect_layout(tensors: dict[str, torch.Tensor], path: Path | str = "the file") -> str:
    """"kohya" or "diffusers", from the key names."""
    keys = list(tensors)
    if not keys:
        raise ValueError(f"{path} holds no tensors: it is no LoRA")
    if any(k.startswith(("lora_unet_", "lora_te")) for k in keys):
        return "kohya"
    if any(k.endswith(tuple(DIFFUSERS_PARTS)) or OLD_PROCESSOR.search(k) for k in keys):
        return "diffusers"
    shown = ", ".join(repr(k) for k in sorted(keys)[:3])
    raise ValueError(f"{path} holds no LoRA this reader knows: its keys ({shown}, ...) are neither "
                     "kohya's (lora_unet_<layer>.lora_down.weight) nor diffusers' "
                     "(unet.<layer>.lora_A.weight)")


# Each reader gives {(component, layer name): {"key": first key, "down": (key, t), "up": (key, t),
# "alpha": float}}; the layer name is still kohya's flat name until _resolve_kohya_names.

def _kohya_entries(tensors, path) -> dict:
    entries = {}
    for key, value in tensors.items():
        name, _, part = key.partition(".")
        if name.startswith(("lora_te1_", "lora_te2_")):
            raise ValueError(f"{path}: {key!r} is for SDXL's two text encoders (lora_te1_, "
                             "lora_te2_); ldmkit reads SD 1.x / 2.x LoRAs")
        component = next((c for c, p in KOHYA_PREFIXES.items() if name.startswith(p)), None)
        if component is None or part not in KOHYA_PARTS:
            raise ValueError(f"{path}: {key!r} is not part of a plain kohya LoRA (lora_unet_ / "
                             "lora_te_ layers with lora_down.weight, lora_up.weight, alpha; LoHa, "
                             "LoKr, DoRA are not supported)")
        _put(entries, (component, name), KOHYA_PARTS[part], key, value)
    return entries


def _diffusers_entries(tensors, path) -> dict:
    entries = {}
    for key, value in tensors.items():
        if key.startswith("text_encoder_2."):
            raise ValueError(f"{path}: {key!r} is for SDXL's second text encoder; ldmkit reads "
                             "SD 1.x / 2.x LoRAs")
        component, rest = "unet", key  # old attention-processor files have no prefix
        for c in ("unet", "text_encoder"):
            if key.startswith(c + "."):
                component, rest = c, key[len(c) + 1:]
        old = OLD_PROCESSOR.search(rest)
        if old:
            layer = rest[:old.start()] + "." + OLD_PROCESSOR_LAYERS[component][old.group(2)]
            role = old.group(3)
        else:
            suffix = next((s for s in DIFFUSERS_PARTS if rest.endswith(s)), None)
            if suffix is None:
                raise ValueError(f"{path}: {key!r} is not part of a plain diffusers LoRA "
                                 "(<layer>.lora_A.weight, lora_B.weight; DoRA magnitudes and LoRA "
                                 "biases are not supported)")
            layer, role = rest[:-len(suffix)], DIFFUSERS_PARTS[suffix]
        if component == "text_encoder" and not layer.startswith("text_model."):
            layer = "text_model." + layer  # written under transformers 5: no text_model level
        _put(entries, (component, layer), role, key, value)
    return entries


def _put(entries, name, role, key, value) -> None:
    entry = entries.setdefault(name, {"key": key})
    entry["key"] = min(entry["key"], key)
    entry[role] = value.item() if role == "alpha" else (key, value)


def _resolve_kohya_names(entries, parts, path) -> dict:
    """kohya's flat names -> module paths, looked up among the model's Linear / Conv2d layers."""
    known = {(c, KOHYA_PREFIXES[c] + name.replace(".", "_")): name
             for c, root in parts.items() for name, _ in named_layers(c, root)}
    resolved = {}
    for (component, flat), entry in sorted(entries.items(), key=lambda item: item[1]["key"]):
        if (component, flat) not in known:
            raise ValueError(
                f"{path}: {entry['key']!r} names no layer of this model's {component}: the LoRA "
                "was made for another model (SD 1.x / 2.x kohya names follow diffusers' modules, "
                "e.g. lora_unet_down_blocks_0_attentions_0_proj_in)")
        resolved[(component, known[(component, flat)])] = entry
    return resolved


def _layer(parts, component, layer, key, path) -> torch.nn.Module:
    base = find_layer(component, parts[component], layer)
    if base is None:
        raise ValueError(f"{path}: {key!r} is for {component} layer {layer!r}, which this model "
                         "does not have (as a Linear or Conv2d): the LoRA was made for another "
                         "model")
    return base


def _fit(named: tuple[str, torch.Tensor], expected: tuple[int, ...], path) -> torch.Tensor:
    """The tensor in the layer's shape; a 1x1 conv and a Linear may swap shapes (tools differ)."""
    key, tensor = named
    shape = tuple(tensor.shape)
    if shape == expected:
        return tensor
    one_by_one = all(d == 1 for d in shape[2:]) and all(d == 1 for d in expected[2:])
    if one_by_one and shape[:2] == expected[:2]:
        return tensor.reshape(expected)
    raise ValueError(f"{path}: {key!r} has shape {shape}, but this model's layer needs {expected}: "
                     "the LoRA was made for a model of another architecture")


def _metadata_alphas(metadata: dict[str, str], path) -> dict:
    """component -> alpha(layer, rank) from diffusers' lora_adapter_metadata (PEFT's rules)."""
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: its {METADATA_KEY} metadata is not JSON ({error})") from None
    alphas = {}
    for component in ("unet", "text_encoder"):
        prefix = component + "."
        fields = {k[len(prefix):]: v for k, v in config.items() if k.startswith(prefix)}
        if not fields:
            continue
        if fields.get("use_dora"):
            raise ValueError(f"{path}: a DoRA adapter (use_dora); ldmkit reads plain LoRA only")
        alphas[component] = _alpha_rule(fields)
    return alphas


def _alpha_rule(fields: dict):
    default = fields.get("lora_alpha", 8)  # PEFT's LoraConfig default
    pattern = fields.get("alpha_pattern") or {}
    rs_lora = bool(fields.get("use_rslora"))

    def alpha(layer: str, rank: int) -> float:
        # PEFT matches pattern keys as regexes against the end of the module path.
        value = next((v for k, v in pattern.items() if re.match(rf"(.*\.)?({k})$", layer)), default)
        # rsLoRA scales by alpha / sqrt(r): the same as alpha * sqrt(r) / r.
        return float(value) * (math.sqrt(rank) if rs_lora else 1.0)
    return alpha
