"""The text encoder of Stable Diffusion: a CLIP text transformer (transformers' CLIPTextModel).

SD v1 reads the last layer of OpenAI's CLIP ViT-L/14; SD v2 the penultimate layer of OpenCLIP
ViT-H/14, which the conversion keeps as a CLIPTextModel with the last layer dropped. Either way
the context is `last_hidden_state` (after the final LayerNorm) of all 77 token positions,
padding included and with no attention mask: SD was trained that way, so masking the padding
would change its outputs. The tokenizer pads with <|endoftext|> for v1 and "!" (id 0) for v2.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..storage import CheckpointError
from .text import expand_tokens

TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))  # the BPE files, or the fast tokenizer's


def load_clip_tokenizer(path: str | Path, pad_token: str | None = None):
    """A CLIPTokenizer from a local folder holding vocab.json and merges.txt, or tokenizer.json
    (a diffusers model's tokenizer/ folder, or any CLIP tokenizer saved by transformers).
    Nothing is downloaded."""
    from transformers import CLIPTokenizer

    path = Path(path)
    if not any(all((path / name).is_file() for name in names) for names in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"no CLIP tokenizer in {path}: it needs vocab.json and merges.txt (or tokenizer.json). Give such a "
            "folder, e.g. the tokenizer/ folder of a diffusers Stable Diffusion model"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
    if pad_token is not None and pad_token != tokenizer.pad_token:
        tokenizer.pad_token = pad_token
    return tokenizer


class CLIPTextEncoder(nn.Module):
    """prompts -> (context (B, 77, D), None): SD's conditioning, no padding mask."""

    def __init__(self, model: nn.Module, tokenizer):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.token_expansions: dict[str, str] = {}  # multi-vector textual-inversion tokens

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    @property
    def max_length(self) -> int:
        return self.model.config.max_position_embeddings

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(expand_tokens(prompts, self.token_expansions), padding="max_length",
                                truncation=True, max_length=self.max_length, return_tensors="pt")
        return tokens.input_ids

    @torch.no_grad()
    def forward(self, prompts: Sequence[str]) -> tuple[torch.Tensor, None]:
        return self.encode(prompts)

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, None]:
        """forward without no_grad: textual inversion trains new token embeddings through it."""
        if isinstance(prompts, str):
            raise ValueError("prompts must be a list of strings, not one string")
        ids = self.tokenize(prompts).to(next(self.model.parameters()).device)
        return self.model(input_ids=ids).last_hidden_state, None


def clip_text_encoder(config: Mapping[str, Any], state: Mapping[str, torch.Tensor], tokenizer, pad_token=None):
    """The SD text encoder (CLIPTextEncoder) from a CLIPTextConfig dict, weights and a tokenizer
    (or the folder of one)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_clip_tokenizer(tokenizer, pad_token)  # first: the clearer error if it is missing
    elif pad_token is not None:
        tokenizer.pad_token = pad_token
    known = set(CLIPTextConfig().to_dict())
    with torch.device("meta"):  # as build(): the file's tensors become the weights, no random init
        model = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in config.items() if k in known}))
    state = _clip_names_for(model, {k: v for k, v in state.items() if not k.endswith("position_ids")})
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise CheckpointError(f"the text encoder weights do not fit CLIPTextModel: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    for name, buffer in list(model.named_buffers()):  # position_ids, which files may leave out: 0, 1, ...
        if buffer.is_meta and name.endswith("position_ids"):
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner).register_buffer(
                leaf, torch.arange(buffer.shape[-1]).expand(buffer.shape).clone(), persistent=False)
    return CLIPTextEncoder(model.eval(), tokenizer)


def _clip_names_for(model, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Files name CLIP's weights "text_model.…"; transformers >= 5.6 dropped that level from
    CLIPTextModel's own names. Match whichever this transformers uses."""
    prefix = "text_model."
    wants_prefix = any(k.startswith(prefix) for k in model.state_dict())
    return {(prefix + k if wants_prefix and not k.startswith(prefix) else
             k[len(prefix):] if not wants_prefix and k.startswith(prefix) else k): v for k, v in state.items()}


def clip_file_state(model) -> dict[str, torch.Tensor]:
    """A CLIPTextModel's weights under the names files use ("text_model.…"), buffers left out."""
    return {(k if k.startswith("text_model.") else "text_model." + k): v
            for k, v in model.state_dict().items() if not k.endswith("position_ids")}


def tokenizer_files(tokenizer) -> dict[str, bytes]:
    """A tokenizer as the files transformers saves (vocab.json, merges.txt, configs)."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
