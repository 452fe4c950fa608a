"""LoRA (Hu et al. 2021): low-rank updates of a frozen model's Linear and Conv2d layers.

A layer y = W x becomes y = W x + s (alpha / r) B A x (LoRA eq. 3, with kohya's and PEFT's alpha):
A = down maps the input to r channels, B = up maps them back, r << min(in, out). B starts at zero,
so a fresh LoRA changes nothing; A starts kaiming-uniform as nn.Linear does. For a k x k Conv2d, A
is a k x k conv to r channels (same stride and padding) and B a 1x1 conv, so B A is again a k x k
conv: merged, delta[o, i, :, :] = sum_r B[o, r] A[r, i, :, :].

Adapters act through forward hooks: the base weights stay untouched, several networks stack (each
with its own hooks and scale s) and detach() removes them. merge() instead adds s (alpha / r) B A
into the base weights (free at inference) and unmerge() subtracts exactly what it added.

Targets, by module path (ldmkit's UNet uses diffusers' UNet2DConditionModel names; the text encoder
is transformers' CLIPTextModel):
    attention     UNet: to_q, to_k, to_v, to_out.0 of attn1 / attn2
                  CLIP: q_proj, k_proj, v_proj, out_proj
    feed_forward  UNet: ff.net.0.proj (GEGLU), ff.net.2, the spatial transformers' proj_in, proj_out
                  CLIP: mlp.fc1, mlp.fc2
    conv          UNet: the ResBlocks' conv1, conv2, conv_shortcut and the down/upsamplers' convs
attention + feed_forward is what kohya's sd-scripts trains by default; adding conv gives its LoCon
set ("conv_dim"), less the ResBlocks' time_emb_proj Linear, which conv leaves out because it is no
convolution (a file that adapts it still loads: loading takes whatever layers a file names).
Adapters are keyed by (component, module path), component "unet" or "text_encoder". Text encoder
paths are those of CLIPTextModel's state dict, "text_model.encoder.layers.0.self_attn.q_proj", the
names LoRA files use, whatever the transformers version (5.x dropped the text_model module level).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping

import torch
from torch import nn

COMPONENTS = ("unet", "text_encoder")
TARGETS = ("attention", "feed_forward", "conv")  # target groups; the denoiser names its layers' (layer_groups)
TEXT_ENCODER_GROUPS = {  # transformers' CLIPTextModel's module paths
    "attention": r"(^|\.)self_attn\.(q_proj|k_proj|v_proj|out_proj)$",
    "feed_forward": r"(^|\.)mlp\.(fc1|fc2)$",
}
ADAPTABLE = (nn.Linear, nn.Conv2d)


# --------------------------------------------------------------------------- one adapter

def adapter_shapes(base: nn.Module, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(down, up) weight shapes of a rank-`rank` adapter of `base`."""
    if isinstance(base, nn.Linear):
        return (rank, base.in_features), (base.out_features, rank)
    if isinstance(base, nn.Conv2d):
        return (rank, base.in_channels, *base.kernel_size), (base.out_channels, rank, 1, 1)
    raise ValueError(f"LoRA adapts nn.Linear and nn.Conv2d layers, not {type(base).__name__}")


class LoRAAdapter(nn.Module):
    """scale * (alpha / rank) * up(down(dropout(x))): the low-rank update of one layer's output."""

    def __init__(self, base: nn.Module, rank: int, alpha: float | None = None,
                 dropout: float = 0.0):
        super().__init__()
        _check_settings(rank, alpha, dropout)
        # Adapters train in full precision beside a half-precision model; outputs are cast back.
        dtype = base.weight.dtype
        dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        options = dict(bias=False, device=base.weight.device, dtype=dtype)
        if isinstance(base, nn.Linear):
            self.down = nn.Linear(base.in_features, rank, **options)
            self.up = nn.Linear(rank, base.out_features, **options)
        elif isinstance(base, nn.Conv2d):
            if base.groups != 1:
                raise ValueError(f"LoRA does not adapt grouped convolutions (groups={base.groups})")
            self.down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride,
                                  base.padding, base.dilation, padding_mode=base.padding_mode,
                                  **options)
            self.up = nn.Conv2d(rank, base.out_channels, 1, **options)
        else:
            adapter_shapes(base, rank)  # raises, naming the type
        self.rank, self.alpha = rank, float(rank if alpha is None else alpha)
        self.dropout = nn.Dropout(dropout)
        self.scale = 1.0
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))  # nn.Linear's own init
        nn.init.zeros_(self.up.weight)                              # B = 0: no change at first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(self.dropout(x.to(self.down.weight.dtype)))   # (..., r) or (B, r, H', W')
        return self.up(h) * (self.scale * self.alpha / self.rank)

    def weight_delta(self) -> torch.Tensor:
        """(alpha / rank) B A in the base weight's shape; the scale s is not included."""
        up = self.up.weight.flatten(1)                              # (out, r)
        down = self.down.weight                                     # (r, in) or (r, in, k, k)
        delta = (up @ down.flatten(1)).view(up.shape[0], *down.shape[1:])
        return delta * (self.alpha / self.rank)

    def fits(self, base: nn.Module) -> bool:
        down, up = adapter_shapes(base, self.rank)
        return (tuple(self.down.weight.shape), tuple(self.up.weight.shape)) == (down, up)


