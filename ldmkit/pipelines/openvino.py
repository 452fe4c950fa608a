"""Networks run by OpenVINO (optional: `pip install 'ldmkit[fast]'`), for fast="compile" on a CPU.

ov.convert_model traces a network on its first call's inputs and OpenVINO compiles the graph for
the CPU, in bf16 where the CPU has bf16 units (INFERENCE_PRECISION_HINT). The torch module stays
what it was (weights, config, saving); only its forward is replaced, so pipe.net is still the
UNet. A trace bakes in the Python branches its inputs took, so each new set of input shapes is
converted anew (a CLI run has one). Converting takes a minute or more at SD's size, so each
converted graph is kept on disk ($LDMKIT_CACHE/openvino, default ~/.cache/ldmkit/openvino), keyed
by the weights, the source of the module classes, the inputs and the OpenVINO version, and the
compiled model in OpenVINO's own cache beside it (CACHE_DIR): a later run imports it in seconds.
The UNet and the first stage's decoder run this way; the text encoder, one call an image, stays
in torch. torch.compile's "openvino" backend is not used: with torch 2.13 it fails while making
its shape guards (docs/benchmarks.md, "The fast path").
"""

from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path

import torch
from torch import nn


def cache_dir() -> Path:
    return Path(os.environ.get("LDMKIT_CACHE") or Path.home() / ".cache" / "ldmkit") / "openvino"


def class_source(cls: type) -> str:
    """The class's source; its name where there is none to read (a class made at run time)."""
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):
        return f"{cls.__module__}.{cls.__qualname__}"


def graph_key(net: nn.Module, signature: tuple, openvino_version: str) -> str:
    """What the traced graph depends on: the weights, the code of every module class in the
    network, the inputs' names, shapes and dtypes, and the converter's version."""
    digest = hashlib.sha256(repr((signature, openvino_version)).encode())
    for cls in sorted({type(m) for m in net.modules()}, key=lambda c: (c.__module__, c.__qualname__)):
        digest.update(class_source(cls).encode())
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def require_openvino():
    try:
        import openvino
    except ImportError as error:
        raise ImportError("fast='openvino' (and 'compile' on a CPU without OpenVINO found) needs OpenVINO: "
                          "pip install 'ldmkit[fast]' (or openvino>=2024.0); or use fast=True") from error
    return openvino


class OpenVINOForward:
    """A module's forward replaced by OpenVINO: positional tensors and tensors given by name in,
    one tensor out. Calls with other kinds of input (e.g. a ControlNet's list of residuals) run
    the eager forward."""

    def __init__(self, net: nn.Module, precision: str | None = None):
        self.ov = require_openvino()
        self.net, self.eager = net, net.forward  # the eager forward: traced, and run for untraceable inputs
        self.config = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
        self.threads = torch.get_num_threads()
        self.compiled: dict[tuple, object] = {}  # (positional count, names, shapes and dtypes) -> compiled model

    def positional(self, args: tuple) -> tuple:
        return args

    def __call__(self, *args, **inputs) -> torch.Tensor:
        args = self.positional(args)
        given = {k: v for k, v in inputs.items() if v is not None}
        if not all(isinstance(v, torch.Tensor) for v in (*args, *given.values())):
            return self.eager(*args, **inputs)
        tensors = (*args, *given.values())
        key = (len(args), tuple(given), *((tuple(v.shape), v.dtype) for v in tensors))
        if key not in self.compiled:
            self.compiled[key] = self.compile(key, tensors)
        outputs = self.compiled[key]([v.detach().cpu().numpy() for v in tensors])
        return torch.from_numpy(outputs[0]).to(args[0].device)

    def compile(self, key: tuple, tensors: tuple[torch.Tensor, ...]):
        """The compiled model for the inputs `key` describes: read from the disk cache, else traced."""
        eager, (n_positional, names) = self.eager, key[:2]

        class ByPosition(nn.Module):  # the tracer passes inputs by position
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, *flat):
                return eager(*flat[:n_positional], **dict(zip(names, flat[n_positional:])))

        # "static": graphs are saved with their inputs' shapes fixed (older, dynamic ones are not reused)
        name = f"{type(self.net).__name__}-{graph_key(self.net, ('static', key), self.ov.__version__)}"
        path = cache_dir() / f"{name}.xml"
        if not path.is_file():
            with torch.no_grad():
                model = self.ov.convert_model(ByPosition(self.net), example_input=tensors)
            # convert_model leaves every dimension dynamic; a graph of static shapes gets the CPU
            # plugin's static kernels: 1.8x faster a UNet call at 32x32 latents (docs/benchmarks.md)
            model.reshape({i: self.ov.PartialShape(list(v.shape)) for i, v in enumerate(tensors)})
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial.xml")  # renamed when whole: a killed run leaves no half graph
            self.ov.save_model(model, partial, compress_to_fp16=False)
            del model  # compiled from the file below: one copy of the weights in memory, not two
            partial.with_suffix(".bin").replace(path.with_suffix(".bin"))
            partial.replace(path)
        # compiled from the path with OpenVINO's own cache of compiled models: a later process with
        # the same graph and settings imports the compiled blob instead of reading the f32 graph
        # and compiling it again (docs/benchmarks.md, "The fast path")
        config = {**self.config, "INFERENCE_NUM_THREADS": self.threads, "CACHE_DIR": str(cache_dir() / "compiled")}
        return self.ov.Core().compile_model(str(path), "CPU", config)


class DenoiserOpenVINOForward(OpenVINOForward):
    """A denoiser's forward(x, t, **conditioning): t as a float (B,) tensor, one input form."""

    def positional(self, args: tuple) -> tuple:
        x, t = args
        return x, torch.as_tensor(t, dtype=torch.float32).reshape(-1).expand(x.shape[0])


def run_with_openvino(net: nn.Module, precision: str | None = None, denoiser: bool = True) -> nn.Module:
    """net with its forward run by OpenVINO (converted on first use). denoiser: forward(x, t, ...);
    else forward takes tensors only (a decoder)."""
    net.forward = (DenoiserOpenVINOForward if denoiser else OpenVINOForward)(net, precision)
    return net
