"""A UNet run by OpenVINO (optional: `pip install 'ldmkit[fast]'`), for fast="compile" on a CPU.

ov.convert_model traces the network on its first call's inputs and OpenVINO compiles the graph
for the CPU, in bf16 where the CPU has bf16 units (INFERENCE_PRECISION_HINT). The torch module
stays what it was (weights, config, saving); only its forward is replaced, so pipe.net is still
the UNet. A trace bakes in the Python branches its inputs took, so each new set of input shapes
is converted anew (a CLI run has one). torch.compile's "openvino" backend is not used: with
torch 2.13 it fails while making its shape guards (docs/benchmarks.md, "The fast path").
"""

from __future__ import annotations

import torch
from torch import nn


def require_openvino():
    try:
        import openvino
    except ImportError as error:
        raise ImportError("fast='openvino' (and 'compile' on a CPU without OpenVINO found) needs OpenVINO: "
                          "pip install 'ldmkit[fast]' (or openvino>=2024.0); or use fast=True") from error
    return openvino


class OpenVINOForward:
    """net.forward's replacement: x, t and the tensors given by name, through OpenVINO."""

    def __init__(self, net: nn.Module, precision: str | None = None):
        self.ov = require_openvino()
        self.net, self.eager = net, net.forward  # the eager forward: traced, and kept for undo()
        self.config = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
        self.threads = torch.get_num_threads()
        self.compiled: dict[tuple, object] = {}  # (names, shapes, dtypes) -> an OpenVINO compiled model

    def __call__(self, x: torch.Tensor, t, **inputs) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1).expand(x.shape[0])  # (B,): one input form
        given = {k: v for k, v in inputs.items() if v is not None}
        if not all(isinstance(v, torch.Tensor) for v in given.values()):
            return self.eager(x, t, **inputs)  # e.g. a ControlNet's list of residuals: not traced
        tensors = (x, t, *given.values())
        key = (tuple(given), *((tuple(v.shape), v.dtype) for v in tensors))
        if key not in self.compiled:
            self.compiled[key] = self.compile(tuple(given), tensors)
        outputs = self.compiled[key]([v.detach().cpu().numpy() for v in tensors])
        return torch.from_numpy(outputs[0]).to(x.device)

    def compile(self, names: tuple[str, ...], tensors: tuple[torch.Tensor, ...]):
        eager = self.eager

        class ByPosition(nn.Module):  # the tracer passes inputs by position
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, x, t, *rest):
                return eager(x, t, **dict(zip(names, rest)))

        with torch.no_grad():
            model = self.ov.convert_model(ByPosition(self.net), example_input=tensors)
        config = {**self.config, "INFERENCE_NUM_THREADS": self.threads}
        return self.ov.Core().compile_model(model, "CPU", config)


def run_with_openvino(net: nn.Module, precision: str | None = None) -> nn.Module:
    """net with its forward run by OpenVINO (converted on first use)."""
    net.forward = OpenVINOForward(net, precision)
    return net