def _check_settings(rank, alpha, dropout) -> None:
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    if alpha is not None and not alpha > 0:
        raise ValueError(f"alpha must be > 0 (or None for alpha = rank), got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")


# --------------------------------------------------------------------------- the model's parts

def lora_components(model, text_encoder: bool = True) -> dict[str, nn.Module]:
    """{"unet": ..., "text_encoder": ...} of a pipeline (ldmkit's or diffusers') or of a dict of
    modules; the text encoder only when asked, as the transformers CLIPTextModel."""
    if isinstance(model, Mapping):
        unknown = sorted(set(model) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"unknown component(s) {unknown}: a LoRA adapts {list(COMPONENTS)}")
        parts = {name: module for name, module in model.items()
                 if module is not None and (text_encoder or name != "text_encoder")}
        if "text_encoder" in parts:
            parts["text_encoder"] = _clip_text_model(parts["text_encoder"])
        return parts
    unet = getattr(model, "unet", None)
    if not isinstance(unet, nn.Module):
        raise ValueError("expected a pipeline with a .unet, or a dict {'unet': module, "
                         f"'text_encoder': module}}, got {type(model).__name__}")
    parts = {"unet": unet}
    if text_encoder:
        parts["text_encoder"] = _clip_text_model(getattr(model, "text_encoder", None))
    return parts


def _clip_text_model(encoder) -> nn.Module:
    model = getattr(encoder, "model", encoder)  # ldmkit's CLIPTextEncoder wraps transformers' model
    if getattr(getattr(model, "config", None), "model_type", None) != "clip_text_model":
        raise ValueError("a LoRA of the text encoder needs a CLIP text encoder (Stable "
                         f"Diffusion's); this model's is {type(encoder).__name__}: adapt the UNet "
                         "only")
    return model


def _key(component: str, path: str) -> str:
    """nn.ModuleDict names may not hold dots: "unet/down_blocks/0/..."."""
    return f"{component}/{path.replace('.', '/')}"


# --------------------------------------------------------------------------- the network

