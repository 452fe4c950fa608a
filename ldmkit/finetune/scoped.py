"""Adapters for one request: LoRAs, embeddings and a hypernetwork put on a shared pipeline for
the length of a `with` block and taken off after it, so the model is exactly as it was, for the
next request, whatever this one used (a server's requests each bring their own set).

LoRAs and hypernetworks are hooks, detached on leaving; an embedding grows the tokenizer and the
token matrix, so the text encoder's token state is saved on entering and put back on leaving.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from pathlib import Path

from .hypernetwork import apply_hypernetwork
from .lora_formats import apply_lora
from .textual_inversion import apply_embedding, input_embedding


@contextlib.contextmanager
def adapters_applied(pipe, loras: Sequence[tuple[str | Path, float]] = (),
                     embeddings: Sequence[tuple[str | Path, str | None]] = (),
                     hypernetworks: Sequence[tuple[str | Path, float]] = ()) -> Iterator[list[str]]:
    """`with adapters_applied(pipe, loras=[(file, scale)], embeddings=[(file, token or None)],
    hypernetworks=[(file, strength)]) as tokens:` generate inside; `tokens` are the embeddings'
    prompt tokens. LoRAs stack; one hypernetwork at a time."""
    if len(hypernetworks) > 1:
        raise ValueError("one hypernetwork at a time")
    saved = _token_state(pipe.text_encoder) if embeddings else None
    attached = []
    try:
        for path, scale in loras:
            attached.append(apply_lora(pipe, path, scale=scale))
        for path, strength in hypernetworks:
            attached.append(apply_hypernetwork(pipe, path, strength=strength))
        yield [apply_embedding(pipe, path, token=token) for path, token in embeddings]
    finally:
        for network in reversed(attached):
            network.detach()
        if saved is not None:
            _restore_token_state(pipe.text_encoder, saved)


def _token_state(text_encoder) -> dict:
    embedding = input_embedding(text_encoder)
    return {"tokenizer": copy.deepcopy(text_encoder.tokenizer), "weight": embedding.weight,
            "rows": embedding.num_embeddings, "vocab_size": text_encoder.model.config.vocab_size,
            "expansions": dict(text_encoder.token_expansions)}


def _restore_token_state(text_encoder, saved: dict) -> None:
    embedding = input_embedding(text_encoder)
    text_encoder.tokenizer = saved["tokenizer"]
    embedding.weight, embedding.num_embeddings = saved["weight"], saved["rows"]
    text_encoder.model.config.vocab_size = saved["vocab_size"]
    text_encoder.token_expansions = saved["expansions"]
