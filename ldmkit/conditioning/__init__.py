"""Conditioning: text encoders (the cross-attention context)."""

from .text import TextEncoder, minilm_path
