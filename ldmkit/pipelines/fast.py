"""The one-switch fast path: `Pipeline.from_pretrained(..., fast=True)`, `ldmkit generate --fast`.

What it picks, and why (measured: docs/benchmarks.md, "The fast path"; benchmarks/fast_path.py):
- bf16 weights where the device has bf16 units (a CPU with AVX512-BF16 or AMX, a GPU that says
  so; fp16 on an older GPU). The weights are cast once; the sampler's latents and maths stay
  float32, as core.call_net casts x to the network's dtype and its output back.
- no channels_last for the UNet: no gain in float32 at 32 x 32 latents, within the noise in bf16
  (the autoencoder is channels_last already, Pipeline).
- no compiled graph by default: converting costs a minute or more, which pays off only after a
  few images. fast="compile" runs the UNet and the decoder by OpenVINO where it is installed
  (`pip install 'ldmkit[fast]'`; in bf16 on bf16 units: about 2x per step), else the UNet by
  torch.compile's inductor (13 minutes to compile the small SD UNet here, for 1.09x);
  "openvino" / "inductor" name one; "openvino-f32" keeps OpenVINO at float32 (the fp32 class:
  float32 eager's image to round-off, on a CPU that would otherwise compute in bf16).
The default (fast=False) is the exact float32 eager path.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .openvino import run_with_openvino

MODES = (False, True, "compile", "openvino", "openvino-f32", "inductor")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo: native bf16 dot products
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class FastPath:
    """How a pipeline's networks run: their weights' dtype, the UNet's memory format and compiler."""

    dtype: torch.dtype = torch.float32
    channels_last: bool = False          # the UNet in channels_last (the autoencoder always is)
    compile: str | None = None           # None | "openvino" (ldmkit.pipelines.openvino) | "inductor" (torch.compile)
    compile_precision: str | None = None  # OpenVINO's INFERENCE_PRECISION_HINT ("bf16" | "f32"); None: its own

    def describe(self) -> str:
        """One short string for the PNG text, e.g. "bf16" or "fp32 openvino-bf16"."""
        parts = [DTYPE_NAMES.get(self.dtype, str(self.dtype))]
        if self.channels_last:
            parts.append("channels_last")
        if self.compile:
            parts.append(self.compile + (f"-{self.compile_precision}" if self.compile_precision else ""))
        return " ".join(parts)


def check_mode(mode) -> None:
    if not any(mode is m or (isinstance(m, str) and mode == m) for m in MODES):
        raise ValueError(f"fast must be one of {MODES} (True: bf16 weights where the device has bf16 units; "
                         f"'compile': also a compiled UNet), got {mode!r}")


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (empty where there is none)."""
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        return set()
    for line in info.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def half_dtype(device: torch.device, flags: set[str] | None = None) -> torch.dtype | None:
    """The half-precision dtype the device computes natively, or None (float32 is fastest)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        flags = cpu_flags() if flags is None else flags
        return torch.bfloat16 if any(f in flags for f in BF16_FLAGS) else None
    return None


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def choose_fast_path(device: str | torch.device = "cpu", mode=True, flags: set[str] | None = None,
                     openvino: bool | None = None) -> FastPath:
    """The fastest path `device` allows for `mode` (see MODES). flags: the CPU's (default: this
    machine's); openvino: whether OpenVINO is installed (default: look)."""
    check_mode(mode)
    device = torch.device(device)
    if mode is False:
        return FastPath()
    half = half_dtype(device, flags)
    if mode is True:
        return FastPath(dtype=half or torch.float32)
    openvino = openvino_installed() if openvino is None else openvino
    if mode in ("openvino", "openvino-f32") or (mode == "compile" and openvino and device.type == "cpu"):
        if device.type != "cpu":
            raise ValueError(f"OpenVINO's backend runs on the CPU; this pipeline is on {device}: use fast='inductor'")
        if not openvino:
            raise ImportError("fast='openvino' needs OpenVINO: pip install 'ldmkit[fast]' (or openvino>=2024.0)")
        # OpenVINO takes float32 weights and computes in bf16 itself where the CPU has bf16 units
        bf16 = half is torch.bfloat16 and mode != "openvino-f32"
        return FastPath(compile="openvino", compile_precision="bf16" if bf16 else "f32")
    if mode == "compile" and device.type == "cpu":
        warnings.warn("fast='compile': OpenVINO is not installed (pip install 'ldmkit[fast]'), so the UNet is "
                      "compiled by torch's inductor instead, which takes minutes and gains little on a CPU",
                      stacklevel=2)
    return FastPath(dtype=half or torch.float32, compile="inductor")


def openvino_decoder(autoencoder, path: FastPath) -> None:
    """The first stage's (or a tiny autoencoder's) decoder run by OpenVINO when `path` compiles
    with it: at 512 px the full decoder costs as much as a few UNet steps."""
    decoder = getattr(autoencoder, "decoder", None)
    if path.compile == "openvino" and isinstance(decoder, torch.nn.Module):
        run_with_openvino(decoder, path.compile_precision, denoiser=False)


def apply(pipe, path: FastPath):
    """Put `pipe` on `path`: weights cast once (the text encoder's as Pipeline.to decides), the
    UNet's memory format, its compiled call. Returns pipe, with pipe.fast_path = path."""
    if path.dtype != pipe.dtype:
        pipe.to(dtype=path.dtype)
    if path.channels_last:
        pipe.net.to(memory_format=torch.channels_last)
    if path.compile == "openvino":
        run_with_openvino(pipe.net, path.compile_precision)
        openvino_decoder(pipe.autoencoder, path)
    elif path.compile == "inductor":
        pipe.net.compile(backend="inductor", dynamic=False)
    pipe.fast_path = path
    return pipe