class LoRANetwork(nn.Module):
    """Adapters keyed by (component, module path); its parameters are the trainable ones."""

    def __init__(self):
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.scale = 1.0
        self._hooks: list = []      # removable handles while attached
        self._merged: list = []     # (base module, delta added to its weight) while merged

    # ---- building -------------------------------------------------------------------------
    @classmethod
    def create(cls, model, rank: int = 4, alpha: float | None = None, dropout: float = 0.0,
               targets=("attention",), text_encoder: bool = False) -> LoRANetwork:
        """Fresh adapters (no change yet) on the `targets` layers of a pipeline's UNet, and of its
        CLIP text encoder when text_encoder=True. targets: any of "attention", "feed_forward",
        "conv" (see the module docstring). alpha None means alpha = rank (scale 1)."""
        _check_settings(rank, alpha, dropout)
        targets = (targets,) if isinstance(targets, str) else tuple(targets)
        unknown = [t for t in targets if t not in TARGETS]
        if unknown or not targets:
            raise ValueError(f"targets must be one or more of {list(TARGETS)}, got {list(targets)}")
        parts = lora_components(model, text_encoder)
        if text_encoder and "text_encoder" not in parts:
            raise ValueError("text_encoder=True but the modules given hold no 'text_encoder'")
        network = cls()
        for component, root in parts.items():
            groups = TEXT_ENCODER_GROUPS if component == "text_encoder" else getattr(root, "layer_groups", {})
            patterns = [groups[t] for t in targets if t in groups]
            for path, module in named_layers(component, root):
                if any(re.search(p, path) for p in patterns):
                    network.add(component, path, LoRAAdapter(module, rank, alpha, dropout))
        if not len(network.adapters):
            raise ValueError(f"no layer of {sorted(parts)} matches the targets {list(targets)}: "
                             "is this a UNet with diffusers' module names (as ldmkit's has)?")
        return network

    def add(self, component: str, path: str, adapter: LoRAAdapter) -> None:
        if component not in COMPONENTS:
            raise ValueError(f"component must be one of {list(COMPONENTS)}, got {component!r}")
        if self._hooks or self._merged:
            raise ValueError("detach() or unmerge() this LoRA before adding adapters")
        adapter.scale = self.scale
        self.adapters[_key(component, path)] = adapter

    def items(self) -> Iterator[tuple[tuple[str, str], LoRAAdapter]]:
        """((component, module path), adapter) pairs."""
        for key, adapter in self.adapters.items():
            component, path = key.split("/", 1)
            yield (component, path.replace("/", ".")), adapter

    def __getitem__(self, component_and_path: tuple[str, str]) -> LoRAAdapter:
        return self.adapters[_key(*component_and_path)]

    def __contains__(self, component_and_path: tuple[str, str]) -> bool:
        return _key(*component_and_path) in self.adapters

    def __len__(self) -> int:
        return len(self.adapters)

    @property
    def components(self) -> set[str]:
        return {component for (component, _), _ in self.items()}

    @property
    def attached(self) -> bool:
        return bool(self._hooks)

    @property
    def merged(self) -> bool:
        return bool(self._merged)

    # ---- hooks ----------------------------------------------------------------------------
    def attach(self, model, scale: float = 1.0) -> LoRANetwork:
        """Add each adapter's output to its layer's through a forward hook; weights untouched."""
        if self._hooks:
            raise ValueError("this LoRA is already attached; detach() it first")
        if self._merged:
            raise ValueError("this LoRA is merged into the weights; unmerge() it before attaching, "
                             "or it would count twice")
        self.set_scale(scale)
        for _, adapter, base in self._targets(model):
            adapter.to(base.weight.device)
            self._hooks.append(base.register_forward_hook(_adding_hook(adapter)))
        return self

    def detach(self) -> None:
        """Remove the hooks: the model computes exactly what it did before attach()."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def set_scale(self, scale: float) -> None:
        """s in y = W x + s (alpha / r) B A x for every adapter; at once when attached."""
        if self._merged:
            raise ValueError("this LoRA is merged with a fixed scale; unmerge() it and "
                             "merge(model, scale) again")
        self.scale = float(scale)
        for _, adapter in self.items():
            adapter.scale = self.scale

    # ---- merging --------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self, model, scale: float = 1.0) -> LoRANetwork:
        """W += scale (alpha / r) B A in every adapted layer; unmerge() takes it out again."""
        if self._hooks:
            raise ValueError("this LoRA is attached with hooks; detach() it before merging, "
                             "or it would count twice")
        if self._merged:
            raise ValueError("this LoRA is already merged; unmerge() it first")
        for _, adapter, base in self._targets(model):
            delta = (scale * adapter.weight_delta()).to(base.weight.device, base.weight.dtype)
            base.weight.add_(delta)
            self._merged.append((base, delta))
        return self

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract exactly the deltas merge() added (stored: later training cannot skew them)."""
        for base, delta in reversed(self._merged):
            base.weight.sub_(delta)
        self._merged.clear()

    # ---- helpers --------------------------------------------------------------------------
    def _targets(self, model) -> list[tuple[tuple[str, str], LoRAAdapter, nn.Module]]:
        """(name, adapter, base layer) for every adapter, all checked before any is used."""
        parts = lora_components(model, text_encoder="text_encoder" in self.components)
        found = []
        for (component, path), adapter in self.items():
            if component not in parts:
                raise ValueError(f"this LoRA adapts the {component}, which the model given lacks")
            base = find_layer(component, parts[component], path)
            if base is None:
                raise ValueError(f"this LoRA adapts {component} layer {path!r}, which the model "
                                 "does not have: it was made for another model")
            if not adapter.fits(base):
                down, up = adapter_shapes(base, adapter.rank)
                has = tuple(adapter.down.weight.shape), tuple(adapter.up.weight.shape)
                raise ValueError(f"{component} layer {path!r} needs adapter weights {down} / "
                                 f"{up}, this LoRA has {has[0]} / {has[1]}: it was made for "
                                 "another model")
            found.append(((component, path), adapter, base))
        return found


def named_layers(component: str, root: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(path, layer) for every Linear and Conv2d of a component; text encoder paths start
    "text_model." (see the module docstring)."""
    clip_5 = component == "text_encoder" and not hasattr(root, "text_model")
    prefix = "text_model." if clip_5 else ""
    for path, module in root.named_modules():
        if isinstance(module, ADAPTABLE):
            yield prefix + path, module


def find_layer(component: str, root: nn.Module, path: str) -> nn.Module | None:
    """The Linear or Conv2d at `path` (as named_layers names it), or None."""
    if component == "text_encoder" and not hasattr(root, "text_model"):
        path = path.removeprefix("text_model.")
    try:
        layer = root.get_submodule(path)
    except AttributeError:
        return None
    return layer if isinstance(layer, ADAPTABLE) else None


def _adding_hook(adapter: LoRAAdapter):
    def add_update(module, args, output):
        return output + adapter(args[0]).to(output.dtype)
    return add_update
