"""A module in channels_last with every tensor in memory of its own.

safetensors maps a weight file and hands out tensors that view the mapping, and the whole
mapping stays (and stays resident, once read) while any one of them lives. Converting a model to
channels_last copies its 3x3 conv weights but leaves biases, norms, linear layers and 1x1 convs
(whose two layouts coincide) in the mapping, so the file's pages stayed resident next to the
converted copy: 0.33 GB for Stable Diffusion's VAE, most of ldmkit's peak-memory excess over
diffusers at 512 px (docs/benchmarks.md). Copying those few small tensors too lets the mapping go.
"""

import torch
from torch import nn


def to_channels_last_owned(module: nn.Module) -> nn.Module:
    """module.to(memory_format=channels_last), then a copy of each tensor the conversion left in place."""
    tensors = [*module.parameters(), *module.buffers()]
    before = [t.data_ptr() for t in tensors]
    module.to(memory_format=torch.channels_last)
    with torch.no_grad():
        for tensor, pointer in zip(tensors, before):
            if tensor.data_ptr() == pointer:
                tensor.data = tensor.data.clone()  # the same Parameter: optimizers and hooks keep it
    return module
