"""ControlNet in sampling: the hints, scales and step range of one run, and the residuals that
every call of the network adds to the base UNet (ldmkit.nets.controlnet).

The hint goes to both halves of classifier-free guidance: the ControlNet runs on the batched
[uncond; cond] call, each half with its own context. In guess mode only the conditional half is
steered (the unconditional one gets no residuals) and the residuals are scaled 0.1 ... 1 from
the first skip to the middle block, as diffusers' pipeline does. Several ControlNets are summed.
control_start / control_end: the fraction of the steps during which a ControlNet acts; step i of
N is kept unless i / N < start or (i + 1) / N > end (diffusers' rule). A network call is placed
on the step of the nearest sampling timestep, so a sampler's intermediate evaluations (Heun's
second one) count for the step whose timestep they share.

How the pieces meet: core.network_inputs puts a per-sample, per-ControlNet weight
("control_weight", (B, K): 1 = steer, 0 = not) into both halves' conditioning, which guidance
batches like any input; core.call_net hands it, with x_t, t and the context, to Control.residuals
and passes the sum to the UNet as `control`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from ..io.controlnet_files import load_controlnet
from ..nets.controlnet import ControlNet, check_base
from .inputs import as_pil

WEIGHT = "control_weight"  # the conditioning key of the per-sample weights


@dataclass(frozen=True, eq=False)
class Control:
    """The ControlNets of one run with their hints (1, C_hint, H_px, W_px) in [0, 1], scales (a
    number, or one per residual), step fractions and guess mode; `timesteps`: the run's sampling
    timesteps, which place a call on its step (None: every call is steered)."""

    nets: tuple[ControlNet, ...]
    hints: tuple[torch.Tensor, ...]
    scales: tuple[float | tuple[float, ...], ...]
    starts: tuple[float, ...]
    ends: tuple[float, ...]
    guess_mode: bool = False
    timesteps: torch.Tensor | None = None

    def at_timesteps(self, timesteps: torch.Tensor) -> Control:
        """This control placed on a run's timesteps, unless already placed (a RePaint pass runs one
        step at a time, but its fractions are of the whole run)."""
        return self if self.timesteps is not None else replace(self, timesteps=timesteps)

    def active(self, k: int, t) -> bool:
        """Whether ControlNet k acts at timestep t."""
        if self.timesteps is None:
            return True
        grid = self.timesteps[:-1].double()                             # (N,) the steps' timesteps
        i = int((grid - float(torch.as_tensor(t).reshape(-1)[0])).abs().argmin())
        n = len(grid)
        return not (i / n < self.starts[k] or (i + 1) / n > self.ends[k])

    def residuals(self, x_t: torch.Tensor, x_in: torch.Tensor, t, weight: torch.Tensor | None,
                  cond: dict) -> list[torch.Tensor] | None:
        """The summed residuals of the ControlNets acting at t, for the rows whose weight is not 0;
        None when none acts. x_in: what the UNet reads (x_t, or x_t with an inpainting model's
        extra channels); a ControlNet reads whichever of the two has its input width."""
        inputs = {k: cond[k] for k in ("context", "context_mask", "class_labels") if cond.get(k) is not None}
        total = None
        for k, (net, hint, scale) in enumerate(zip(self.nets, self.hints, self.scales)):
            rows = torch.ones(len(x_t), dtype=torch.bool, device=x_t.device) if weight is None else weight[:, k] != 0
            if not self.active(k, t) or not rows.any():
                continue
            x = x_in if net.config.unet.in_channels == x_in.shape[1] else x_t
            if rows.all():
                out = net(x, t, hint, scale=scale, guess_mode=self.guess_mode, **inputs)
            else:  # guess mode under guidance: the conditional rows only, zeros elsewhere
                t_rows = t[rows] if torch.is_tensor(t) and t.ndim == 1 and len(t) == len(x) else t
                part = net(x[rows], t_rows, hint, scale=scale, guess_mode=self.guess_mode,
                           **{key: value[rows] for key, value in inputs.items()})
                out = [p.new_zeros((len(x), *p.shape[1:])).index_put_((rows,), p) for p in part]
            total = out if total is None else [a + b for a, b in zip(total, out)]
        return total


def control_weights(control: Control | None, count: int, conditional: bool, device) -> dict[str, torch.Tensor]:
    """The conditioning entry of `count` samples of one guidance half: every ControlNet steers
    both halves, except in guess mode, where the unconditional half gets none."""
    if control is None:
        return {}
    value = 1.0 if conditional or not control.guess_mode else 0.0
    return {WEIGHT: torch.full((count, len(control.nets)), value, device=device)}


# ---- a run's control from what the caller gave ------------------------------------------------------
def _per_net(value, count: int, what: str) -> list:
    """One entry per ControlNet: a single value for all, or a list of exactly `count`."""
    values = list(value) if isinstance(value, list | tuple) else [value] * count
    if len(values) != count:
        raise ValueError(f"{what}: give one value or one per ControlNet ({count} loaded), got {len(values)}")
    return values


def _scales(control_scale, nets: Sequence[ControlNet]) -> list:
    """One scale per ControlNet, each a number or one per residual. With one ControlNet, a flat
    list as long as its residuals is its per-block scales."""
    if len(nets) == 1 and isinstance(control_scale, list | tuple) and len(control_scale) > 1:
        control_scale = [control_scale]
    scales = _per_net(control_scale, len(nets), "control_scale")
    return [tuple(float(v) for v in s) if isinstance(s, list | tuple) else float(s) for s in scales]


def prepare_control(pipe, control_image, control_scale=1.0, guess_mode: bool = False, start=0.0, end=1.0,
                    size: tuple[int, int] | None = None) -> Control | None:
    """The Control of a run of `size` (H, W) pixels from the images (one per loaded ControlNet, in
    load order), or None without a control image. A hint of another size is resized (Lanczos;
    bilinear for a tensor)."""
    if control_image is None:
        return None
    nets = list(pipe.controlnets)
    if not nets:
        raise ValueError("control_image was given but no ControlNet is loaded: call pipe.load_controlnet(path) first")
    images = _per_net(control_image, len(nets), "control_image")
    starts = [float(s) for s in _per_net(start, len(nets), "control_start")]
    ends = [float(e) for e in _per_net(end, len(nets), "control_end")]
    for s, e in zip(starts, ends):
        if not 0 <= s < e <= 1:
            raise ValueError(f"control_start and control_end must satisfy 0 <= start < end <= 1, got {s} and {e}")
    factor = pipe.autoencoder.config.downsampling_factor
    for net in nets:
        if net.config.hint_factor != factor:
            raise ValueError(f"the ControlNet {net.name!r} encodes its hint {net.config.hint_factor}x down but the "
                             f"autoencoder's latents are {factor}x smaller than the image: not made for this model")
    hints = [control_hint(image, net, size).to(pipe.device, pipe.dtype) for image, net in zip(images, nets)]
    guess_mode = guess_mode or any(net.config.global_pool for net in nets)  # diffusers: pooled models guess
    return Control(tuple(nets), tuple(hints), tuple(_scales(control_scale, nets)), tuple(starts), tuple(ends),
                   guess_mode)


def control_hint(image, net: ControlNet, size: tuple[int, int]) -> torch.Tensor:
    """(1, C_hint, H, W) in [0, 1]: a path, PIL image or array (converted to RGB, or L for a
    1-channel ControlNet), or a (C, H, W) / (1, C, H, W) tensor in [0, 1] taken as it is."""
    channels, (height, width) = net.config.hint_channels, size
    if isinstance(image, torch.Tensor):
        x = image.detach().float().cpu()
        x = x[None] if x.ndim == 3 else x
        if x.ndim != 4 or x.shape[0] != 1:
            raise ValueError(f"a control image tensor must be (C, H, W) or (1, C, H, W), got {tuple(image.shape)}")
        if x.shape[1] != channels:
            raise ValueError(f"the control image has {x.shape[1]} channels but the ControlNet {net.name!r} takes "
                             f"{channels}")
        if tuple(x.shape[2:]) != (height, width):
            x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        return x
    if channels not in (1, 3):
        raise ValueError(f"the ControlNet {net.name!r} takes {channels}-channel hints: give them as a tensor")
    pil = as_pil(image, "control image").convert("RGB" if channels == 3 else "L")
    if pil.size != (width, height):
        pil = pil.resize((width, height), Image.LANCZOS)
    array = np.asarray(pil, dtype=np.float32) / 255.0                  # (H, W, C) or (H, W)
    x = torch.from_numpy(array.reshape(height, width, channels)).permute(2, 0, 1)  # (C, H, W)
    return x[None]


# ---- the pipeline's ControlNets ---------------------------------------------------------------------
def add_controlnet(pipe, name_or_path: str | Path | nn.Module) -> ControlNet:
    """Load a ControlNet (or take one built in Python) for `pipe`, checked against its UNet, and
    add it to pipe.controlnets; generation calls give one control image per loaded ControlNet."""
    if pipe.config.net.kind != "unet":
        raise ValueError(f"a ControlNet steers a UNet's skips; this model's network is a {pipe.config.net.kind}")
    if isinstance(name_or_path, ControlNet):
        net = name_or_path
        check_base(net.config, pipe.net.config, f"the ControlNet {net.name!r}")
    elif isinstance(name_or_path, nn.Module):
        raise ValueError(f"expected a ControlNet, got a {type(name_or_path).__name__}")
    else:
        net = load_controlnet(name_or_path, base=pipe.net.config)
    net = net.to(pipe.device, pipe.dtype).eval()
    pipe.controlnets.append(net)
    return net


def control_settings(pipe, control_image=None, control_scale=1.0, control_guess_mode: bool = False,
                     control_start=0.0, control_end=1.0) -> dict:
    """What a PNG's text records of a run's control: the ControlNets' names and scales, the
    hints' paths, and guess mode and the step fractions where not the defaults."""
    if control_image is None:
        return {}
    names = [net.name for net in pipe.controlnets]
    images = control_image if isinstance(control_image, list | tuple) else [control_image]
    one = (lambda v: v[0] if len(v) == 1 else v)
    text = {"controlnet": one(names), "control_scale": control_scale}
    if all(isinstance(image, str | Path) for image in images):
        text["control_image"] = one([str(image) for image in images])
    if control_guess_mode:
        text["control_guess_mode"] = True
    if control_start != 0.0:
        text["control_start"] = control_start
    if control_end != 1.0:
        text["control_end"] = control_end
    return text
