"""Conditioning: text encoders (the cross-attention context)."""

from .clip import CLIPTextEncoder, load_clip_tokenizer
from .text import TextEncoder, minilm_path

__all__ = ["CLIPTextEncoder", "load_clip_tokenizer", "TextEncoder", "minilm_path"]
