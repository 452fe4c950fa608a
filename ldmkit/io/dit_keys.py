"""DiT weights between the reference layout (facebookresearch/DiT, which ldmkit's DiT keeps) and
diffusers' DiTTransformer2DModel, which splits qkv into to_q / to_k / to_v and copies the
timestep and label embedders into every block (norm1.emb)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

_BLOCK = {  # ours (blocks.i.) -> diffusers (transformer_blocks.i.), for weight and bias
    "adaLN_modulation.1": "norm1.linear",
    "attn.proj": "attn1.to_out.0",
    "mlp.fc1": "ff.net.0.proj",
    "mlp.fc2": "ff.net.2",
}
_TOP = {"x_embedder": "pos_embed.proj", "final_layer.adaLN_modulation.1": "proj_out_1",
        "final_layer.linear": "proj_out_2"}
_EMBED = {"t_embedder.mlp.0": "norm1.emb.timestep_embedder.linear_1",
          "t_embedder.mlp.2": "norm1.emb.timestep_embedder.linear_2",
          "y_embedder.embedding_table": "norm1.emb.class_embedder.embedding_table"}


def dit_to_diffusers(state: Mapping[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    out = {}
    for ours, theirs in _TOP.items():
        for kind in ("weight", "bias"):
            out[f"{theirs}.{kind}"] = state[f"{ours}.{kind}"]
    for i in range(depth):
        block, target = f"blocks.{i}.", f"transformer_blocks.{i}."
        for ours, theirs in _BLOCK.items():
            for kind in ("weight", "bias"):
                out[f"{target}{theirs}.{kind}"] = state[f"{block}{ours}.{kind}"]
        for kind in ("weight", "bias"):
            q, k, v = state[f"{block}attn.qkv.{kind}"].chunk(3)
            out |= {f"{target}attn1.to_q.{kind}": q, f"{target}attn1.to_k.{kind}": k, f"{target}attn1.to_v.{kind}": v}
        for ours, theirs in _EMBED.items():
            for kind in ("weight", "bias"):
                if f"{ours}.{kind}" in state:
                    out[f"{target}{theirs}.{kind}"] = state[f"{ours}.{kind}"]
    return out


def dit_from_diffusers(state: Mapping[str, torch.Tensor], depth: int,
                       pos_embed: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference layout from diffusers' (the embedders read from block 0; pos_embed, which
    diffusers does not store, given)."""
    out = {"pos_embed": pos_embed}
    for ours, theirs in _TOP.items():
        for kind in ("weight", "bias"):
            out[f"{ours}.{kind}"] = state[f"{theirs}.{kind}"]
    for ours, theirs in _EMBED.items():
        for kind in ("weight", "bias"):
            if f"transformer_blocks.0.{theirs}.{kind}" in state:
                out[f"{ours}.{kind}"] = state[f"transformer_blocks.0.{theirs}.{kind}"]
    for i in range(depth):
        block, source = f"blocks.{i}.", f"transformer_blocks.{i}."
        for ours, theirs in _BLOCK.items():
            for kind in ("weight", "bias"):
                out[f"{block}{ours}.{kind}"] = state[f"{source}{theirs}.{kind}"]
        for kind in ("weight", "bias"):
            out[f"{block}attn.qkv.{kind}"] = torch.cat([state[f"{source}attn1.to_{x}.{kind}"] for x in "qkv"])
    return out
