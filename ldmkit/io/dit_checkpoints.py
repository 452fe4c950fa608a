"""DiT checkpoints of the reference implementation (facebookresearch/DiT: DiT-XL-2-256x256.pt and
kin, a plain state dict in the layout ldmkit's DiT keeps), read without unpickling code
(storage.read_weights), their config read off the tensors' shapes."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ..nets.dit import DiT
from ..nets.dit_config import DiTConfig
from ..storage import CheckpointError, read_weights

# the paper's models name no head count in their weights: it follows from the width (Table 1)
HEADS_OF_WIDTH = {384: 6, 768: 12, 1024: 16, 1152: 16}


def dit_config_from_state(state: Mapping[str, torch.Tensor], num_heads: int | None = None) -> DiTConfig:
    """The DiTConfig of a reference-layout state dict; the reference's numerics (frequency shift
    0, MLP-norm eps 1e-6)."""
    missing = [k for k in ("x_embedder.weight", "pos_embed", "final_layer.linear.weight") if k not in state]
    if missing:
        raise CheckpointError(f"not a DiT state dict in the reference layout: no {missing}")
    hidden, in_channels, patch, _ = state["x_embedder.weight"].shape
    tokens = state["pos_embed"].shape[1]
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise CheckpointError(f"pos_embed has {tokens} positions, not a square grid")
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    heads = num_heads or HEADS_OF_WIDTH.get(hidden)
    if heads is None:
        raise CheckpointError(f"width {hidden} is none of the paper's ({sorted(HEADS_OF_WIDTH)}): give num_heads")
    out = state["final_layer.linear.weight"].shape[0] // (patch * patch)
    if out not in (in_channels, 2 * in_channels):
        raise CheckpointError(f"final_layer.linear gives {out} channels a pixel for {in_channels} input channels: "
                              f"expected {in_channels} or {2 * in_channels} (learned sigma)")
    labels = state.get("y_embedder.embedding_table.weight")
    mlp_hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    return DiTConfig(in_channels=in_channels, out_channels=in_channels, input_size=side * patch, patch_size=patch,
                     hidden_size=hidden, depth=depth, num_heads=heads, mlp_ratio=mlp_hidden / hidden,
                     num_classes=None if labels is None else labels.shape[0] - 1, learn_sigma=out == 2 * in_channels,
                     time_freq_shift=0, mlp_norm_eps=1e-6)


def load_dit_checkpoint(path: str | Path, config: DiTConfig | None = None, num_heads: int | None = None) -> DiT:
    """A DiT with a reference checkpoint's weights; `config` (default: read off the weights) is
    checked against every tensor, and a width that disagrees is named."""
    state, _ = read_weights(path)
    config = config or dit_config_from_state(state, num_heads)
    net = DiT(config)
    own = net.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise CheckpointError(f"{path} has weights this DiT does not: {unknown[:5]}")
    for key, value in own.items():
        if key not in state:
            raise CheckpointError(f"{path} lacks {key}")
        if state[key].shape != value.shape:
            raise CheckpointError(f"{path}: {key} has shape {tuple(state[key].shape)}, the config's DiT "
                                  f"{tuple(value.shape)} (hidden_size {config.hidden_size}, patch "
                                  f"{config.patch_size}, input_size {config.input_size})")
    net.load_state_dict(state)
    return net.eval()
